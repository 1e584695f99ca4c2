"""``rlrf init NAME``: create a pip-installable package of rlrf environments.

The package registers its envs through the ``rlrf.envs`` entry point (see
:data:`rlrf.registration.ENTRY_POINT_GROUP`), so once installed (``pip install -e NAME``)
``rlrf check NAME/Reverse-v0``, ``rlrf eval --env NAME/Reverse-v0`` and training find them
without any import. It holds:

* ``pyproject.toml`` with the entry point ``NAME = "PACKAGE:register_envs"``;
* ``src/PACKAGE/__init__.py`` whose ``register_envs()`` calls :func:`rlrf.register`;
* ``src/PACKAGE/env.py``, a small working env to edit: task style by default (reverse a word:
  ``task_ids`` / ``prompt`` / ``evaluate``), or with ``--style gymnasium`` a stateful
  guessing game that overrides ``reset`` / ``step`` and keeps its state on the instance;
* ``tests/test_env.py``, running :func:`rlrf.check_env` and playing one right and one wrong
  episode;
* ``README.md`` saying what the env rewards, what feedback it gives, and the next commands.

The folder is written in a temporary sibling and renamed into place, so an interrupted
``rlrf init`` leaves nothing behind. This module does not import torch.
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Literal

from rlrf.errors import ConfigError, RLRFError
from rlrf.options import new_parser, parse_args
from rlrf.registration import ENTRY_POINT_GROUP

__all__ = ["COMMAND_HELP", "Style", "main", "scaffold"]

COMMAND_HELP = "create a pip-installable package of rlrf environments (rlrf.envs entry point)"
"""The help line of this ``rlrf`` subcommand."""

Style = Literal["task", "gymnasium"]
"""How the skeleton env is written: task style (stateless) or Gymnasium style (stateful)."""

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_ENV_NAME_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_DEFAULT_ENV_NAME: dict[str, str] = {"task": "Reverse", "gymnasium": "Guess"}


def scaffold(
    name: str,
    directory: str | os.PathLike[str] | None = None,
    *,
    style: Style = "task",
    env_name: str | None = None,
) -> Path:
    """Create the env package ``name`` and return its folder.

    Args:
        name: Distribution name and env-id namespace (letters, digits, ``-``, ``_``); the
            import package is the same with ``-`` turned into ``_``, lowercased.
        directory: Where to create it (default ``./name``); must not exist or be empty.
        style: ``"task"`` or ``"gymnasium"`` (see the module docstring).
        env_name: The env's name in its id ``name/<env_name>-v0`` (default ``Reverse`` or
            ``Guess``); the class is ``<env_name>Env``.

    Raises:
        ConfigError: a bad name, an occupied folder, or a package name already importable.

    >>> import tempfile, pathlib
    >>> root = scaffold("acme-envs", pathlib.Path(tempfile.mkdtemp()) / "acme-envs")
    >>> sorted(p.name for p in root.iterdir())
    ['README.md', 'pyproject.toml', 'src', 'tests']

    """
    if style not in _DEFAULT_ENV_NAME:
        raise ConfigError(f"--style must be 'task' or 'gymnasium', got {style!r}")
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"package name {name!r} is not usable: start with a letter, then letters, digits, "
            "'-' or '_' (it becomes the env-id namespace, e.g. acme-envs/Reverse-v0)"
        )
    package = name.replace("-", "_").lower()
    if keyword.iskeyword(package):
        raise ConfigError(f"package name {name!r} is a Python keyword; choose another")
    if importlib.util.find_spec(package) is not None:
        raise ConfigError(
            f"a module named {package!r} is already importable here; the new package would "
            "shadow it (or is already installed): choose another NAME"
        )
    env_name = env_name or _DEFAULT_ENV_NAME[style]
    if not _ENV_NAME_RE.match(env_name):
        raise ConfigError(
            f"env name {env_name!r} is not usable: CamelCase letters and digits, starting "
            "with a capital (it becomes the id NAME/<env name>-v0 and the class <env name>Env)"
        )
    target = Path(directory if directory is not None else name).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} already exists and is not an empty folder; pick another")

    values = {
        "name": name,
        "package": package,
        "env_id": f"{name}/{env_name}-v0",
        "env_name": env_name,
        "cls": f"{env_name}Env",
        "group": ENTRY_POINT_GROUP,
        "style": style,
        "summary": _SUMMARY[style],
    }
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README[style],
        f"src/{package}/__init__.py": _INIT,
        f"src/{package}/env.py": _ENV[style],
        "tests/test_env.py": _TEST[style],
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for rel, template in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(Template(template).substitute(values), encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: Sequence[str] | None = None, prog: str = "rlrf init") -> int:
    """Run ``rlrf init``; return the process exit status."""
    parser = new_parser(prog, __doc__.split("\n\n")[0])
    parser.add_argument("name", help="distribution name and env-id namespace, e.g. acme-envs")
    parser.add_argument(
        "--style",
        choices=("task", "gymnasium"),
        default="task",
        help="task style (task_ids/prompt/evaluate; default) or Gymnasium style (reset/step "
        "with the env's own state)",
    )
    parser.add_argument("--dir", help="folder to create (default ./NAME)")
    parser.add_argument("--env-name", help="env name in the id NAME/ENV_NAME-v0 (default: "
                        "Reverse, or Guess with --style gymnasium)")  # fmt: skip
    args = parse_args(parser, argv)
    try:
        root = scaffold(args.name, args.dir, style=args.style, env_name=args.env_name)
    except RLRFError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    env_id = f"{args.name}/{args.env_name or _DEFAULT_ENV_NAME[args.style]}-v0"
    shown = os.path.relpath(root)
    print(f"created {shown}/ with the {args.style}-style env {env_id}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        print(f"  {os.path.relpath(path)}")
    print("next:")
    print(f"  pip install -e {shown}")
    print(f"  rlrf check {env_id}")
    print(f"  python -m pytest {shown}/tests")
    print(f"  rlrf eval --env {env_id} --model smollm2-135m --tasks 8 --k 4")
    return 0


# ---- templates (string.Template: $name placeholders, $$ for a literal dollar) ----------------

_SUMMARY = {
    "task": "reverse a word (task style)",
    "gymnasium": "guess a number, told higher or lower (Gymnasium style, stateful)",
}

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$name"
version = "0.1.0"
description = "rlrf environments: $env_id, $summary"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["rlrf"]

[project.optional-dependencies]
test = ["pytest>=8"]

# rlrf calls $package.register_envs() on its first registry lookup (never at import time);
# a broken plugin is reported by name without affecting other environments.
[project.entry-points."$group"]
$name = "$package:register_envs"

# src layout: the project folder (often named like the package) never shadows the package
[tool.setuptools.packages.find]
where = ["src"]
"""

_INIT = '''\
"""rlrf environments of the $name package; registered through the $group entry point."""

import rlrf

__all__ = ["register_envs"]


def register_envs() -> None:
    """Register this package's envs (rlrf calls it once, on its first registry lookup)."""
    rlrf.register(
        "$env_id",
        "$package.env:$cls",  # imported by rlrf.make, not now
        description="$summary",
        override=True,  # re-registering after a reload replaces, never fails
    )
'''

_ENV = {
    "task": '''\
"""$env_id: spell a word backwards (a task-style rlrf environment).

Rewards: 1.0 when the text inside ``<answer>...</answer>`` is the word reversed (case and
surrounding spaces ignored), else 0.0.

Feedback: ``format`` when there is no ``<answer>`` tag; ``wrong_answer`` saying how many
letters were expected, or which position is the first wrong one. It never gives the answer.

Task style: implement ``task_ids``, ``prompt`` and ``evaluate``; rlrf supplies ``reset``
(the seed picks a task) and ``step``. Replace the words, the prompt and the grading with
your own task; keep ``evaluate`` total (never raise on a response).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlrf import Feedback, FeedbackKind, Message, Outcome, RLRFEnv, user_prompt

WORDS = (
    "planet", "garden", "rocket", "silver", "window", "button", "forest", "candle",
    "marble", "pillow", "jacket", "ladder", "orange", "copper", "summer", "pencil",
    "bridge", "castle", "dragon", "flower", "hammer", "island", "kitten", "lemon",
)  # fmt: skip
HELD_OUT = 6  # the last words form the "test" split

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class $cls(RLRFEnv):
    """Spell a word backwards; feedback points at the first wrong letter."""

    max_turns = 1
    splits = ("train", "test")

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Task ids are ``<split>-<word>``; the splits share no word."""
        words = WORDS[:-HELD_OUT] if split == "train" else WORDS[-HELD_OUT:]
        return [f"{split}-{w}" for w in words]

    def prompt(self, task_id: str) -> list[Message]:
        """Ask for the word reversed, inside an answer tag."""
        return user_prompt(
            f"Spell the word '{self._word(task_id)}' backwards. "
            "Put only the result inside <answer></answer>."
        )

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Grade one response (never raises, whatever the response)."""
        match = _ANSWER.search(response)
        if match is None:
            return Outcome(
                0.0, Feedback(FeedbackKind.FORMAT, "Put your answer inside <answer></answer>.")
            )
        got, want = match.group(1).strip().lower(), self.gold_answer(task_id)
        if got == want:
            return Outcome(1.0)
        if len(got) != len(want):
            text = f"Your answer has {len(got)} letters; it should have {len(want)}."
        else:
            first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            text = f"Letter {first + 1} of your answer is wrong."
        return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, text))

    def gold_answer(self, task_id: str) -> str:
        """The reversed word (rlrf.check_env makes sure no prompt or feedback shows it)."""
        return self._word(task_id)[::-1]

    def gold_response(self, task_id: str) -> str:
        """A full response as ``evaluate`` grades it (``rlrf sample`` plays it)."""
        return f"<answer>{self.gold_answer(task_id)}</answer>"

    def _word(self, task_id: str) -> str:
        return task_id.split("-", 1)[1]
''',
    "gymnasium": '''\
"""$env_id: guess a number in a few tries (a Gymnasium-style rlrf environment).

Rewards: 1.0 on the turn the guess is right, else 0.0; the episode ends when the number is
found (terminated) or after ``max_turns`` guesses (truncated).

Feedback: ``format`` when the reply holds no number; ``wrong_answer`` saying "higher" or
"lower" after a wrong guess. It is also appended to the chat as a user message, so the
next guess can use it. It never gives the number.

Gymnasium style: the env keeps its own state (here the secret, the chat and the turn) and
overrides ``reset`` and ``step``. ``super().reset(seed=seed)`` only seeds
``self.np_random``; the same seed must pick the same task (that is how the rollouts of one
group share a task). Each running rollout gets its own instance (``env.spawn()``).
"""

from __future__ import annotations

import re
from typing import Any

from rlrf import Feedback, FeedbackKind, Message, RLRFEnv

_NUMBER = re.compile(r"-?\\d{1,6}")


class $cls(RLRFEnv):
    """Guess a number from 1 to 100; feedback says higher or lower."""

    max_turns = 7  # enough for bisection
    splits = ("train", "test")

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start a game; the seed picks the secret (train: even numbers, test: odd)."""
        super().reset(seed=seed)  # only seeds self.np_random
        split = (options or {}).get("split", "train")
        self.secret = 2 * int(self.np_random.integers(1, 51)) - (split == "test")
        self.turn = 0
        self.chat: list[Message] = [
            {"role": "user", "content": "I picked a number from 1 to 100. Guess it: reply "
             f"with the number only. You have {self.max_turns} tries."}
        ]  # fmt: skip
        return list(self.chat), {"task_id": f"{split}-{self.secret}", "split": split}

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Play one guess; return the chat so far, reward, terminated, truncated, info."""
        self.turn += 1
        self.chat.append({"role": "assistant", "content": action})
        match = _NUMBER.search(action)
        guess = int(match.group()) if match else None
        if guess == self.secret:
            return list(self.chat), 1.0, True, False, {"feedback": (), "success": True}
        if guess is None:
            feedback = Feedback(FeedbackKind.FORMAT, "Reply with a number only.")
        else:
            word = "Higher" if guess < self.secret else "Lower"
            feedback = Feedback(FeedbackKind.WRONG_ANSWER, f"{word} than {guess}.")
        self.chat.append({"role": "user", "content": feedback.text})
        truncated = self.turn >= self.max_turns
        return list(self.chat), 0.0, False, truncated, {"feedback": (feedback,)}

    def gold_answer(self, task_id: str) -> str:
        """The secret of task ``<split>-<secret>`` (check_env makes sure no feedback shows it)."""
        return task_id.rsplit("-", 1)[1]
''',
}

_TEST = {
    "task": '''\
"""The env passes rlrf's checker, and grades a right and a wrong answer as documented."""

import rlrf
from rlrf import FeedbackKind


def test_check_env():
    rlrf.check_env(rlrf.make("$env_id"))


def test_gold_response_solves_and_a_wrong_one_gets_feedback():
    env = rlrf.make("$env_id")
    _, info = env.reset(seed=0)
    assert env.step_result(env.gold_response(info["task_id"])).reward == 1.0
    env.reset(seed=0)
    result = env.step_result("<answer>x</answer>")
    assert result.reward == 0.0 and result.terminated
    assert [f.kind for f in result.feedback] == [FeedbackKind.WRONG_ANSWER]


def test_splits_are_disjoint():
    env = rlrf.make("$env_id")
    words = [set(t.split("-", 1)[1] for t in env.task_ids(s)) for s in env.splits]
    assert not words[0] & words[1]
''',
    "gymnasium": '''\
"""The env passes rlrf's checker and plays a whole game as documented."""

import rlrf
from rlrf import FeedbackKind


def test_check_env():
    rlrf.check_env(rlrf.make("$env_id"))


def test_bisection_wins_with_the_feedback():
    env = rlrf.make("$env_id")
    chat, info = env.reset(seed=3)
    low, high = 1, 100
    for _ in range(env.max_turns + 1):
        guess = (low + high) // 2
        result = env.step_result(str(guess))
        if result.terminated:
            break
        (feedback,) = result.feedback
        assert feedback.kind is FeedbackKind.WRONG_ANSWER
        assert result.observation[-1]["content"] == feedback.text  # shown in the chat too
        low, high = (guess + 1, high) if feedback.text.startswith("Higher") else (low, guess - 1)
    assert result.reward == 1.0 and result.success
    assert info["task_id"].endswith(f"-{guess}")


def test_same_seed_same_task():
    env = rlrf.make("$env_id")
    assert env.reset(seed=7) == env.reset(seed=7)
''',
}

_README_COMMON = """\
## Use it

```bash
# install: rlrf finds the env through the $group entry point
pip install -e .
# rlrf's checker (seeds, spaces, typed feedback, leaks), then this package's tests
rlrf check $env_id
python -m pytest tests
# play episodes with a scripted response; see how a model does before training
rlrf sample $env_id --n 2
rlrf eval --env $env_id --model smollm2-135m --tasks 8 --k 4
# then train (see rlrf's README) and evaluate the run's final/ model
rlrf train --algo sdpo --env $env_id --model smollm2-135m --output-dir runs/$package
rlrf eval --env $env_id --model runs/$package --tasks 8 --k 4
```

From Python: `rlrf.make("$env_id")`, or `gymnasium.make("rlrf.plugins:$env_id")`.

## Make it yours

Edit `src/$package/env.py` (the task, the grading, the feedback), keep `rlrf check` passing,
and bump the version in the id (`-v1`) in `src/$package/__init__.py` whenever a change alters
rewards, so results stay comparable. More envs: one more `rlrf.register(...)` line each.
"""

_README = {
    "task": """\
# $name

rlrf environments. `$env_id`: spell a word backwards.

- **Rewards** 1.0 when the text inside `<answer>...</answer>` is the word reversed, else 0.0.
- **Feedback** `format` when the answer tag is missing; `wrong_answer` naming the expected
  length or the first wrong position (never the answer).
- **Style** task style: `task_ids(split)`, `prompt(task_id)`, `evaluate(task_id, response,
  history)`; rlrf supplies `reset` and `step`. Splits `train` and `test` share no word.

"""
    + _README_COMMON,
    "gymnasium": """\
# $name

rlrf environments. `$env_id`: guess a number from 1 to 100 in a few tries.

- **Rewards** 1.0 on the turn the guess is right, else 0.0.
- **Feedback** `wrong_answer` saying "higher" or "lower" (also added to the chat for the
  next turn); `format` when the reply holds no number. Never the number itself.
- **Style** Gymnasium style: the env keeps its state (the secret, the chat, the turn) and
  overrides `reset(seed=, options=)` and `step(response)`; the seed picks the secret (even
  numbers for `train`, odd for `test`, from `options["split"]`).

"""
    + _README_COMMON,
}


if __name__ == "__main__":
    sys.exit(main())
