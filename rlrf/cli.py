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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import rlrf
from rlrf.env import Message, appended_messages, validate_reset, validate_step
from rlrf.errors import EnvError, RLRFError
from rlrf.feedback import render_feedback
from rlrf.options import (
    add_env_options,
    merge_env_kwargs,
    new_parser,
    parse_key_values,
    unknown_option_message,
)

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


def _cmd_check(args: argparse.Namespace) -> int:
    env = rlrf.make(args.env, **merge_env_kwargs(args.env_kwargs))
    rlrf.check_env(env)
    print(f"{args.env}: all checks passed")
    return 0


def _call_env(env_id: str, where: str, fn: Callable[[], Any]) -> Any:
    """Call an env method; an exception that is not rlrf's becomes an EnvError naming it."""
    try:
        return fn()
    except RLRFError:
        raise
    except Exception as e:
        raise EnvError(f"{env_id}.{where} raised {type(e).__name__}: {e}") from e


def _print_messages(messages: Sequence[Message]) -> None:
    for m in messages:
        print(f"[{m['role']}]\n{m['content']}")


def _cmd_sample(args: argparse.Namespace) -> int:
    env = rlrf.make(args.env, **merge_env_kwargs(args.env_kwargs))
    name = env.env_id
    try:
        for i in range(args.n):
            seed = args.seed + i
            reset = _call_env(
                name, "reset", lambda s=seed: env.reset(seed=s, options={"split": args.split})
            )
            chat, info = validate_reset(reset, f"{name}.reset")
            task_id = info.get("task_id")
            shown = "(no task id)" if task_id is None else task_id
            print(
                f"=== sample {i + 1}/{args.n}: task {shown} ({info.get('split', args.split)}) ==="
            )
            _print_messages(chat)
            response, kind = _scripted_response(env, args.response, task_id, i)
            for turn in range(1, env.max_turns + 1):
                print(f"[response, turn {turn}: {kind}]\n{response}")
                where = f"step (turn {turn})"
                step = _call_env(name, where, lambda r=response: env.step(r))
                result = validate_step(step, f"{name}.{where}")
                missing = "  (reward missing)" if result.reward_missing else ""
                print(f"reward: {result.reward}  success: {result.success}{missing}")
                text = render_feedback(result.feedback)
                kinds = ", ".join(f.kind.value for f in result.feedback) or "none"
                print(f"feedback ({kinds}):\n{text or '(no feedback)'}")
                if result.done:
                    ended = "terminated" if result.terminated else "truncated"
                    print(f"episode {ended} after {turn} turn(s)\n")
                    break
                _print_messages(appended_messages(chat, response, result.observation) or ())
                chat = result.observation
            else:
                print(f"episode cut at max_turns={env.max_turns}\n")
            if kind == "gold response" and not result.success:
                print(
                    f"note: {name}'s gold_response did not succeed; the env should override "
                    "gold_response to format its gold answer as it grades responses\n"
                )
    finally:
        env.close()
    return 0


def _scripted_response(env: Any, given: str | None, task_id: object, index: int) -> tuple[str, str]:
    """The response to play: ``--response``, else a refusal and the gold response in turn."""
    if given is not None:
        return given, "--response"
    if index % 2 and task_id is not None:
        gold = env.gold_response(str(task_id))
        if gold:
            return gold, "gold response"
    return "I do not know.", "refusal"


_BUILTIN_COMMANDS = ("envs", "check", "sample")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``rlrf`` argument parser (external subcommands are added lazily)."""
    parser = new_parser("rlrf", "Reinforcement Learning with Rich Feedback.")
    parser.add_argument("--version", action="version", version=f"rlrf {rlrf.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("envs", help="list the registered environments", allow_abbrev=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_envs)

    p = sub.add_parser(
        "check", help="run check_env on a registered environment", allow_abbrev=False
    )
    add_env_options(p, positional=True)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser(
        "sample",
        help="play whole episodes with a scripted response: prompts, rewards, feedback",
        allow_abbrev=False,
    )
    add_env_options(p, positional=True)
    p.add_argument("--n", type=int, default=3, help="number of episodes (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode (default 0)")
    p.add_argument("--split", default="train", help="task split (default train)")
    p.add_argument(
        "--response",
        default=None,
        help="response to submit every turn (default: a refusal, then the env's gold "
        "response, alternately)",
    )
    p.set_defaults(func=_cmd_sample)

    for name, ep in sorted(_external_commands().items()):
        if name not in sub.choices:
            sub.add_parser(name, help=_help_line(ep), add_help=False)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


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
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            sub = _subparsers(parser).get(args.command, parser)
            sub.error(unknown_option_message(sub, unknown))
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except RLRFError as e:
        print(f"rlrf {command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
