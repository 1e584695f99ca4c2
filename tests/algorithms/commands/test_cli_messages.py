"""Command-line messages: one line per usage error, help that says what a value does."""

from __future__ import annotations

import pytest

from algorithms.commands import train as cli


def test_a_bad_value_is_one_line_not_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--lr", "fast"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "python -m algorithms.commands.train: error: argument --lr: invalid float value: "
        "'fast' (see python -m algorithms.commands.train --help)"
    ]


def test_checkpoint_every_help_says_what_zero_does(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(0: none, only final/ at the end, so the run cannot be resumed)" in out
    assert "only at the end)" not in out
