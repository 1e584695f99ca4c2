"""Every code block of README.md and docs/*.md is exercised, so no guide drifts from the code.

- ``python`` blocks run, each as a script in a fresh interpreter in a temporary folder. A
  block preceded by ``<!-- not run: REASON -->`` is compiled and its imports resolved
  instead, and so is a block that talks to a local server (``http://127.0.0.1...``), which
  this test does not start; one preceded by ``<!-- slow: REASON -->`` runs under
  ``pytest.mark.slow``.
- ``bash``/``shell`` blocks: every command line (``rlrf ...``, ``python -m ...``,
  ``torchrun``/``accelerate launch ... -m ...``, ``python SCRIPT.py ...``, ``make ...``,
  ``bash SCRIPT``) is parsed, and its flags are checked against the real argparse parser of
  that command (exact option names, values of the right type and choice, required
  arguments present) or, for ``make``, against the Makefile's targets. The cheap ones
  (``rlrf envs``, and ``rlrf check``/``rlrf sample`` on a built-in env) also run, unless the
  block is marked ``<!-- not run: REASON -->``.
- ``yaml`` blocks are training configs: they resolve to a train config. ``toml`` blocks parse.
- Every repository path a document names in backticks (``tests/...py``, ``benchmarks/...``)
  exists, and every relative link points to a file.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_BLOCK = re.compile(
    r"(?:<!--\s*(?P<mark>not run|slow)\s*:?\s*(?P<reason>.*?)-->\s*\n)?"
    r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    """One fenced code block of a document."""

    doc: Path
    line: int
    lang: str
    body: str
    mark: str | None  # "not run", "slow" or None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _blocks(doc: Path) -> list[Block]:
    text = doc.read_text(encoding="utf-8")
    return [
        Block(doc, text.count("\n", 0, m.start("body")), m["lang"], m["body"], m["mark"])
        for m in _BLOCK.finditer(text)
    ]


BLOCKS = [b for doc in DOCS for b in _blocks(doc)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL = [b for b in BLOCKS if b.lang in ("bash", "shell", "sh")]


def _param(b: Block):
    marks = [pytest.mark.slow] if b.mark == "slow" else []
    return pytest.param(b, id=b.id, marks=marks)


# --- python blocks ---------------------------------------------------------------------------

_LOCAL_SERVER = re.compile(r"https?://(?:127\.0\.0\.1|localhost)[:/]")


@pytest.mark.parametrize("block", [_param(b) for b in PYTHON])
def test_python_block(block: Block, tmp_path: Path):
    if block.mark == "not run" or _LOCAL_SERVER.search(block.body):
        _check_imports(block)
        return
    script = tmp_path / "block.py"
    script.write_text(block.body)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    assert proc.returncode == 0, f"{block.id}:\n{proc.stderr[-3000:]}"


def _check_imports(block: Block) -> None:
    tree = ast.parse(compile(block.body, block.id, "exec", ast.PyCF_ONLY_AST))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")


# --- shell blocks ----------------------------------------------------------------------------

# Programs a block may use that this test does not check (installers, the shell itself).
IGNORED = {"pip", "export", "cd", "git", "ls", "cat", "source", "curl", "openenv"}
# Modules of this repository, whose `python -m` flags are checked (others are third-party).
OWN_MODULES = ("rlrf", "algorithms", "envs", "sandboxes", "benchmarks", "examples")
BUILTIN_COMMANDS = ("envs", "check", "sample")


class Refused(Exception):
    """An argparse error, raised instead of exiting."""


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _capture(run: Callable[[], object]) -> argparse.ArgumentParser:
    """The first parser ``run`` parses with (a ``main`` that builds its parser inline)."""
    original = argparse.ArgumentParser.parse_known_args

    def fake(self, args=None, namespace=None):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = fake  # type: ignore[method-assign]
    try:
        run()
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original  # type: ignore[method-assign]
    raise AssertionError("the command parsed no arguments")


def _main_parser(main: Callable[..., object], prog: str) -> argparse.ArgumentParser:
    params = inspect.signature(main).parameters
    if not params:  # a script's main() reading sys.argv
        return _capture(main)
    if "prog" in params:
        return _capture(lambda: main([], prog=prog))
    return _capture(lambda: main([]))


def _rlrf_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of ``rlrf COMMAND`` and the arguments after COMMAND."""
    assert argv, "`rlrf` with no command"
    command, rest = argv[0], argv[1:]
    if command in BUILTIN_COMMANDS:
        from rlrf.cli import _subparsers, build_parser

        return _subparsers(build_parser())[command], rest
    if command == "train":
        return _train_parser(None, "rlrf train", rest), rest
    entry = {ep.name: ep for ep in importlib.metadata.entry_points(group="rlrf.commands")}
    assert command in entry, f"`rlrf {command}`: no such command (have {sorted(entry)})"
    module = importlib.import_module(entry[command].module)
    if hasattr(module, "build_parser"):
        return module.build_parser(f"rlrf {command}"), rest
    return _main_parser(entry[command].load(), f"rlrf {command}"), rest


def _train_parser(algo: str | None, prog: str, argv: list[str]) -> argparse.ArgumentParser:
    from algorithms.commands.train import _algorithm_of, build_parser

    name, _ = _algorithm_of(argv, algo)
    from algorithms.registry import presets

    if name not in presets():
        # a plugin a README code block defines (trained end to end by its own test): the
        # shared options are checked against the base parser, its own ones are its own
        blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
        (block,) = [b for b in blocks if f'Preset("{name}"' in b] or [None]
        assert block is not None, f"--algo {name}: no installed or README-defined algorithm"
        parser = build_parser("grpo", prog)
        for field_name in re.findall(r"^    (\w+): [^=\n]+ = ", block, re.M):
            if f"--{field_name.replace('_', '-')}" not in parser._option_string_actions:
                parser.add_argument(f"--{field_name.replace('_', '-')}")
        parser.parse_args = lambda args=None, namespace=None: parser.parse_known_args(  # type: ignore[method-assign]
            [a for a in args if a not in ("--algo", name)], namespace
        )[0]
        return parser
    return build_parser(name, prog)


def _module_parser(module: str, argv: list[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser of ``python -m MODULE``."""
    if module == "rlrf.cli":
        return _rlrf_parser(argv)
    if module in ("algorithms.sdpo", "algorithms.grpo"):
        algo = module.rsplit(".", 1)[1]
        return _train_parser(algo, f"python -m {module}", argv), argv
    if module == "algorithms.commands.train":
        return _train_parser(None, "python -m algorithms.commands.train", argv), argv
    mod = importlib.import_module(module)
    if hasattr(mod, "build_parser"):
        return mod.build_parser(f"python -m {module}"), argv
    assert hasattr(mod, "main"), f"`python -m {module}`: the module has no main()"
    return _main_parser(mod.main, f"python -m {module}"), argv


def _script_parser(path: str, argv: list[str]) -> tuple[argparse.ArgumentParser | None, list[str]]:
    """The parser of ``python SCRIPT.py`` (None: the script takes no arguments)."""
    file = ROOT / path
    assert file.is_file(), f"{path} does not exist"
    name = "docs_script_" + re.sub(r"\W", "_", path)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    if hasattr(module, "build_parser"):
        return module.build_parser(), argv
    if hasattr(module, "main"):
        return _main_parser(module.main, path), argv
    assert not argv, f"{path} takes no arguments"
    return None, argv


def _check_flags(parser: argparse.ArgumentParser, argv: list[str], where: str) -> None:
    """Every option is spelled exactly as the parser has it; the whole line parses."""
    argv = [a for a in argv if a not in ("-h", "--help")]
    valid = {o for action in parser._actions for o in action.option_strings}
    for token in argv:
        if token.startswith("-") and len(token) > 1 and not _is_number(token):
            name = token.split("=", 1)[0]
            assert name in valid, f"{where}: {name} is not an option of `{parser.prog}`"

    def refuse(message: str):
        raise Refused(message)

    parsers = [parser] + [
        p for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        for p in a.choices.values()
    ]  # fmt: skip
    saved = [p.error for p in parsers]
    for p in parsers:
        p.error = refuse  # type: ignore[method-assign]
    try:
        parser.parse_args(argv)
    except Refused as e:
        pytest.fail(f"{where}: `{parser.prog}` refuses {shlex.join(argv)}: {e}")
    finally:
        for p, error in zip(parsers, saved, strict=True):
            p.error = error  # type: ignore[method-assign]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m for m in re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M)}


def _command_lines(body: str) -> list[str]:
    """The block's commands: continuation lines joined, split at ``&&``, ``||``, ``;``, ``|``."""
    lines, current = [], ""
    for raw in body.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    if current:
        lines.append(current)
    commands = []
    for line in lines:
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        for part in re.split(r"\s(?:&&|\|\||;|\|)\s", code):
            if shlex.split(part, comments=True):
                commands.append(part.strip())
    return commands


@dataclass
class Command:
    """A checked command line: what runs it, if it is cheap enough to run."""

    line: str
    run: list[str] | None = None


def _check_line(line: str, where: str) -> Command:
    tokens = shlex.split(line, comments=True)
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]  # VAR=value prefixes
    program, args = Path(tokens[0]).name, tokens[1:]
    if program in IGNORED:
        return Command(line)
    if program == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        missing = set(targets) - _make_targets()
        assert not missing, f"{where}: no Makefile target {sorted(missing)}"
        return Command(line)
    if program == "bash":
        assert (ROOT / args[0]).is_file(), f"{where}: {args[0]} does not exist"
        return Command(line)
    if program == "rlrf":
        parser, rest = _rlrf_parser(args)
        _check_flags(parser, rest, where)
        cheap = args[0] == "envs" or (
            args[0] in ("check", "sample") and rest and rest[0].startswith("rlrf/")
        )
        return Command(line, [sys.executable, "-m", "rlrf.cli", *args] if cheap else None)
    if program.startswith("python") or program in ("torchrun", "accelerate"):
        if program == "accelerate":
            assert args[:1] == ["launch"], f"{where}: only `accelerate launch` is checked"
        if "-m" in args:
            i = args.index("-m")
            if args[i + 1].split(".")[0] not in OWN_MODULES:
                return Command(line)  # a third-party module (uvicorn, pytest, ...)
            parser, rest = _module_parser(args[i + 1], args[i + 2 :])
        else:
            assert program.startswith("python"), f"{where}: {program} without -m"
            parser, rest = _script_parser(args[0], args[1:])
        if parser is not None:
            _check_flags(parser, rest, where)
        return Command(line)
    raise AssertionError(f"{where}: unknown program {program!r} (add it to IGNORED?)")


@pytest.mark.parametrize("block", [_param(b) for b in SHELL])
def test_shell_block(block: Block, tmp_path: Path):
    commands = [
        _check_line(line, f"{block.id} `{line.strip()}`") for line in _command_lines(block.body)
    ]
    if block.mark == "not run":
        return
    for command in commands:
        if command.run is None:
            continue
        proc = subprocess.run(
            command.run, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert proc.returncode == 0, f"{block.id} `{command.line}`:\n{proc.stderr[-3000:]}"


# --- config blocks, paths and links ----------------------------------------------------------


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.lang == "yaml"])
def test_yaml_block_is_a_train_config(block: Block, tmp_path: Path):
    from algorithms.registry import resolve_config

    path = tmp_path / "config.yaml"
    path.write_text(block.body)
    resolve_config(path)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.lang == "toml"])
def test_toml_block_parses(block: Block):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    tomllib.loads(block.body)


_PATH = re.compile(
    r"`((?:tests|benchmarks|algorithms|rlrf|envs|sandboxes|examples|docs)/[\w/.-]*"
    r"(?:\.(?:py|md|sh|json|png|yaml|toml)|/))`"
)  # a file with an extension, or a folder: `rlrf/Arithmetic-v0` is an env id
_LINK = re.compile(r"\]\(((?!https?:|#)[^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_named_paths_and_links_exist(doc: Path):
    text = doc.read_text(encoding="utf-8")
    named = {p.rstrip(".") for p in _PATH.findall(text)}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"
    links = {link.split("#")[0] for link in _LINK.findall(text)}
    broken = sorted(link for link in links if link and not (doc.parent / link).exists())
    assert not broken, f"{doc.name} links to files that do not exist: {broken}"


def test_the_checker_refuses_what_the_code_refuses():
    """The flag check is not vacuous: old spellings, abbreviations and bad values fail."""
    for line in (
        "rlrf eval --env rlrf/Arithmetic-v0 --k 4",
        "rlrf eval --env rlrf/Arithmetic-v0 --max-tok 64",
        "rlrf train --algo grpo --steps many",
        "rlrf diagnose --env rlrf/Arithmetic-v0 --kwarg digits=1",
        "python -m algorithms.sdpo --top-k 8 --parallelism zero3",
        "rlrf report --output-dir x",
        "make nosuchtarget",
    ):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            _check_line(line, line)
    assert _check_line("rlrf sample rlrf/Arithmetic-v0 --n 1", "x").run is not None
