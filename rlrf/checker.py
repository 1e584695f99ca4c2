"""``check_env``: catch the common ways an RLRF environment breaks its contract.

Each ``check_*`` function tests one property and raises :class:`~rlrf.errors.EnvCheckError`
with a message that names the env, the method (and turn) at fault, what was wrong, and how to
fix it. :func:`check_env` runs them all, for both ways of writing an env:

* every env: the spaces, the style (:func:`rlrf.env.env_style`), determinism under a seed
  (``reset(seed=s)`` twice gives the same prompt, and the same responses then get the same
  rewards, feedback and observations), whole episodes through ``reset``/``step`` (what they
  return is checked by :func:`rlrf.env.validate_reset` / :func:`rlrf.env.validate_step`; the
  observation continues the chat; the episode ends within ``max_turns``), adversarial
  responses handled without raising, and no gold answer in a prompt or in feedback;
* task-style envs also: their task ids, the ``task_id`` option, ``evaluate`` and
  ``evaluate_many`` on adversarial responses.

>>> from rlrf import make
>>> check_env(make("rlrf/Arithmetic-v0"))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rlrf.env import (
    ChatSpace,
    Message,
    RLRFEnv,
    StepResult,
    appended_messages,
    env_style,
    validate_outcome,
    validate_reset,
    validate_step,
)
from rlrf.errors import EnvCheckError, EnvError
from rlrf.feedback import Feedback, FeedbackKind
from rlrf.wrappers import Wrapper

__all__ = [
    "ADVERSARIAL_RESPONSES",
    "check_env",
    "check_episode",
    "check_gold_not_leaked",
    "check_outcome",
    "check_reset_determinism",
    "check_responses_handled",
    "check_spaces",
    "check_step_determinism",
    "check_style",
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

#: The responses :func:`check_step_determinism` and :func:`check_episode` play.
_SCRIPT = ("I do not know.", "42", "")

_AnyEnv = RLRFEnv | Wrapper


def _name(env: _AnyEnv) -> str:
    return getattr(env, "env_id", type(env).__name__)


@contextmanager
def _as_check_error() -> Iterator[None]:
    """Turn the shared validators' EnvError into the checker's EnvCheckError."""
    try:
        yield
    except EnvCheckError:
        raise
    except EnvError as e:
        raise EnvCheckError(str(e)) from e


def _call(env: _AnyEnv, what: str, fn: Callable[[], Any], fix: str) -> Any:
    """Call an env method; anything it raises becomes an EnvCheckError naming ``what``."""
    try:
        return fn()
    except EnvCheckError:
        raise
    except Exception as e:
        raise EnvCheckError(f"{_name(env)}: {what} raised {type(e).__name__}: {e}; {fix}") from e


def _reset(env: _AnyEnv, seed: int | None, options: dict[str, Any] | None = None) -> Any:
    shown = f"reset(seed={seed}" + (f", options={options}" if options else "") + ")"
    result = _call(
        env,
        shown,
        lambda: env.reset(seed=seed, options=options),
        "reset must start an episode for any seed",
    )
    with _as_check_error():
        return validate_reset(result, f"{_name(env)}: {shown}")


def _step(env: _AnyEnv, response: str, turn: int) -> StepResult:
    shown = repr(response[:40]) + ("..." if len(response) > 40 else "")
    where = f"step (turn {turn}) on response {shown}"
    result = _call(
        env,
        where,
        lambda: env.step(response),
        "step must not raise: return reward 0.0 and FORMAT feedback for a response it cannot use",
    )
    with _as_check_error():
        return validate_step(result, f"{_name(env)}: {where}")


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


def check_style(env: _AnyEnv) -> None:
    """The env implements the task protocol or overrides ``reset`` and ``step``."""
    with _as_check_error():
        env_style(env)


def check_task_ids(env: _AnyEnv) -> None:
    """Every split lists unique string ids, and ``"train"`` is not empty (task style)."""
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
    """``reset(seed=s)`` twice gives the same task and prompt, and the prompt is a chat."""
    first, info1 = _reset(env, seed)
    second, info2 = _reset(env, seed)
    if info1.get("task_id") != info2.get("task_id") or first != second:
        fix = (
            "prompt(task_id) must be deterministic (seed any randomness from the task id)"
            if env_style(env) == "task"
            else "reset must pick the task from the seed alone (draw from self.np_random "
            "after super().reset(seed=seed))"
        )
        raise EnvCheckError(
            f"{_name(env)}: reset(seed={seed}) twice gave different tasks or prompts; {fix}"
        )


def _episode(env: _AnyEnv, seed: int, responses: Sequence[str]) -> list[tuple[Any, ...]]:
    """Play ``responses`` (the last repeated) from ``reset(seed)``; return what each step gave."""
    chat, _ = _reset(env, seed)
    out = []
    for turn in range(1, env.max_turns + 1):
        response = responses[min(turn, len(responses)) - 1]
        r = _step(env, response, turn)
        out.append((r.reward, r.reward_missing, r.terminated, r.truncated, r.feedback))
        added = appended_messages(chat, response, r.observation)
        if added is None and not (r.terminated or r.truncated):
            raise EnvCheckError(
                f"{_name(env)}: step (turn {turn}) returned an observation that does not "
                "continue the chat; return the previous chat, then the response as an "
                "{'role': 'assistant'} message, then the env's own messages"
            )
        out[-1] += (added,)
        if r.terminated or r.truncated:
            break
        chat = r.observation
    return out


def check_step_determinism(env: _AnyEnv, seed: int = 7) -> None:
    """The same seed and the same responses give the same rewards, feedback and chats."""
    first = _episode(env, seed, _SCRIPT)
    second = _episode(env, seed, _SCRIPT)
    for turn, (a, b) in enumerate(zip(first, second, strict=False), start=1):
        if a != b:
            raise EnvCheckError(
                f"{_name(env)}: step (turn {turn}) after reset(seed={seed}) gave different "
                "rewards, feedback or observations for the same responses; derive all "
                "randomness from the seed (self.np_random)"
            )
    if len(first) != len(second):
        raise EnvCheckError(
            f"{_name(env)}: two episodes from reset(seed={seed}) with the same responses "
            f"lasted {len(first)} and {len(second)} turns; derive all randomness from the seed"
        )


def check_episode(env: _AnyEnv, seed: int = 0) -> None:
    """A whole episode through reset/step is well-typed and ends within ``max_turns``."""
    chat, _ = _reset(env, seed)
    for turn in range(1, env.max_turns + 2):
        r = _step(env, "I do not know.", turn)
        if r.terminated or r.truncated:
            return
        if appended_messages(chat, "I do not know.", r.observation) is None:
            raise EnvCheckError(
                f"{_name(env)}: step (turn {turn}) returned an observation that does not "
                "continue the chat; return the previous chat, then the response as an "
                "{'role': 'assistant'} message, then the env's own messages"
            )
        chat = r.observation
    raise EnvCheckError(
        f"{_name(env)}: the episode did not end within max_turns={env.max_turns}: step "
        f"(turn {env.max_turns}) must return terminated or truncated"
        + (" (return Outcome(done=True) on the last turn)" if env_style(env) == "task" else "")
    )


def check_task_option(env: _AnyEnv) -> None:
    """``reset(options={"task_id": t})`` starts task ``t`` of every split (task style)."""
    for split in env.splits:
        ids = env.task_ids(split)
        if not ids:
            continue
        wanted = ids[-1]
        _, info = _reset(env, None, {"task_id": wanted})
        if info.get("task_id") != wanted:
            raise EnvCheckError(
                f"{_name(env)}: reset(options={{'task_id': {wanted!r}}}) started task "
                f"{info.get('task_id')!r}"
            )


def check_outcome(env: _AnyEnv, outcome: Any, where: str) -> None:
    """An outcome is typed, its reward finite (or None), its feedback within the cap."""
    with _as_check_error():
        items = validate_outcome(outcome, f"{_name(env)}: {where}")
    _check_feedback_cap(env, items, where)


def _check_feedback_cap(env: _AnyEnv, items: Sequence[Feedback], where: str) -> None:
    cap = env.feedback_max_chars
    for f in items:
        if len(f.text) > cap:
            raise EnvCheckError(
                f"{_name(env)}: {where} returned {f.kind.value} feedback of {len(f.text)} "
                f"characters, over the env's feedback_max_chars={cap}; cap it with "
                "rlrf.truncate_text"
            )


def check_responses_handled(env: _AnyEnv, responses: Sequence[str] = ADVERSARIAL_RESPONSES) -> None:
    """Grading empty, garbage, huge or oddly-encoded responses raises nothing.

    Task-style envs are asked through ``evaluate`` and ``evaluate_many``; every env through
    ``step`` (each response as the first turn of an episode).
    """
    if env_style(env) == "task":
        task_id = env.task_ids("train")[0]
        history = env.prompt(task_id)
        for response in responses:
            shown = repr(response[:40]) + ("..." if len(response) > 40 else "")
            try:
                outcome = env.evaluate(task_id, response, history)
            except Exception as e:
                raise EnvCheckError(
                    f"{_name(env)}: evaluate raised {type(e).__name__}: {e} on response "
                    f"{shown}; return an Outcome with reward 0.0 and FORMAT feedback instead"
                ) from e
            check_outcome(env, outcome, f"evaluate on response {shown}")
        outcomes = env.evaluate_many(task_id, list(responses[:3]))
        if len(outcomes) != 3:
            raise EnvCheckError(
                f"{_name(env)}: evaluate_many returned {len(outcomes)} outcomes for 3 responses"
            )
        for o in outcomes:
            check_outcome(env, o, "evaluate_many")
    for response in responses:
        _reset(env, 0)
        result = _step(env, response, 1)
        shown = repr(response[:40]) + ("..." if len(response) > 40 else "")
        _check_feedback_cap(env, result.feedback, f"step (turn 1) on response {shown}")


def _leaks(gold: str | None, text: str) -> bool:
    if not gold or len(gold.strip()) < 2:
        return False
    return re.search(rf"(?<!\w){re.escape(gold.strip())}(?!\w)", text) is not None


def _text(messages: Sequence[Message]) -> str:
    return "\n".join(m["content"] for m in messages)


def _check_feedback_leak(
    env: _AnyEnv, task_id: str, gold: str | None, response: str, items: Sequence[Feedback]
) -> None:
    if _leaks(gold, response):
        return  # the response itself holds the answer; the feedback may quote it
    for f in items:
        if f.kind is not FeedbackKind.DEMONSTRATION and _leaks(gold, f.text):
            raise EnvCheckError(
                f"{_name(env)}: the gold answer of task {task_id!r} appears in the "
                f"{f.kind.value} feedback on the wrong response {response[:40]!r}; feedback "
                "must say what is wrong without giving the answer away (use "
                "FeedbackKind.DEMONSTRATION if showing a solution is intended)"
            )


def check_gold_not_leaked(env: _AnyEnv, max_tasks: int = 20, max_graded: int = 3) -> None:
    """Where the env has gold answers, they appear neither in a prompt nor in feedback.

    Prompts of up to ``max_tasks`` tasks per split are read; up to ``max_graded`` episodes
    are played with wrong responses and their feedback read, turn after turn.
    """
    wrong = ("I do not know.", "0")
    if env_style(env) == "task":
        for split in env.splits:
            for task_id in list(env.task_ids(split))[:max_tasks]:
                if _leaks(env.gold_answer(task_id), _text(env.prompt(task_id))):
                    raise EnvCheckError(
                        f"{_name(env)}: the gold answer of task {task_id!r} appears in its "
                        "prompt; the policy must not see the answer before responding"
                    )
    for seed in range(max_graded):
        chat, info = _reset(env, seed)
        task_id = info.get("task_id")
        if task_id is None:
            return  # a Gymnasium-style env without task ids has no gold answer to ask for
        gold = env.gold_answer(str(task_id))
        if _leaks(gold, _text(chat)):
            raise EnvCheckError(
                f"{_name(env)}: the gold answer of task {task_id!r} appears in its prompt; "
                "the policy must not see the answer before responding"
            )
        for turn in range(1, env.max_turns + 1):
            response = wrong[(turn - 1) % len(wrong)]
            r = _step(env, response, turn)
            _check_feedback_leak(env, str(task_id), gold, response, r.feedback)
            added = appended_messages(chat, response, r.observation) or ()
            if not _leaks(gold, response) and _leaks(gold, _text(added)):
                raise EnvCheckError(
                    f"{_name(env)}: the gold answer of task {task_id!r} appears in the "
                    f"messages step (turn {turn}) added to the chat; the policy must not see "
                    "the answer"
                )
            if r.terminated or r.truncated:
                break
            chat = r.observation


def check_env(env: _AnyEnv, *, skip: Sequence[str] = ()) -> None:
    """Run every check on ``env``; raise :class:`~rlrf.errors.EnvCheckError` on the first failure.

    Args:
        env: The environment (possibly wrapped), written in either style.
        skip: Names of checks to skip, e.g. ``("check_gold_not_leaked",)``.

    """
    checks: list[Callable[[_AnyEnv], None]] = [check_spaces, check_style]
    for check in checks:
        if check.__name__ not in skip:
            check(env)
    checks = [check_reset_determinism]
    if env_style(env) == "task":
        checks = [check_task_ids, check_reset_determinism, check_task_option]
    checks += [check_responses_handled, check_gold_not_leaked, check_episode]
    checks += [check_step_determinism]
    for check in checks:
        if check.__name__ not in skip:
            check(env)
