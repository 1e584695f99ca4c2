"""End to end: SDPO raises a tiny model's mean reward on a toy env within a few steps.

A random-weight model cannot read feedback, so its "teacher" has nothing to transfer. The
test therefore first pretrains (seeded, ~10 s on one CPU thread) the character-level tiny model
on a synthetic task in exactly the token format the trainer produces:

- teacher prompts (:func:`algorithms.sdpo.build_teacher_messages` through the chat template,
  as :func:`algorithms.sdpo.encode_teacher_prompt` encodes them) whose feedback and/or
  solution names a symbol, followed by that symbol repeated — also after a random response
  prefix, since the teacher scores the student's own (wrong) response;
- the plain student prompt followed by random strings, so without the hint the student is
  unsure (about 1/4 of the characters right).

K = 128 is above the vocabulary (100 symbols), so the top-K covers all of it. Then the real trainer
runs SDPO (rich feedback, reverse KL) on :class:`HintEnv`, where the student can only learn
each task's symbol from the teacher, and the mean training reward must rise well above its
start and above a control run with the same seeds and learning switched off (lr ~ 0).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from algorithms import sdpo
from algorithms.engine.trainer import train
from algorithms.sampling.hf import encode_chat
from algorithms.testing import tiny_model, tiny_tokenizer
from rlrf.env import Message, Outcome, RLRFEnv
from rlrf.feedback import Feedback, FeedbackKind

SYMBOLS = "XYZQ"
"""Answer symbols; none occurs in the prompts, the section headers or the instruction, so
the only one in a teacher prompt is the hint."""

LENGTH = 3
"""Characters of a pretrained response (then EOS)."""

HINT_REPEATS = 32
"""The feedback repeats the symbol: a repeated token is far easier for a 2-layer model to
learn to copy in a few hundred steps than a single occurrence."""

ID_REPEATS = 8
"""The prompt repeats the task id, for the same reason: the student tells tasks apart sooner."""

PRETRAIN_STEPS = 150
STEPS = 30
SEED = 0


class HintEnv(RLRFEnv):
    """Toy env: task ``tk`` wants the symbol ``SYMBOLS[k]``, which its prompt does not reveal.

    The reward is the share of response characters equal to the symbol; the feedback on an
    imperfect response is the symbol repeated, so only a teacher that sees it knows the answer.
    """

    def task_ids(self, split: str = "train") -> list[str]:
        """One task per symbol (every split)."""
        return [f"t{k}" for k in range(len(SYMBOLS))]

    def prompt(self, task_id: str) -> list[Message]:
        """Ask for the task's answer without revealing it."""
        return [{"role": "user", "content": f"Task {' '.join([task_id] * ID_REPEATS)}: write."}]

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Share of characters equal to the task's symbol; feedback repeats the symbol."""
        symbol = SYMBOLS[int(task_id[1:]) % len(SYMBOLS)]
        reward = sum(c == symbol for c in response) / max(1, len(response))
        if reward >= 1.0:
            return Outcome(reward=1.0)
        hint = Feedback(FeedbackKind.WRONG_ANSWER, symbol * HINT_REPEATS)
        return Outcome(reward=reward, feedback=hint)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # A model this small gains nothing from intra-op threads, and on a busy 2-core machine
    # two threads contend and run many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _encode_teacher(tok, task_id: str, solution: str | None, feedback: str | None) -> list[int]:
    """A teacher prompt's token ids, built and encoded as the trainer does."""
    messages = sdpo.build_teacher_messages(
        HintEnv().prompt(task_id), solution=solution, feedback=feedback
    )
    assert messages is not None
    return sdpo.encode_teacher_prompt(tok, messages, max_tokens=2048, enable_thinking=False)


def _teacher_prompt(tok, task_id: str, symbol: str, rng: random.Random) -> list[int]:
    """A random teacher prompt naming ``symbol``: feedback, a sibling's solution, or both."""
    r = rng.random()
    solution = symbol * LENGTH if r < 0.3 else None
    feedback = symbol * HINT_REPEATS if r >= 0.1 else None
    return _encode_teacher(tok, task_id, solution, feedback)


def _pretrain_batch(tok, rng: random.Random, size: int) -> tuple[torch.Tensor, ...]:
    """Input ids, attention mask and per-position labels (-100: no loss) of one batch."""
    eos = tok.eos_token_id
    rows = []
    for _ in range(size):
        task_id = f"t{rng.randrange(1000)}"
        guess = "".join(rng.choice(SYMBOLS) for _ in range(LENGTH))
        if rng.random() < 0.7:
            symbol = rng.choice(SYMBOLS)
            prompt = _teacher_prompt(tok, task_id, symbol, rng)
            # the teacher scores the student's own response: it must name the symbol after a
            # wrong prefix too
            shown = guess if rng.random() < 0.5 else symbol * LENGTH
            answer = symbol * LENGTH
        else:
            prompt = encode_chat(tok, HintEnv().prompt(task_id))
            shown = answer = guess
        response = tok.encode(shown, add_special_tokens=False)
        # position t predicts the answer's token t; the last one predicts EOS
        labels = [*tok.encode(answer, add_special_tokens=False), eos]
        rows.append((prompt + response, [-100] * (len(prompt) - 1) + labels))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((size, width), eos)
    mask = torch.zeros((size, width), dtype=torch.long)
    labels = torch.full((size, width), -100)
    for k, (ids, lab) in enumerate(rows):
        input_ids[k, : len(ids)] = torch.tensor(ids)
        mask[k, : len(ids)] = 1
        labels[k, : len(lab)] = torch.tensor(lab)
    return input_ids, mask, labels


def _pretrained_model(tok, seed: int):
    model = tiny_model(seed, vocab_size=len(tok), hidden=32, layers=2).train()
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(PRETRAIN_STEPS):
        input_ids, mask, labels = _pretrain_batch(tok, rng, 16)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def _target_prob(model, tok, prompt: list[int], symbol: str, shown: str) -> float:
    """Mean probability of ``symbol`` at each response position after ``shown``."""
    ids = torch.tensor([prompt + tok.encode(shown, add_special_tokens=False)])
    probs = model(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + LENGTH].softmax(-1)
    return float(probs[:, tok.convert_tokens_to_ids(symbol)].mean())


def _rewards(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["rollout/reward_mean"] for r in rows if "rollout/reward_mean" in r]


def _run(model, tok, out: Path, lr: float) -> list[float]:
    config = sdpo.SDPOConfig.rich_feedback(top_k=128)
    train(
        HintEnv(),
        model,
        config,
        tokenizer=tok,
        steps=STEPS,
        questions_per_step=4,
        rollouts_per_question=8,
        max_new_tokens=LENGTH + 1,
        lr=lr,
        seed=SEED,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        output_dir=str(out),
    )
    return _rewards(out)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


@pytest.mark.slow
def test_sdpo_raises_mean_reward_of_a_feedback_reading_tiny_model(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    model = _pretrained_model(tok, SEED)

    # Preconditions, so that a failure here points at the pretraining, not at SDPO: the
    # teacher reads the hint even after a wrong prefix, the student alone is unsure.
    rng = random.Random(1)
    teacher_p, student_p = [], []
    for task_id in HintEnv().task_ids():
        symbol = SYMBOLS[int(task_id[1:])]
        wrong = "".join(rng.choice(SYMBOLS.replace(symbol, "")) for _ in range(LENGTH))
        prompt = _encode_teacher(tok, task_id, None, symbol * HINT_REPEATS)
        teacher_p.append(_target_prob(model, tok, prompt, symbol, wrong))
        student = encode_chat(tok, HintEnv().prompt(task_id))
        student_p.append(_target_prob(model, tok, student, symbol, wrong))
    assert _mean(teacher_p) > 0.8, f"pretraining did not teach reading the hint: {teacher_p}"
    assert _mean(student_p) < 0.4, f"the student already knows the answers: {student_p}"

    sdpo_rewards = _run(copy.deepcopy(model), tok, tmp_path / "sdpo", lr=3e-3)
    control = _run(copy.deepcopy(model), tok, tmp_path / "control", lr=1e-12)

    assert len(sdpo_rewards) == len(control) == STEPS
    # same seeds: the first step samples the same rollouts before any update
    assert sdpo_rewards[0] == control[0]
    start = _mean(sdpo_rewards[:2])
    end, control_end = _mean(sdpo_rewards[-5:]), _mean(control[-5:])
    report = f"SDPO {[round(r, 2) for r in sdpo_rewards]}, control {[round(r, 2) for r in control]}"
    assert start < 0.4, report
    assert end > start + 0.3, report
    assert end > control_end + 0.3, report
    assert control_end < start + 0.15, report
