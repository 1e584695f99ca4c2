"""SDPO's teacher contexts: who the teacher is told about, and how its prompt is tokenized.

Step 1 and 2 of the method (see :mod:`algorithms.sdpo`). For rollout i of prompt x, the
solution is another rollout j ≠ i of the group with r_j ≥ ``success_threshold``, hidden
reasoning stripped, chosen by ``SDPOConfig.demonstration`` (:func:`select_solution`: the
first in group order by default); the feedback is the environment's feedback on y_i
(:func:`rlrf.render_feedback`). :func:`build_teacher_messages` appends a "Correct solution:"
section, a feedback section and the instruction to the last user message;
:func:`teacher_contexts_for_group` does it for a group (None: no teacher signal).
:func:`encode_teacher_prompt` applies the chat template and caps the prompt in TOKENS from
the left of its body (:func:`truncate_teacher_prompt`), never losing the instruction or the
assistant header.

The feedback section's header says whether the attempt it is about succeeded:
"Feedback from your unsuccessful earlier attempt:" (:data:`FEEDBACK_HEADER`, the usual case)
or, for an attempt that ended a successful episode (reward ≥ ``success_threshold`` or the
env's ``success``) and still got feedback, "Feedback from your earlier attempt:"
(:data:`SUCCESS_FEEDBACK_HEADER`).

Multi-turn episodes (rlrf's extension; the paper defines single-turn SDPO only). Episode i
has assistant turns y_{i,1..T_i}; c_{i,k} is the chat turn k was sampled from (the prompt,
then every earlier response and the messages the env appended after it:
:func:`rlrf.rollout.turn_prompts`). EVERY turn is distilled, each with its own
teacher context (:func:`turn_teacher_contexts`):

- the chat: c_{i,k}, so the teacher sees exactly what the student saw before y_{i,k}
  (the env's earlier observations included) and never y_{i,k} itself;
- feedback: the feedback the env returned after turn k (``trajectory.turns[k].feedback``),
  not the whole episode's; a turn the env said nothing about has none;
- solution: the FINAL response of a successful sibling episode j ≠ i (the same sibling
  for every turn of episode i). "Corresponding answer" means the final one, not the
  sibling's turn k: the return certifies only the answer that ended the sibling's episode
  successfully, while its earlier turns were attempts the env had not accepted (in a
  guessing game, wrong guesses); showing one of them under "Correct solution:" would
  teach a wrong answer. For envs whose right action depends on the turn (a tool call
  before an answer), the final answer is still what the teacher is told to reach;
- the sections go into the last message of c_{i,k} when it is a user message (the env's
  observation after turn k − 1, or the prompt for the first turn); when c_{i,k} ends with
  another role (a tool result), a new user message holds them. The feedback header is the
  "unsuccessful" one for every turn but the last of a successful episode.

Turn k with neither a solution nor feedback gets no distillation loss. A single-turn
episode gets exactly the single-turn context (the first turn's chat is the prompt).
Only the last user message's body is truncatable, so a long earlier chat cannot be cut: a
teacher prompt whose chat alone exceeds ``teacher_max_prompt_tokens`` is a ConfigError.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from algorithms.sdpo.config import SDPOConfig
from rlrf.errors import ConfigError
from rlrf.feedback import render_feedback
from rlrf.rollout import turn_prompts

if TYPE_CHECKING:
    from rlrf.env import Message
    from rlrf.trajectory import Group

__all__ = [
    "FEEDBACK_HEADER",
    "SOLUTION_HEADER",
    "SUCCESS_FEEDBACK_HEADER",
    "TEACHER_INSTRUCTION",
    "build_teacher_messages",
    "encode_teacher_prompt",
    "remove_reasoning",
    "select_solution",
    "teacher_contexts_for_group",
    "truncate_teacher_prompt",
    "turn_teacher_contexts",
]


# --- 1. teacher context -----------------------------------------------------------------

SOLUTION_HEADER = "Correct solution:"
FEEDBACK_HEADER = "Feedback from your unsuccessful earlier attempt:"
SUCCESS_FEEDBACK_HEADER = "Feedback from your earlier attempt:"
TEACHER_INSTRUCTION = "Correctly solve the original question."
_INSTRUCTION_SUFFIX = "\n\n" + TEACHER_INSTRUCTION

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def remove_reasoning(text: str) -> str:
    r"""Strip hidden-reasoning blocks (``<think>…</think>``) and surrounding whitespace.

    A response holding only a closing ``</think>`` (chat templates that open the block in the
    prompt) loses everything up to and including it.

    Example:
        >>> remove_reasoning("<think>hmm</think>\nprint(1)")
        'print(1)'

    """
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text and "<think>" not in text:
        text = text.rpartition("</think>")[2]
    return text.strip()


def select_solution(
    responses: Sequence[str],
    rewards: Sequence[float | None],
    i: int,
    threshold: float = 1.0,
    *,
    strip: bool = True,
    choice: str = "first",
    rng: random.Random | None = None,
) -> str | None:
    """Return another successful response of the group as rollout ``i``'s solution.

    A response j ≠ i is a candidate when ``rewards[j] >= threshold`` (None never counts).
    With ``strip``, reasoning blocks are removed (:func:`remove_reasoning`) and a response
    that is then empty is not a candidate. ``choice`` picks among the candidates
    (``SDPOConfig.demonstration``): ``"first"`` in group order, ``"shortest"`` (fewest
    characters; ties go to the first), ``"random"`` (uniform, drawn from ``rng``; pass a
    seeded one for reproducibility). Returns None when no sibling qualifies.

    Example:
        >>> select_solution(["a", "b", "c"], [1.0, 0.0, 1.0], 0)
        'c'
        >>> select_solution(["x", "long one", "short"], [0.0, 1.0, 1.0], 0, choice="shortest")
        'short'

    """
    if len(responses) != len(rewards):
        raise ValueError(f"{len(responses)} responses but {len(rewards)} rewards")
    candidates = []
    for j, (response, reward) in enumerate(zip(responses, rewards, strict=True)):
        if j == i or reward is None or reward < threshold:
            continue
        text = remove_reasoning(response) if strip else response
        if text.strip():
            candidates.append(text)
    if not candidates:
        return None
    if choice == "first":
        return candidates[0]
    if choice == "shortest":
        return min(candidates, key=len)  # min keeps the first of equal lengths
    if choice == "random":
        return (rng or random.Random(0)).choice(candidates)
    raise ValueError(f"choice={choice!r} is not one of 'first', 'random', 'shortest'")


def build_teacher_messages(
    prompt: Sequence[Message],
    *,
    solution: str | None,
    feedback: str | None,
    config: SDPOConfig | None = None,
    successful: bool = False,
) -> list[Message] | None:
    """Build the teacher's chat: the prompt with solution/feedback sections and the instruction.

    The config's switches are applied here: ``use_solution``, ``use_feedback`` and
    ``feedback_only_without_solution`` decide which of the given texts are shown; empty texts
    count as absent. The sections and the instruction are appended to the LAST user message::

        {original content}

        Correct solution:

        {solution}

        Feedback from your unsuccessful earlier attempt:

        {feedback}

        Correctly solve the original question.

    ``successful`` says the attempt the feedback is about succeeded: its header is then
    :data:`SUCCESS_FEEDBACK_HEADER` ("Feedback from your earlier attempt:"). When the chat
    continues after its last user message (a multi-turn chat ending with an assistant
    turn or a tool result), the sections go into a new user message at the end instead, so
    the teacher reads them after everything the student saw.

    Returns new dicts (the prompt is not modified), or None when neither a solution nor
    feedback is shown: that rollout gets no distillation loss.
    """
    cfg = config or SDPOConfig()
    sol = solution if cfg.use_solution and solution and solution.strip() else None
    fb = feedback if cfg.use_feedback and feedback and feedback.strip() else None
    if sol is not None and cfg.feedback_only_without_solution:
        fb = None
    if sol is None and fb is None:
        return None
    messages = [dict(m) for m in prompt]
    users = [k for k, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise ValueError(
            f"the prompt has no user message (roles: {[m['role'] for m in messages]}); the "
            "teacher sections are appended to the last user message"
        )
    sections = []
    if sol is not None:
        sections.append(f"{SOLUTION_HEADER}\n\n{sol}")
    if fb is not None:
        header = SUCCESS_FEEDBACK_HEADER if successful else FEEDBACK_HEADER
        sections.append(f"{header}\n\n{fb}")
    body = "\n\n".join(sections)
    if any(m["role"] == "assistant" for m in messages[users[-1] :]):
        messages.append({"role": "user", "content": body + _INSTRUCTION_SUFFIX})
    else:
        content = messages[users[-1]]["content"] + "\n\n" + body
        messages[users[-1]]["content"] = content + _INSTRUCTION_SUFFIX
    return messages  # type: ignore[return-value]


def turn_teacher_contexts(
    group: Group, config: SDPOConfig | None = None
) -> list[list[list[Message] | None]]:
    """Build the teacher chat of every turn of every rollout of one group (module docstring).

    Returns, per trajectory, one entry per turn: the teacher chat of that turn, or None (no
    teacher signal: no solution and no feedback after that turn, or the rollout's reward is
    missing). The solution is a successful sibling's FINAL response, chosen once per
    rollout by ``config.demonstration``; turn k's feedback is the env's feedback on turn k
    (:func:`rlrf.render_feedback`, capped at ``feedback_max_chars``); turn k's chat is the
    chat it was sampled from (:func:`rlrf.rollout.turn_prompts`).
    """
    cfg = config or SDPOConfig()
    responses = [t.response for t in group.trajectories]
    rewards = group.rewards
    out: list[list[list[Message] | None]] = []
    for i, traj in enumerate(group.trajectories):
        reward = rewards[i]
        if reward is None:
            out.append([None] * len(traj.turns))
            continue
        solution = None
        if cfg.use_solution:
            rng = None
            if cfg.demonstration == "random":
                # a fixed function of the run's sampling seed, the step, the task and i:
                # the same draw after a resume, a different one at every step
                rng = random.Random(f"{traj.seed}:{traj.policy_version}:{group.task_id}:{i}")
            solution = select_solution(
                responses,
                rewards,
                i,
                cfg.success_threshold,
                strip=cfg.strip_reasoning,
                choice=cfg.demonstration,
                rng=rng,
            )
        succeeded = traj.success or reward >= cfg.success_threshold
        last = len(traj.turns) - 1
        turns: list[list[Message] | None] = []
        for k, (turn, chat) in enumerate(zip(traj.turns, turn_prompts(traj), strict=True)):
            feedback = None
            if cfg.use_feedback:
                feedback = render_feedback(turn.feedback, max_chars=cfg.feedback_max_chars)
            turns.append(
                build_teacher_messages(
                    chat,
                    solution=solution,
                    feedback=feedback,
                    config=cfg,
                    successful=succeeded and k == last,
                )
            )
        out.append(turns)
    return out


def teacher_contexts_for_group(
    group: Group, config: SDPOConfig | None = None
) -> list[list[Message] | None]:
    """Build the teacher chat of every rollout's FIRST turn (None: no teacher signal).

    For single-turn episodes this is the whole of SDPO's step 1: the prompt, a successful
    sibling's response as solution, and the feedback on the rollout's response. Multi-turn
    episodes have one context per turn (:func:`turn_teacher_contexts`, which the trainer
    uses); this returns the first of them.
    """
    return [turns[0] if turns else None for turns in turn_teacher_contexts(group, config)]


# --- 2. teacher prompt tokens -----------------------------------------------------------


def truncate_teacher_prompt(
    token_ids: Sequence[int], body_span: tuple[int, int], max_tokens: int
) -> list[int]:
    """Cap a teacher prompt at ``max_tokens`` by dropping tokens from the LEFT of its body.

    Args:
        token_ids: the whole templated teacher prompt, ending with the assistant header.
        body_span: ``(start, end)`` token indices of the truncatable body: the last user
            message's text before the instruction (:func:`encode_teacher_prompt` finds it).
            Tokens before ``start`` (BOS, system prompt, template header) and from ``end`` on
            (instruction, end of turn, assistant header) are always kept.
        max_tokens: the cap (``SDPOConfig.teacher_max_prompt_tokens``).

    Raises:
        ConfigError: when even an empty body would not fit.

    Example:
        >>> truncate_teacher_prompt([0, 1, 2, 3, 4, 5, 9], (1, 6), 4)
        [0, 4, 5, 9]

    """
    ids = list(token_ids)
    start, end = body_span
    if not 0 <= start <= end <= len(ids):
        raise ValueError(f"body_span {body_span} is not within the {len(ids)} prompt tokens")
    excess = len(ids) - max_tokens
    if excess <= 0:
        return ids
    if excess > end - start:
        raise ConfigError(
            f"the teacher prompt has {len(ids) - (end - start)} tokens outside its truncatable "
            f"body (template, system prompt, earlier turns of a multi-turn chat, instruction), "
            f"more than teacher_max_prompt_tokens={max_tokens}; raise teacher_max_prompt_tokens"
        )
    return ids[:start] + ids[start + excess :]


def _body_char_span(text: str, messages: Sequence[Message]) -> tuple[int, int]:
    user = [m for m in messages if m["role"] == "user"][-1]["content"]
    if not user.endswith(_INSTRUCTION_SUFFIX):
        raise ValueError(
            "the last user message does not end with the teacher instruction; build the "
            "messages with build_teacher_messages()"
        )
    body = user[: -len(_INSTRUCTION_SUFFIX)]
    for candidate in (body, body.strip()):
        start = text.rfind(candidate + _INSTRUCTION_SUFFIX)
        if start >= 0:
            return start, start + len(candidate)
    raise ValueError(
        "could not find the teacher prompt's last user message in the chat template's output; "
        "the template rewrites message content, so the body to truncate cannot be located"
    )


def encode_teacher_prompt(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    max_tokens: int,
    **chat_template_kwargs: Any,
) -> list[int]:
    """Apply the chat template to a teacher chat, tokenize it, and cap it at ``max_tokens``.

    The text is rendered with ``add_generation_prompt=True`` (pass ``enable_thinking=False``
    and friends through ``chat_template_kwargs``) and tokenized without adding special tokens,
    as ``apply_chat_template(tokenize=True)`` does. The body (the last user message up to the
    instruction) is located in the rendered text and mapped to tokens through the fast
    tokenizer's offsets; tokens straddling its edges are kept. A slow tokenizer is encoded in
    three pieces (head, body, tail) instead. Then :func:`truncate_teacher_prompt` applies.
    """
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True, **chat_template_kwargs
    )
    c0, c1 = _body_char_span(text, messages)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        start = sum(1 for s, _ in offsets if s < c0)
        end = start
        while end < len(offsets) and offsets[end][1] <= c1:
            end += 1
    else:
        pieces = [text[:c0], text[c0:c1], text[c1:]]
        head, body, tail = (tokenizer.encode(p, add_special_tokens=False) for p in pieces)
        ids, start, end = head + body + tail, len(head), len(head) + len(body)
    return truncate_teacher_prompt(ids, (start, end), max_tokens)
