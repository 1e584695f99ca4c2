"""``check_env``: catch the common ways an RLRF environment breaks its contract.

Each ``check_*`` function tests one property and raises :class:`~rlrf.errors.EnvCheckError`
with a message that names the env, what was wrong, and how to fix it. :func:`check_env` runs
them all.

>>> from rlrf import make
>>> check_env(make("rlrf/Arithmetic-v0"))
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from rlrf.env import ChatSpace, Outcome, RLRFEnv
from rlrf.errors import EnvCheckError
from rlrf.feedback import Feedback
from rlrf.wrappers import Wrapper

__all__ = [
    "ADVERSARIAL_RESPONSES",
    "check_env",
    "check_gold_not_leaked",
    "check_outcome",
    "check_reset_determinism",
    "check_responses_handled",
    "check_spaces",
    "check_task_ids",
    "check_task_option",
]

#: Responses every env must grade without raising: empty, whitespace, garbage, very long,
#: control characters and text that looks like mis-decoded bytes (lone surrogates, U+FFFD).
ADVERSARIAL_RESPONSES: tuple[str, ...] = (
    "",
    "   \n\t ",
    "}{)(][ ```python\n```` <answer></answer> \\boxed{",
    "a" * 200_000,
    "\x00\x01\x02 nul and control bytes \x7f",
    "caf\udce9 lone surrogate \ud800 and \ufffd replacement",
    "```python\nprint(1)\n",
)

_AnyEnv = RLRFEnv | Wrapper


def _name(env: _AnyEnv) -> str:
    return getattr(env, "env_id", type(env).__name__)


def check_spaces(env: _AnyEnv) -> None:
    """The observation space must be a :class:`ChatSpace` and the action space hold text."""
    if not isinstance(env.unwrapped, RLRFEnv):
        raise EnvCheckError(
            f"{_name(env)}: check_env needs an rlrf.RLRFEnv, got {type(env.unwrapped).__name__}"
        )
    if not isinstance(env.observation_space, ChatSpace):
        raise EnvCheckError(
            f"{_name(env)}: observation_space must be rlrf.ChatSpace, got "
            f"{env.observation_space!r}; do not override it"
        )
    if not env.action_space.contains("a response"):
        raise EnvCheckError(
            f"{_name(env)}: action_space {env.action_space!r} rejects text; responses are str"
        )


def check_task_ids(env: _AnyEnv) -> None:
    """Every split lists unique string ids, and ``"train"`` is not empty."""
    for split in env.splits:
        ids = env.task_ids(split)
        if not all(isinstance(i, str) for i in ids):
            raise EnvCheckError(
                f"{_name(env)}: task_ids({split!r}) must return strings; got "
                f"{sorted({type(i).__name__ for i in ids})}"
            )
        if len(set(ids)) != len(ids):
            raise EnvCheckError(f"{_name(env)}: task_ids({split!r}) has duplicate ids")
    if "train" not in env.splits or not env.task_ids("train"):
        raise EnvCheckError(f"{_name(env)}: the 'train' split must exist and hold tasks")


def check_reset_determinism(env: _AnyEnv, seed: int = 123) -> None:
    """``reset(seed=s)`` twice gives the same task and prompt, and the prompt is valid."""
    first, info1 = env.reset(seed=seed)
    second, info2 = env.reset(seed=seed)
    if info1.get("task_id") != info2.get("task_id") or first != second:
        raise EnvCheckError(
            f"{_name(env)}: reset(seed={seed}) twice gave different tasks or prompts; "
            "prompt(task_id) must be deterministic (seed any randomness from the task id)"
        )
    if not env.observation_space.contains(first):
        raise EnvCheckError(
            f"{_name(env)}: prompt(task_id) must return a non-empty list of "
            f"{{'role', 'content'}} messages, got {first!r:.200}"
        )


def check_task_option(env: _AnyEnv) -> None:
    """``reset(options={"task_id": t})`` starts task ``t`` of every split."""
    for split in env.splits:
        ids = env.task_ids(split)
        if not ids:
            continue
        wanted = ids[-1]
        _, info = env.reset(options={"task_id": wanted})
        if info.get("task_id") != wanted:
            raise EnvCheckError(
                f"{_name(env)}: reset(options={{'task_id': {wanted!r}}}) started task "
                f"{info.get('task_id')!r}"
            )


def check_outcome(env: _AnyEnv, outcome: Any, where: str) -> None:
    """An outcome is typed, its reward finite (or None), its feedback within the cap."""
    if not isinstance(outcome, Outcome):
        raise EnvCheckError(
            f"{_name(env)}: {where} returned {type(outcome).__name__}, not rlrf.Outcome"
        )
    r = outcome.reward
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float))):
        raise EnvCheckError(
            f"{_name(env)}: {where} returned a reward of type {type(r).__name__}; use float"
        )
    if r is not None and not math.isfinite(r):
        raise EnvCheckError(
            f"{_name(env)}: {where} returned reward {r}; rewards must be finite "
            "(use None for a missing reward)"
        )
    try:
        items = outcome.feedback_items
    except TypeError as e:
        raise EnvCheckError(f"{_name(env)}: {where} returned untyped feedback: {e}") from e
    cap = env.feedback_max_chars
    for f in items:
        if not isinstance(f, Feedback):
            raise EnvCheckError(f"{_name(env)}: {where} returned feedback that is not Feedback")
        if len(f.text) > cap:
            raise EnvCheckError(
                f"{_name(env)}: {where} returned {f.kind.value} feedback of {len(f.text)} "
                f"characters, over the env's feedback_max_chars={cap}; cap it with "
                "rlrf.truncate_text"
            )


def check_responses_handled(env: _AnyEnv, responses: Sequence[str] = ADVERSARIAL_RESPONSES) -> None:
    """Grading empty, garbage, huge or oddly-encoded responses raises nothing."""
    task_id = env.task_ids("train")[0]
    history = env.prompt(task_id)
    for response in responses:
        shown = repr(response[:40]) + ("..." if len(response) > 40 else "")
        try:
            outcome = env.evaluate(task_id, response, history)
        except Exception as e:
            raise EnvCheckError(
                f"{_name(env)}: evaluate raised {type(e).__name__}: {e} on response {shown}; "
                "return an Outcome with reward 0.0 and FORMAT feedback instead"
            ) from e
        check_outcome(env, outcome, f"evaluate on response {shown}")
    outcomes = env.evaluate_many(task_id, list(responses[:3]))
    if len(outcomes) != 3:
        raise EnvCheckError(
            f"{_name(env)}: evaluate_many returned {len(outcomes)} outcomes for 3 responses"
        )
    for o in outcomes:
        check_outcome(env, o, "evaluate_many")


def check_gold_not_leaked(env: _AnyEnv, max_tasks: int = 20) -> None:
    """Where the env has gold answers, they must not appear in the prompt."""
    for split in env.splits:
        for task_id in list(env.task_ids(split))[:max_tasks]:
            gold = env.gold_answer(task_id)
            if not gold or len(gold.strip()) < 2:
                continue
            text = "\n".join(m["content"] for m in env.prompt(task_id))
            if re.search(rf"(?<!\w){re.escape(gold.strip())}(?!\w)", text):
                raise EnvCheckError(
                    f"{_name(env)}: the gold answer of task {task_id!r} appears in its prompt; "
                    "the policy must not see the answer before responding"
                )


def _check_episode(env: _AnyEnv) -> None:
    env.reset(seed=0)
    for _ in range(env.max_turns + 1):
        _, reward, terminated, truncated, info = env.step("I do not know.")
        if not isinstance(info.get("feedback"), tuple):
            raise EnvCheckError(f"{_name(env)}: step's info['feedback'] must be a tuple")
        if not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise EnvCheckError(f"{_name(env)}: step returned reward {reward!r}")
        if terminated or truncated:
            return
    raise EnvCheckError(
        f"{_name(env)}: the episode did not end within max_turns={env.max_turns}; "
        "return Outcome(done=True) on the last turn"
    )


def check_env(env: _AnyEnv, *, skip: Sequence[str] = ()) -> None:
    """Run every check on ``env``; raise :class:`~rlrf.errors.EnvCheckError` on the first failure.

    Args:
        env: The environment (possibly wrapped).
        skip: Names of checks to skip, e.g. ``("check_gold_not_leaked",)``.

    """
    checks = [
        check_spaces,
        check_task_ids,
        check_reset_determinism,
        check_task_option,
        check_responses_handled,
        check_gold_not_leaked,
        _check_episode,
    ]
    for check in checks:
        if check.__name__ not in skip:
            check(env)
