"""The ``rlrf`` command line: list, check and sample environments; train; report.

Run ``rlrf --help`` or ``rlrf COMMAND --help``. Heavy subcommands (``train``, ``report``,
``ttsd``) import torch only when invoked.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import rlrf
from rlrf.errors import ConfigError, RLRFError
from rlrf.feedback import render_feedback

__all__ = ["build_parser", "main", "parse_key_values"]

COMMAND_GROUP = "rlrf.commands"
"""Entry-point group of the delegated subcommands (``train``, ``demo``, ``report``, ...).

Each entry point names a ``main(argv, prog=...) -> int`` function; its module may define a
string ``COMMAND_HELP``, the help line (else the first line of its docstring). The core never
names the packages that provide them: rlrf's own training commands are declared in
``pyproject.toml`` as a third party's would be, and are imported only when invoked, so
``rlrf envs`` stays torch-free.
"""


def _external_commands() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=COMMAND_GROUP)}


def _help_line(ep: importlib.metadata.EntryPoint) -> str:
    # The help line is read from the module's source without importing it (no torch at
    # `rlrf --help`): its COMMAND_HELP string, else the first line of its docstring.
    try:
        spec = importlib.util.find_spec(ep.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return f"(from {ep.module})"
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return f"(from {ep.module})"
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "COMMAND_HELP" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    doc = ast.get_docstring(tree) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else f"(from {ep.module})"


def _cmd_envs(args: argparse.Namespace) -> int:
    if args.json:
        rows = [
            {"id": s.id, "description": s.description, "plugin": s.plugin}
            for s in (rlrf.registry[i] for i in rlrf.registry)
        ]
        print(json.dumps(rows, indent=2))
    else:
        rlrf.pprint_registry()
    return 0


def parse_key_values(pairs: Sequence[str], flag: str = "--kwarg") -> dict[str, object]:
    """Parse ``KEY=VALUE`` strings; each VALUE is JSON when it parses, else the raw string."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _add_kwarg_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kwarg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor keyword argument (VALUE parsed as JSON when possible)",
    )


def _cmd_check(args: argparse.Namespace) -> int:
    env = rlrf.make(args.env_id, **parse_key_values(args.kwarg))
    rlrf.check_env(env)
    print(f"{args.env_id}: all checks passed")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    env = rlrf.make(args.env_id, **parse_key_values(args.kwarg))
    for i in range(args.n):
        prompt, info = env.reset(seed=args.seed + i, options={"split": args.split})
        print(f"=== sample {i + 1}/{args.n}: task {info['task_id']} ({info['split']}) ===")
        for m in prompt:
            print(f"[{m['role']}]\n{m['content']}")
        response = args.response
        if response is None:
            gold = env.gold_answer(info["task_id"])
            response = f"<answer>{gold}</answer>" if gold and i % 2 else "I do not know."
        print(f"[response]\n{response}")
        result = env.step_result(response)
        print(f"reward: {result.reward}  success: {result.success}")
        text = render_feedback(result.feedback)
        kinds = ", ".join(f.kind.value for f in result.feedback) or "none"
        print(f"feedback ({kinds}):\n{text or '(no feedback)'}\n")
    return 0


_BUILTIN_COMMANDS = ("envs", "check", "sample")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``rlrf`` argument parser (external subcommands are added lazily)."""
    parser = argparse.ArgumentParser(
        prog="rlrf", description="Reinforcement Learning with Rich Feedback."
    )
    parser.add_argument("--version", action="version", version=f"rlrf {rlrf.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("envs", help="list the registered environments")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_envs)

    p = sub.add_parser("check", help="run check_env on a registered environment")
    p.add_argument("env_id", help="registered id, e.g. rlrf/Arithmetic-v0")
    _add_kwarg_option(p)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("sample", help="print prompts, a scripted response, reward and feedback")
    p.add_argument("env_id", help="registered id, e.g. rlrf/Arithmetic-v0")
    p.add_argument("--n", type=int, default=3, help="number of episodes (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.add_argument("--split", default="train", help="task split (default train)")
    p.add_argument(
        "--response",
        default=None,
        help="response to submit (default: alternately a refusal and the gold answer)",
    )
    _add_kwarg_option(p)
    p.set_defaults(func=_cmd_sample)

    for name, ep in sorted(_external_commands().items()):
        if name not in sub.choices:
            sub.add_parser(name, help=_help_line(ep), add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlrf`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        external = _external_commands()
        if command in external and command not in _BUILTIN_COMMANDS:
            # Delegated subcommands parse their own arguments (and --help).
            entry = external[command].load()
            return int(entry(argv[1:], prog=f"rlrf {command}") or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except RLRFError as e:
        print(f"rlrf {command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
