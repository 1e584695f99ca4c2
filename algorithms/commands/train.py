"""Command line for training: ``rlrf train --algo NAME`` (also ``python -m algorithms.sdpo``).

Every config field of the chosen algorithm is a flag (``--lr 1e-5``, ``--top-k 100``,
``--use-feedback false``); its docstring is the ``--help`` text, grouped by the config's
sections. ``--config file.yaml`` sets any field (flat names or sections such as ``sdpo:``)
and may name the algorithm (``algorithm: sdpo-srf``); flags given on the command line win.
With ``--resume true`` the run saved in ``--output-dir`` is the base: flags may restate it or
change what may change between segments (``--steps``, evaluation and checkpoint cadence, ...),
and anything else is refused naming the saved and the given value.
The algorithm is any installed one (:mod:`algorithms.registry`: the built-ins and every
``rlrf.algorithms`` plugin), and ``rlrf train --algo NAME --help`` shows NAME's options.
This module only parses flags; nothing imports it but the entry points.

Examples::

    python -m algorithms.sdpo --env rlrf/Arithmetic-v0 --model smollm2-135m --steps 5
    rlrf train --algo grpo --config grpo.yaml --output-dir runs/grpo
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from algorithms.config import FlatField, flat_fields, sections
from algorithms.registry import (
    DEFAULT_ALGORITHM,
    get_preset,
    plugin_errors,
    presets,
    read_yaml_config,
    resolve_config,
    resume_config,
)
from rlrf.errors import RLRFError
from rlrf.options import env_kwargs_value, merge_env_kwargs, new_parser, unknown_option_message

__all__ = ["add_config_fields", "build_parser", "main", "run_from_args"]

COMMAND_HELP = "train a policy with any installed algorithm (GRPO, SDPO, plugins)"
"""The help line of this ``rlrf`` subcommand."""


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(spec: FlatField) -> Any:
    tp = spec.type
    origin = typing.get_origin(tp)
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    if origin is typing.Literal:
        return str
    if origin in (dict, list, tuple):
        return json.loads
    return str


def _section_title(name: str, cls: type) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    return f"{name} options" + (f" ({doc[0].rstrip('.')})" if doc else "")


def add_config_fields(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add every field of config dataclass ``cls`` as a flag, grouped by section."""
    groups: dict[str | None, Any] = {None: parser.add_argument_group("training options")}
    for section, section_cls in sections(cls).items():
        groups[section] = parser.add_argument_group(_section_title(section, section_cls))
    for name, spec in flat_fields(cls).items():
        group = groups[spec.section]
        help_text = spec.doc.replace("%", "%%")
        flag = f"--{name.replace('_', '-')}"
        if name == "env_kwargs":  # the shared vocabulary's --env-kwargs (rlrf.options)
            group.add_argument(
                flag,
                dest=name,
                action="append",
                type=env_kwargs_value,
                default=argparse.SUPPRESS,
                metavar="JSON|KEY=VALUE",
                help=f"{help_text} A JSON object or KEY=VALUE, repeatable.",
            )
            continue
        choices = None
        if typing.get_origin(spec.type) is typing.Literal:
            choices = list(typing.get_args(spec.type))
        kind = typing.get_origin(spec.type)
        if kind in (dict, list, tuple):
            help_text += " (JSON)"
        extra: dict[str, Any] = {"nargs": "?", "const": True} if spec.type is bool else {}
        group.add_argument(
            flag,
            dest=name,
            **extra,
            type=_converter(spec),
            choices=choices,
            default=argparse.SUPPRESS,
            metavar=name.upper() if choices is None else None,
            help=f"{help_text} [default: {spec.default!r}]",
        )


_EPILOG = (
    "Several GPUs or nodes: the same arguments under `accelerate launch --multi_gpu "
    "--num_processes N -m algorithms.sdpo ...` (data parallel); several CPU processes: "
    "`torchrun --nproc_per_node N -m algorithms.sdpo ...`."
)


def _algorithm_of(argv: Sequence[str], algo: str | None) -> tuple[str, argparse.Namespace]:
    """Which algorithm's flags to offer: ``--algo``, else the config file's, else the default."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--algo", default=algo)
    pre.add_argument("--config", default=None)
    pre.add_argument("--resume", nargs="?", const="true", default=None)
    pre.add_argument("--output-dir", default=None)
    known, _ = pre.parse_known_args(argv)
    name = known.algo
    file_values: dict[str, Any] = {}
    if name is None and known.config is not None:
        name, file_values = read_yaml_config(known.config)
    resume = known.resume if known.resume is not None else file_values.get("resume")
    if name is None and str(resume).lower() in ("1", "true", "yes", "on"):
        # a resumed run offers the flags of the algorithm saved in its folder
        folder = known.output_dir or file_values.get("output_dir") or "runs/latest"
        saved = Path(folder) / "config.yaml"
        if saved.is_file():
            name = read_yaml_config(saved)[0]
    return name or DEFAULT_ALGORITHM, known


def build_parser(name: str, prog: str) -> argparse.ArgumentParser:
    """The parser of ``rlrf train`` for algorithm ``name`` (its options and the shared ones)."""
    preset = get_preset(name, where="--algo")
    installed = "; ".join(
        f"{n}: {p.summary}" + (f" ({', '.join(f'{k}={v!r}' for k, v in p.values.items())})"
                               if p.values else "")
        for n, p in presets().items()
    )
    broken = plugin_errors()
    parser = new_parser(
        prog,
        __doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=_EPILOG
        + (" Plugins that failed to load: " + " ".join(broken.values()) if broken else ""),
    )
    parser.add_argument(
        "--algo",
        default=None,
        help=f"Algorithm (default: the config file's `algorithm:`, else {DEFAULT_ALGORITHM}); "
        f"its preset's values replace the field defaults shown below, and "
        f"`--algo NAME --help` shows NAME's own options. Installed: {installed}. "
        f"Shown: {name}.".replace("%", "%%"),
    )
    parser.add_argument(
        "--config",
        default=None,
        help="YAML file setting any field below, and `algorithm:` (flags win).",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Load the config, the env, a few tasks and the tokenizer, print the plan (steps, "
        "generations, tokens and memory per device; algorithms.plan) and exit.",
    )
    add_config_fields(parser, preset.config_class)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run training from parsed arguments; print where the run folder is."""
    from algorithms.engine.checkpoint import RunInterrupted
    from algorithms.engine.trainer import Trainer

    skip = {"algo", "config", "func", "command", "dry_run"}
    flags = {k: v for k, v in vars(args).items() if k not in skip}
    if "env_kwargs" in flags:
        flags["env_kwargs"] = merge_env_kwargs(flags["env_kwargs"])
    file_values = read_yaml_config(args.config)[1] if args.config is not None else {}
    if flags.get("resume", file_values.get("resume", False)) is True:
        # continue the run in the folder: its config.yaml, changed only between segments
        output_dir = flags.get("output_dir", file_values.get("output_dir", "runs/latest"))
        config = resume_config(
            output_dir,
            algorithm=args.algo,
            config=args.config,
            overrides=flags,
            where="the command line",
        )
    else:
        config = resolve_config(
            args.config, algorithm=args.algo, overrides=flags, where="the command line"
        )
    if getattr(args, "dry_run", False):
        from algorithms.plan import dry_run

        return dry_run(config)
    try:
        result = Trainer(config).train()
    except RunInterrupted as e:  # Ctrl-C: say how to resume instead of a traceback
        print(f"\n{e}", file=sys.stderr)
        return 130
    if result.final_model_dir is None:
        return 0  # not the main process of a multi-process run: it reports
    last_eval = result.evals[-1] if result.evals else {}
    print(f"run folder: {result.output_dir}")
    if last_eval:
        print(
            f"held-out accuracy {last_eval.get('eval/accuracy', float('nan')):.3f} after "
            f"{result.steps} steps ({result.generations} generations)"
        )
    return 0


def main(
    argv: Sequence[str] | None = None, *, algo: str | None = None, prog: str | None = None
) -> int:
    """Entry point of ``rlrf train`` and ``python -m algorithms.grpo|sdpo [fields...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or "python -m algorithms." + (
        algo.replace("-", "_") if algo else "commands.train"
    )
    try:
        name, _ = _algorithm_of(argv, algo)
        parser = build_parser(name, prog)
    except RLRFError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if algo is not None:
        parser.set_defaults(algo=algo)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        message = unknown_option_message(parser, unknown)
        option = unknown[0].split("=")[0].lstrip("-").replace("-", "_")
        users = [n for n, p in presets().items() if option in flat_fields(p.config_class)]
        if users and unknown[0].startswith("--"):
            message = (
                f"--{option.replace('_', '-')} is an option of {', '.join(users)}; algorithm "
                f"{name!r} does not use it (pick one with --algo)"
            )
        parser.error(message)
    try:
        return run_from_args(args)
    except RLRFError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
