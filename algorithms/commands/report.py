"""``rlrf report RUN_DIR [RUN_DIR ...]``: regenerate a run's report, or overlay several runs."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from algorithms.report import write_report
from rlrf.errors import RLRFError
from rlrf.options import add_output_dir, new_parser, parse_args

__all__ = ["main"]

COMMAND_HELP = "regenerate the report of one or more run folders"
"""The help line of this ``rlrf`` subcommand."""


def main(argv: Sequence[str] | None = None, prog: str = "rlrf report") -> int:
    """``rlrf report RUN_DIR [RUN_DIR ...] [--output-dir DIR]``."""
    parser = new_parser(prog, "Regenerate the report of one run, or overlay several runs.")
    parser.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    add_output_dir(parser, None, "output folder (default: RUN/report for a single run)")
    args = parse_args(parser, argv)
    try:
        report = write_report(args.runs, args.output_dir)
    except RLRFError as e:  # a run folder that is not what rlrf writes, a linked output
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
