"""One vocabulary for every ``rlrf`` command: the shared option names, defined once.

Every command that takes an env, a model, a group size, a token budget or an output folder
adds the option through this module, so the same thing has the same name everywhere
(``--env``, ``--env-kwargs``, ``--model``, ``--rollouts-per-question``,
``--max-new-tokens``, ``--output-dir``: the names of the training config's fields). An old
or foreign spelling (``--max-tokens``, ``--k``, ``--group-size``, ``--out``, ``--kwarg``)
is refused with the name to use instead, by :func:`parse_args`.

Torch-free: the torch-free commands (``check``, ``sample``, ``serve``) use it too.
"""

from __future__ import annotations

import argparse
import difflib
import json
import typing
from collections.abc import Sequence
from typing import Any

from rlrf.errors import ConfigError

__all__ = [
    "RENAMED",
    "add_env_options",
    "add_model_options",
    "add_output_dir",
    "add_sampling_options",
    "env_kwargs_value",
    "merge_env_kwargs",
    "new_parser",
    "parse_args",
    "parse_key_values",
]

RENAMED: dict[str, str] = {
    "--max-tokens": "--max-new-tokens",
    "--k": "--rollouts-per-question",
    "--group-size": "--rollouts-per-question",
    "--out": "--output-dir",
    "--kwarg": "--env-kwargs",
}
"""Spellings some commands once used (or other tools use) -> the one rlrf uses."""


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default in ``--help`` unless it is None or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


class _OneLineErrors(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (the usage can run 50 lines)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def new_parser(prog: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` without abbreviations whose usage errors are one line.

    ``--out`` is not taken for ``--output-dir``; ``--lr fast`` prints one line, not the usage.
    """
    return _OneLineErrors(prog=prog, description=description, allow_abbrev=False, **kwargs)


def env_kwargs_value(text: str) -> dict[str, Any]:
    """Parse one ``--env-kwargs`` value: a JSON object, or ``KEY=VALUE`` (VALUE JSON if it parses).

    Example:
        >>> env_kwargs_value('{"digits": 1}'), env_kwargs_value("ops=+"), env_kwargs_value("n=3")
        ({'digits': 1}, {'ops': '+'}, {'n': 3})

    """
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise argparse.ArgumentTypeError(f"not a JSON object: {e}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    key, sep, _ = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object or KEY=VALUE, got {text!r} (e.g. --env-kwargs digits=1)"
        )
    try:
        return parse_key_values([text], "--env-kwargs")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--env-kwargs ")) from None


def parse_key_values(pairs: Sequence[str], flag: str = "--set") -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; each VALUE is JSON when it parses, else the raw string.

    Raises:
        ConfigError: a string is not ``KEY=VALUE``, or its VALUE is JSON that cannot be read
            (an integer past Python's digit limit, deep nesting).

    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
        except (ValueError, RecursionError) as e:  # integers past Python's digit limit, nesting
            raise ConfigError(f"{flag} {key}: the value cannot be read as JSON ({e})") from e
    return out


def merge_env_kwargs(values: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
    """Merge repeated ``--env-kwargs`` values, later ones winning."""
    out: dict[str, Any] = {}
    for value in values or ():
        out.update(value)
    return out


def add_env_options(
    parser: argparse.ArgumentParser | Any, *, positional: bool = False, required: bool = True
) -> None:
    """Add the env id (``--env``, or a positional ``ENV``) and ``--env-kwargs``."""
    if positional:
        parser.add_argument("env", metavar="ENV", help="registered env id, e.g. rlrf/Arithmetic-v0")
    else:
        parser.add_argument(
            "--env", required=required, help="registered env id, e.g. rlrf/Arithmetic-v0"
        )
    parser.add_argument(
        "--env-kwargs",
        action="append",
        type=env_kwargs_value,
        metavar="JSON|KEY=VALUE",
        help="keyword arguments for rlrf.make(env, ...): a JSON object or KEY=VALUE, repeatable "
        '(e.g. --env-kwargs \'{"digits": 1}\' or --env-kwargs digits=1)',
    )


def add_output_dir(parser: argparse.ArgumentParser | Any, default: str | None, what: str) -> None:
    """Add ``--output-dir``."""
    shown = f" (default: {default})" if default else ""
    parser.add_argument("--output-dir", default=default, help=f"{what}{shown}")


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; an unknown option exits with the name to use ("did you mean ...")."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(unknown_option_message(parser, unknown))
    return args


def unknown_option_message(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """The error for the first unknown argument: a renamed option, or the closest valid one."""
    flags = [u for u in unknown if u.startswith("-")]
    if not flags:
        return f"unrecognized arguments: {' '.join(unknown)}"
    name = flags[0].split("=")[0]
    valid = [a for action in parser._actions for a in action.option_strings]
    if name in RENAMED and RENAMED[name] in valid:
        return f"unknown option {name}; did you mean {RENAMED[name]}? (rlrf's name for it)"
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown option {name}{hint}"


def add_model_options(parser: argparse.ArgumentParser | Any, *, endpoint_note: str = "") -> None:
    """Add ``--model``, ``--base-url`` and ``--api-key-env`` (commands that sample)."""
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="smollm2-135m, a local model folder, a run folder or its final/; with --base-url, "
        f"the served model name{endpoint_note}",
    )
    parser.add_argument(
        "--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the endpoint's API key (default: OPENAI_API_KEY if set)",
    )


def add_sampling_options(
    parser: argparse.ArgumentParser | Any, *, rollouts: int, rollouts_help: str
) -> None:
    """Add the sampling options: group size, temperature, top-p, token cap and seed."""
    parser.add_argument(
        "--rollouts-per-question", type=int, default=rollouts, metavar="N", help=rollouts_help
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="cap on tokens generated per response"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of task sampling and sampling")
