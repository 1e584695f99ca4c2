"""Will SDPO help here? ``rlrf diagnose --env ID --model M`` measures it before training.

SDPO distills the model toward itself re-asked with a teacher context (a successful
sibling's answer and/or the env's feedback on its own attempt). That can only teach what the
self-teacher knows better than the student, so this command measures that gap on a sample
of train tasks, through the same functions training uses:

1. Student rollouts: ``--tasks`` train tasks (the trainer's seeded task sampler), G =
   ``--group-size`` rollouts each, played by :func:`rlrf.rollout.collect_groups`.
2. Teacher contexts: :func:`algorithms.sdpo.teacher_contexts_for_group` with the SDPO
   options of the preset (``--algo sdpo``: feedback and a successful sibling; ``--algo
   sdpo-srf``: sibling only), ``--set KEY=VALUE`` overriding any of them (e.g.
   ``use_feedback=false``, ``feedback_only_without_solution=true``, ``alpha=0.5``).

It then measures:

(a) ``teacher_signal_frac``: the share of graded rollouts that get a teacher context (the
    others get no distillation loss), split by what the context holds.
(b) The teacher's answers: for every rollout with a context, ``--teacher-samples`` fresh
    answers are sampled from its teacher prompt (tokenized by
    :func:`algorithms.sdpo.encode_teacher_prompt`, as the trainer does, for a local model)
    and graded by the env on the same task (multi-turn envs are played whole; a
    Gymnasium-style env's rollout is replayed, see :class:`_Replayed`). The student's
    comparison is the success rate (and mean reward) of that task's G rollouts from the plain
    prompt, weighted the same way (one entry per rollout with a context), so both answer the
    same questions at the same temperature. ``delta_success`` = teacher − student, with a
    percentile bootstrap confidence interval over tasks (tasks resampled with replacement,
    ``--bootstrap`` resamples, seeded by ``--seed``; rollouts of one task are not
    independent). The same for the mean reward.
(c) Divergence (local models only; an endpoint gives no logits): on the student's own first
    response of every rollout with a context, the per-token divergence between the teacher
    (the model given the teacher prompt) and the student (given the plain prompt), exactly
    the loss's: top-K of the student's logits plus a tail bucket, α of the config
    (:func:`algorithms.sdpo.distillation_loss`, logits divided by the sampling temperature
    as the trainer does); its token mean, the share of tokens whose top-1 token differs, and
    the mean log q(y_t) − log p(y_t) of the sampled tokens on failed and on successful
    rollouts (a teacher that helps puts less mass than the student on failed answers). At
    step 0 every teacher mode (EMA, frozen, trust region, live) is the model itself.
(d) The context control: a teacher can beat the student for reasons unrelated to what its
    context says (a longer prompt, the instruction, a format cue). So every rollout with a
    context is also re-asked with a WRONG context of the same kind: its own prompt, the same
    sections under the same headers (:func:`algorithms.sdpo.build_teacher_messages`), their
    text from other tasks of the sample (the solution SDPO would show on another task, the
    feedback on another task's rollout; :func:`_wrong_context`). Its answers are sampled in
    the same call as the real teacher's and graded the same way on the rollout's own task,
    and (c) is measured for it in the same forward passes. ``context_control.delta_success``
    = right-context teacher − wrong-context teacher on the same rollouts, with the same
    bootstrap interval; a rollout whose kind of context no other task could lend (a
    solution when no other sampled task had a success) has no control (``unmatched``).

The decision rule (constants below), checked in this order:

- ``no_signal``: ``teacher_signal_frac`` < :data:`MIN_SIGNAL_FRAC` (0.25): most rollouts
  get no distillation loss, so SDPO has little to learn from whatever the teacher knows.
- ``helps``: the lower end of the CI of ``delta_success`` > 0 AND ``delta_success`` >=
  :data:`MIN_GAIN` (0.10, ten percentage points): the self-teacher answers clearly better;
  and, when the control (d) was measured, right minus wrong context passes the same test
  (the lift needs the context to be right). When the teacher is clearly better but not so:

  - ``context_independent``: the upper end of the CI of right minus wrong context <
    :data:`MIN_GAIN`: a wrong context lifts the teacher about as much, so the lift comes
    from the teacher prompt's form, not from what the context says (SDPO would distill that
    form; a prompt change or GRPO may give it as well);
  - ``inconclusive``: otherwise (the control's CI spans the threshold).

- ``not_better``: the upper end of the CI of ``delta_success`` < :data:`MIN_GAIN`: the
  self-teacher is, with this confidence, not clearly better than the student; expect GRPO
  to win; consider λ-mixing (``grpo_mix``, the ``sdpo`` preset's 0.9) or a larger model.
- ``inconclusive``: otherwise (the CI spans the threshold): sample more tasks or rollouts.

Why a minimum gain and not just "above 0": on one-digit addition the embedded model answers
20/64 right when shown the gold answer against 14/64 without (``benchmarks/base_rates.py``),
a gain of about 9 points, and pure SDPO did not learn there (held-out 0.266 -> 0.234) while
GRPO mixed in did. Divergence (c) is reported but not in the rule: a large divergence says
the teacher differs, not that it is right.

Output (``--out``, default ``diagnoses/<env>--<model>``): ``diagnose.json`` (the settings,
every number above, the verdict and its rule, per-task results) and ``rollouts.jsonl``
(the student groups, each rollout's teacher context, wrong context and ``teacher_key`` in
its info, then the teacher's answers as groups whose task id is that key: ``"<task
index>:<rollout>"``, then the wrong-context answers under ``"<task index>:<rollout>:wrong"``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rlrf
from algorithms.config import sections
from algorithms.evaluation import EvalConfig, _write_atomic, build_backend
from algorithms.registry import presets, resolve_config
from algorithms.sdpo.config import SDPOConfig
from algorithms.sdpo.contexts import (
    FEEDBACK_HEADER,
    SOLUTION_HEADER,
    SUCCESS_FEEDBACK_HEADER,
    TEACHER_INSTRUCTION,
    build_teacher_messages,
    encode_teacher_prompt,
    select_solution,
    teacher_contexts_for_group,
)
from rlrf.env import RLRFEnv, appended_messages, env_style, validate_reset, validate_step
from rlrf.errors import ConfigError, EnvError
from rlrf.feedback import render_feedback
from rlrf.rollout import RolloutErrorWarning, collect_groups, task_sampler
from rlrf.sampling import SamplingBackend, SamplingParams
from rlrf.trajectory import Group, TrajectoryWriter

if TYPE_CHECKING:
    from rlrf.env import Message, Outcome
    from rlrf.sampling import Sample
    from rlrf.trajectory import Trajectory
    from rlrf.wrappers import Wrapper

    # a Gymnasium-style rollout to replay: seed, earlier actions, the chat it saw, teacher chat
    _ReplayKey = tuple[int | None, tuple[str, ...], list[Message], list[Message]]

__all__ = [
    "MIN_GAIN",
    "MIN_SIGNAL_FRAC",
    "DiagnoseConfig",
    "DiagnoseResult",
    "bootstrap_ci",
    "diagnose",
    "format_summary",
    "sdpo_algorithms",
    "verdict",
    "wilson_interval",
]


MIN_SIGNAL_FRAC = 0.25
"""Below this share of rollouts with a teacher context, SDPO has too little to distill."""

MIN_GAIN = 0.10
"""The teacher-minus-student success difference (absolute) that counts as clearly better."""

OUTPUT = "diagnose.json"
ROLLOUTS = "rollouts.jsonl"


def sdpo_algorithms() -> dict[str, str]:
    """The installed algorithms diagnose applies to (a ``SDPOConfig`` section) -> that section."""
    out = {}
    for name, preset in presets().items():
        for section, cls in sections(preset.config_class).items():
            if issubclass(cls, SDPOConfig):
                out[name] = section
                break
    return out


@dataclass(frozen=True)
class DiagnoseConfig:
    """What to diagnose and how.

    Attributes:
        env: Registered env id, e.g. ``rlrf/Arithmetic-v0``.
        model: ``smollm2-135m``, a local model folder, a run folder or its ``final/``; with
            ``base_url``, the model name the endpoint serves (then (c) is not measured).
        base_url: OpenAI-compatible endpoint (see :class:`algorithms.evaluation.EvalConfig`).
        api_key_env: Environment variable holding the endpoint's API key.
        algo: The SDPO preset whose teacher-context and loss options are used.
        sdpo: SDPO option overrides by field name (``{"use_feedback": False}``).
        tasks: Train tasks sampled (the trainer's seeded sampler).
        group_size: G, student rollouts per task (siblings for the solution context).
        teacher_samples: Fresh answers sampled from each teacher prompt.
        temperature: Sampling temperature (student and teacher; the trainer's is 1).
        top_p: Nucleus sampling mass.
        max_tokens: Token budget per response.
        seed: Task sampling, sampling and bootstrap seed.
        bootstrap: Bootstrap resamples for the confidence intervals.
        confidence: Two-sided confidence level of the intervals.
        batch_tasks: Tasks per step (a sampling call, the teacher answers, the scoring).
        score_batch: Rows per forward pass when computing the divergence.
        env_workers: Threads grading envs.
        concurrency: Endpoint requests in flight.
        env_kwargs: Keyword arguments for ``rlrf.make``.
        device: Device of a local model (default: ``cuda`` when available, else ``cpu``).
        out: Output folder (default ``diagnoses/<env>--<model>``).

    """

    env: str
    model: str = "smollm2-135m"
    base_url: str | None = None
    api_key_env: str | None = None
    algo: str = "sdpo"
    sdpo: dict[str, Any] = field(default_factory=dict)
    tasks: int = 16
    group_size: int = 8
    teacher_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    bootstrap: int = 2000
    confidence: float = 0.95
    batch_tasks: int = 4
    score_batch: int = 8
    env_workers: int = 1
    concurrency: int = 8
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        for name in ("tasks", "group_size", "teacher_samples", "max_tokens", "bootstrap",
                     "batch_tasks", "score_batch", "env_workers", "concurrency"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"--confidence must be in (0, 1), got {self.confidence}")
        algos = sdpo_algorithms()
        if self.algo not in algos:
            raise ConfigError(
                f"--algo {self.algo!r} is not an installed algorithm with SDPO's options (a "
                f"SDPOConfig section); use one of {sorted(algos)}"
            )
        SamplingParams(self.temperature, self.top_p, self.max_tokens)  # range checks
        self.sdpo_config()  # unknown or invalid overrides fail here

    def sdpo_config(self) -> SDPOConfig:
        """The preset's SDPO options with :attr:`sdpo` applied, as training would resolve them."""
        names = {f.name for f in dataclasses.fields(SDPOConfig)}
        unknown = sorted(set(self.sdpo) - names)
        if unknown:
            raise ConfigError(
                f"--set {unknown[0]}: not an SDPO option; the options are {sorted(names)}"
            )
        config = resolve_config(algorithm=self.algo, overrides=self.sdpo, where="--set")
        return getattr(config, sdpo_algorithms()[self.algo])

    def eval_config(self) -> EvalConfig:
        """The :class:`EvalConfig` whose backend and output naming this diagnosis reuses."""
        return EvalConfig(
            env=self.env, model=self.model, base_url=self.base_url, api_key_env=self.api_key_env,
            split="train", k=self.group_size, temperature=self.temperature, top_p=self.top_p,
            max_tokens=self.max_tokens, seed=self.seed, concurrency=self.concurrency,
            batch_tasks=self.batch_tasks, env_workers=self.env_workers,
            env_kwargs=self.env_kwargs, device=self.device,
        )  # fmt: skip

    @property
    def output_dir(self) -> Path:
        """``out``, or ``diagnoses/<env>--<model>`` (named as ``rlrf eval`` names its folder)."""
        if self.out:
            return Path(self.out).expanduser()
        return Path("diagnoses") / self.eval_config().output_dir.name


@dataclass
class DiagnoseResult:
    """What :func:`diagnose` returns.

    Attributes:
        report: Everything written to ``diagnose.json``.
        verdict: ``helps``, ``context_independent``, ``not_better``, ``no_signal`` or
            ``inconclusive``.
        message: The verdict in words, with the numbers behind it.
        out: The output folder.

    """

    report: dict[str, Any]
    verdict: str
    message: str
    out: Path


# ---- statistics -----------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n`` is 0).

    >>> [round(x, 3) for x in wilson_interval(14, 64)]
    [0.135, 0.334]
    """
    if n == 0:
        return 0.0, 1.0
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(
    clusters: Sequence[Sequence[float]],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of values grouped in clusters (tasks).

    Clusters are resampled with replacement and the mean is taken over all values of the
    resample (the statistic's own weighting). None when there are no values.

    >>> bootstrap_ci([[1.0, 1.0], [1.0]])
    (1.0, 1.0)
    """
    import numpy as np

    clusters = [list(c) for c in clusters if len(c)]
    if not clusters:
        return None
    sums = np.array([sum(c) for c in clusters], dtype=np.float64)
    counts = np.array([len(c) for c in clusters], dtype=np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(clusters), size=(resamples, len(clusters)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def verdict(
    signal_frac: float,
    delta: float | None,
    ci: tuple[float, float] | None,
    *,
    context_delta: float | None = None,
    context_ci: tuple[float, float] | None = None,
    min_signal: float = MIN_SIGNAL_FRAC,
    min_gain: float = MIN_GAIN,
) -> str:
    """Apply the module's decision rule: the verdict, one of five.

    ``no_signal``, ``helps``, ``context_independent``, ``not_better`` or ``inconclusive``.
    ``delta`` and ``ci``: teacher minus student success and its interval; ``context_delta``
    and ``context_ci``: the right-context teacher minus the wrong-context one on the same
    rollouts (the control; None when it was not measured, which leaves the rule as it was).

    >>> verdict(0.9, 0.6, (0.4, 0.8)), verdict(0.9, 0.05, (-0.05, 0.08))
    ('helps', 'not_better')
    >>> verdict(0.1, 0.6, (0.4, 0.8)), verdict(0.9, 0.1, (-0.05, 0.3))
    ('no_signal', 'inconclusive')
    >>> verdict(0.9, 0.6, (0.4, 0.8), context_delta=0.5, context_ci=(0.3, 0.7))
    'helps'
    >>> verdict(0.9, 0.6, (0.4, 0.8), context_delta=0.0, context_ci=(-0.05, 0.05))
    'context_independent'
    >>> verdict(0.9, 0.6, (0.4, 0.8), context_delta=0.1, context_ci=(-0.1, 0.3))
    'inconclusive'
    """
    if signal_frac < min_signal:
        return "no_signal"
    if delta is None or ci is None:
        return "inconclusive"
    if ci[0] > 0 and delta >= min_gain:
        if context_delta is None or context_ci is None:
            return "helps"
        if context_ci[1] < min_gain:  # a wrong context does (almost) as well
            return "context_independent"
        if context_ci[0] > 0 and context_delta >= min_gain:
            return "helps"
        return "inconclusive"
    if ci[1] < min_gain:
        return "not_better"
    return "inconclusive"


# ---- the teacher's answers ------------------------------------------------------------------


class _ReAsked(RLRFEnv):
    """The env's tasks re-asked with teacher prompts: key ``k`` is (task id, teacher chat).

    Grading goes to the real env (its wrappers included) on the real task, so teacher
    answers are scored exactly as the student's are; later turns of a multi-turn env are
    played through its ``evaluate`` with the chat so far.
    """

    def __init__(self, env: RLRFEnv | Wrapper, asks: dict[str, tuple[str, list[Message]]]) -> None:
        super().__init__()
        self.env, self.asks = env, asks
        self.max_turns = int(getattr(env, "max_turns", 1) or 1)

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        """As the real env."""
        return bool(getattr(self.env, "thread_safe", True))

    def task_ids(self, split: str = "train") -> list[str]:
        """The keys of the teacher prompts."""
        return list(self.asks)

    def prompt(self, task_id: str) -> list[Message]:
        """The teacher prompt of key ``task_id``."""
        return [dict(m) for m in self.asks[task_id][1]]  # type: ignore[misc]

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Grade on the real task."""
        return self.env.evaluate(self.asks[task_id][0], response, history)

    def evaluate_many(self, task_id: str, responses: Sequence[str]) -> list[Outcome]:
        """Grade first-turn answers on the real task (the env's concurrent hook)."""
        return list(self.env.evaluate_many(self.asks[task_id][0], responses))


_REPLAY_MISMATCH = "replay mismatch"
_WRONG = ":wrong"
"""The suffix of a teacher key whose prompt holds the control's wrong context."""


class _Replayed(RLRFEnv):
    """A Gymnasium-style env's rollout re-asked with a teacher prompt, by replaying it.

    Key ``k`` is (reset seed, the earlier turns' actions, the chat the rollout saw at the
    re-asked turn, the teacher chat). ``reset`` builds a fresh twin of the real env, resets
    it with the seed, steps the earlier actions, and checks that the env's chat is the one
    the rollout saw (the env is deterministic given the seed and the actions: the contract
    ``rlrf check`` tests); it then returns the teacher chat. ``step`` steps the real env and
    continues the teacher chat with the messages the env appended, so the teacher's answers
    are graded by the env itself, on the same task, turn after turn.
    """

    def __init__(self, env: RLRFEnv | Wrapper, replays: dict[str, _ReplayKey]) -> None:
        super().__init__()
        self.env, self.replays = env, replays
        self.max_turns = int(getattr(env, "max_turns", 1) or 1)
        self.inner: Any = None

    @property
    def thread_safe(self) -> bool:  # type: ignore[override]
        """As the real env."""
        return bool(getattr(self.env, "thread_safe", True))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Replay the rollout up to the re-asked turn; return the teacher chat."""
        super().reset(seed=seed)
        key = str((options or {})["task_id"])
        task_seed, actions, expected, teacher = self.replays[key]
        self.close()
        self.inner = self.env.spawn()  # type: ignore[union-attr]
        chat, _ = validate_reset(
            self.inner.reset(seed=task_seed, options={"split": "train"}), "replay reset"
        )
        for turn, action in enumerate(actions, start=1):
            chat = validate_step(self.inner.step(action), f"replay step (turn {turn})").observation
        if chat != list(expected):
            raise EnvError(
                f"{_REPLAY_MISMATCH}: reset(seed={task_seed}) and the rollout's {len(actions)} "
                "earlier actions gave another chat than the rollout saw, so the env is not "
                "deterministic given the seed and the actions; this rollout's teacher answers "
                "are not measured (draw randomness from self.np_random after "
                "super().reset(seed=seed))"
            )
        self.real_chat, self.chat = chat, [dict(m) for m in teacher]
        return list(self.chat), {"task_id": key}  # type: ignore[arg-type]

    def step(self, action: str) -> tuple[list[Message], Any, bool, bool, dict[str, Any]]:
        """Step the real env; continue the teacher chat with what it appended."""
        obs, reward, terminated, truncated, info = self.inner.step(action)
        added = appended_messages(self.real_chat, action, obs) if isinstance(obs, list) else None
        if added is None and not (terminated or truncated):
            return obs, reward, terminated, truncated, info  # the loop names the broken chat
        self.real_chat = obs
        self.chat = [*self.chat, {"role": "assistant", "content": action}, *(added or ())]
        return list(self.chat), reward, terminated, truncated, info  # type: ignore[arg-type]

    def close(self) -> None:
        """Close the replayed env."""
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.close()


class _TeacherTokens:
    """A local policy that tokenizes teacher chats as the trainer does (left-capped).

    Chats whose last user message ends with the teacher instruction go through
    :func:`encode_teacher_prompt` (``teacher_max_prompt_tokens``, thinking disabled); later
    turns of a multi-turn episode through the policy's own chat encoding.
    """

    def __init__(self, policy: Any, config: SDPOConfig) -> None:
        self.policy, self.config = policy, config

    def encode(self, messages: Sequence[Message]) -> list[int]:
        last = messages[-1] if messages else None
        if last and last["role"] == "user" and last["content"].endswith(TEACHER_INSTRUCTION):
            return _teacher_ids(self.policy, messages, self.config)
        return list(self.policy.encode(messages))

    def sample(
        self, prompts: Sequence[Sequence[Message]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        return self.policy.sample_ids([self.encode(p) for p in prompts], n, params)


def _is_local(backend: Any) -> bool:
    return hasattr(backend, "sample_ids") and hasattr(backend, "model")


def _template_kwargs(policy: Any) -> dict[str, Any]:
    from algorithms.sampling.hf import CHATML_TEMPLATE

    template = getattr(policy, "chat_template", None)
    if template is None:
        return {}
    return {"chat_template": CHATML_TEMPLATE if template == "chatml" else template}


def _teacher_ids(policy: Any, messages: Sequence[Message], config: SDPOConfig) -> list[int]:
    return encode_teacher_prompt(
        policy.tokenizer, messages, max_tokens=config.teacher_max_prompt_tokens,
        enable_thinking=False, **_template_kwargs(policy),
    )  # fmt: skip


# ---- (c) divergence -------------------------------------------------------------------------


def _divergences(
    policy: Any, rows: list[tuple[list[int], list[int], list[int] | None, list[int]]],
    config: SDPOConfig, temperature: float, batch: int,
) -> list[tuple[dict[str, float], dict[str, float] | None]]:  # fmt: skip
    """Score rows with the loss's own functions, the student's forward shared by both teachers.

    A row is (student prompt, teacher prompt, wrong-context teacher prompt or None, response).
    Per row and teacher: tokens, the divergence summed over them, top-1 disagreements, and
    the summed log q(y_t) − log p(y_t) of the sampled tokens.
    """
    import torch

    from algorithms.scoring import lm_head_logits, response_hidden_states
    from algorithms.sdpo.loss import distillation_loss

    model = policy.model
    pad = int(policy.tokenizer.pad_token_id or 0)
    scale = temperature if temperature > 0 else 1.0
    k = min(config.top_k, model.config.vocab_size)
    out: list[tuple[dict[str, float], dict[str, float] | None]] = []
    was_training = model.training
    model.eval()

    def score(s_logits: Any, hidden: Any, mask: Any, response: list[int]) -> dict[str, float]:
        n = len(response)
        t_logits = lm_head_logits(model, hidden).float() / scale
        ids = torch.tensor([response], device=s_logits.device)
        _, stats = distillation_loss(
            s_logits, t_logits, mask, None, ids, top_k=k, alpha=config.alpha,
            is_clip=config.is_clip,
        )  # fmt: skip
        differ = s_logits.argmax(-1) != t_logits.argmax(-1)
        return {
            "tokens": float(n),
            "divergence_sum": float(stats["divergence"]) * n,
            "top1_disagree": float(differ.sum()),
            "logprob_gap_sum": float(stats["logprob_gap"]) * n,
        }

    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                responses = [r for *_, r in chunk]
                hs, mask = response_hidden_states(model, [r[0] for r in chunk], responses, pad=pad)
                ht, _ = response_hidden_states(model, [r[1] for r in chunk], responses, pad=pad)
                wrong = {i: j for j, i in enumerate(i for i, r in enumerate(chunk) if r[2])}
                hw = None
                if wrong:
                    hw, _ = response_hidden_states(
                        model, [chunk[i][2] for i in wrong], [responses[i] for i in wrong], pad=pad
                    )
                for i, response in enumerate(responses):
                    n = len(response)
                    s_logits = lm_head_logits(model, hs[i : i + 1, :n]).float() / scale
                    m = mask[i : i + 1, :n]
                    right = score(s_logits, ht[i : i + 1, :n], m, response)
                    j = wrong.get(i)
                    w = None if j is None or hw is None else score(
                        s_logits, hw[j : j + 1, :n], m, response
                    )  # fmt: skip
                    out.append((right, w))
    finally:
        model.train(was_training)
    return out


# ---- the diagnosis --------------------------------------------------------------------------


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _context_parts(prompt: Sequence[Message], context: Sequence[Message]) -> tuple[bool, ...]:
    """(a solution, feedback, the successful attempt's feedback header) in a teacher chat."""
    original = [m for m in prompt if m["role"] == "user"][-1]["content"]
    added = [m for m in context if m["role"] == "user"][-1]["content"][len(original) :]
    success = f"\n\n{SUCCESS_FEEDBACK_HEADER}\n\n" in added
    feedback = success or f"\n\n{FEEDBACK_HEADER}\n\n" in added
    return f"\n\n{SOLUTION_HEADER}\n\n" in added, feedback, success


def _context_kind(prompt: Sequence[Message], context: Sequence[Message]) -> str:
    """``solution``, ``feedback`` or ``both``: what the teacher chat adds to the prompt."""
    sol, fb, _ = _context_parts(prompt, context)
    return "both" if sol and fb else "solution" if sol else "feedback"


def _wrong_context(
    traj: Trajectory, ti: int, context: Sequence[Message], donors: Sequence[Group],
    cfg: SDPOConfig,
) -> tuple[list[Message], list[str]] | None:  # fmt: skip
    """Rollout ``ti``'s teacher chat with another task's context of the same kind (the control).

    The rollout's own prompt, the same sections (solution, feedback, both) under the same
    headers as its real context, built by :func:`build_teacher_messages`; only their text
    comes from other tasks: the solution SDPO would show on a donor task (a successful
    rollout of it, :func:`select_solution`) and the feedback the env gave a donor rollout's
    first turn (:func:`rlrf.render_feedback`). ``donors`` are other tasks' groups, nearest
    first; each section comes from the first that has one (its rollouts tried from ``ti``
    on). Returns the chat and the donor task ids, or None when no donor has a section the
    real context holds.
    """
    need_solution, need_feedback, successful = _context_parts(traj.prompt, context)
    solution = feedback = None
    used: list[str] = []
    if need_solution:
        for d in donors:
            solution = select_solution(
                [t.response for t in d.trajectories], d.rewards, -1, cfg.success_threshold,
                strip=cfg.strip_reasoning, choice=cfg.demonstration,
                rng=random.Random(f"wrong:{d.task_id}:{ti}"),  # demonstration="random"
            )  # fmt: skip
            if solution is not None:
                used.append(d.task_id)
                break
        else:
            return None
    if need_feedback:
        for d in donors:
            n, rewards = len(d.trajectories), d.rewards
            for j in ((ti + k) % n for k in range(n)):
                t = d.trajectories[j]
                if rewards[j] is None or not t.turns:
                    continue
                feedback = render_feedback(t.turns[0].feedback, max_chars=cfg.feedback_max_chars)
                if feedback.strip():
                    break
            else:
                continue
            used.append(d.task_id)
            break
        else:
            return None
    wrong = build_teacher_messages(
        traj.prompt, solution=solution, feedback=feedback, config=cfg, successful=successful
    )
    return (wrong, used) if wrong is not None else None


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def diagnose(
    config: DiagnoseConfig,
    *,
    env: RLRFEnv | Wrapper | None = None,
    backend: SamplingBackend | None = None,
    progress: bool = True,
) -> DiagnoseResult:
    """Run the diagnosis ``config`` describes and write ``diagnose.json`` (see the module).

    Args:
        config: What to diagnose.
        env: An env instance (default ``rlrf.make(config.env, **config.env_kwargs)``).
        backend: A sampling backend (default built from ``config`` as ``rlrf eval`` builds
            it); an :class:`algorithms.sampling.hf.HFPolicy` also gives the divergence (c).
        progress: Show a progress bar (tqdm, on stderr).

    Raises:
        RLRFError: a bad env id, model, endpoint or setting; the message says which.

    """
    t0 = time.perf_counter()
    cfg = config.sdpo_config()
    env = env if env is not None else rlrf.make(config.env, **config.env_kwargs)
    tasks = task_sampler(env, seed=config.seed).next(config.tasks)
    backend = backend if backend is not None else build_backend(config.eval_config())
    local = _is_local(backend)
    # a task-style env's tasks are re-asked with another prompt; a Gymnasium-style env's
    # rollouts are replayed (seed, earlier actions) up to the re-asked turn
    task_style = env_style(env) == "task"
    replays: dict[str, _ReplayKey] = {}
    teacher_backend: Any = _TeacherTokens(backend, cfg) if local else backend

    from tqdm import tqdm

    per_task: list[dict[str, Any]] = []
    student_groups: list[Group] = []
    teacher_groups: list[Group] = []
    control_groups: list[Group] = []  # the teacher's answers with a wrong context
    rows_scored: list[tuple[dict[str, float], dict[str, float] | None]] = []
    score_success: list[bool] = []
    bar = tqdm(
        total=len(tasks), desc=f"diagnose {config.env}", unit="task", disable=not progress,
        dynamic_ncols=True,
    )  # fmt: skip
    try:
        for c, chunk in enumerate(_chunks(tasks, config.batch_tasks)):
            seed = (config.seed * 1_000_003 + c) % 2**31
            params = SamplingParams(config.temperature, config.top_p, config.max_tokens, seed=seed)
            groups, _ = collect_groups(
                env, backend, chunk, config.group_size, params, env_id=config.env,
                split="train", env_workers=config.env_workers,
            )  # fmt: skip
            asks: dict[str, tuple[str, list[Message]]] = {}
            owner: dict[str, tuple[dict[str, Any], str]] = {}  # key -> (task record, kind)
            wrong_from: dict[str, list[str]] = {}  # key -> the wrong context's donor tasks
            score_rows: list[tuple[list[int], list[int], list[int] | None, list[int]]] = []
            for gi, g in enumerate(groups):
                contexts = teacher_contexts_for_group(g, cfg)
                # the control's donors: this chunk's other tasks (next first), then earlier ones
                donors = [
                    d for d in [*groups[gi + 1 :], *groups[:gi], *reversed(student_groups)]
                    if d.task_id != g.task_id
                ]  # fmt: skip
                rewards = g.rewards
                graded = [i for i, r in enumerate(rewards) if r is not None]
                record: dict[str, Any] = {
                    "task_id": g.task_id,
                    "rollouts": len(g.trajectories),
                    "graded": len(graded),
                    "student_successes": sum(bool(g.trajectories[i].success) for i in graded),
                    "student_rewards": rewards,
                    "contexts": {"solution": 0, "feedback": 0, "both": 0},
                    "teacher": [],  # one entry per rollout with a context
                }
                for ti, (traj, ctx) in enumerate(zip(g.trajectories, contexts, strict=True)):
                    traj.info["teacher_context"], traj.info["wrong_context"] = ctx, None
                    if ctx is None:
                        continue
                    kind = _context_kind(traj.prompt, ctx)
                    record["contexts"][kind] += 1
                    key = f"{len(per_task)}:{ti}"  # this task's index in per_task, rollout
                    traj.info["teacher_key"] = key
                    asks[key] = (g.task_id, ctx)
                    if not task_style:  # the first turn: nothing to replay but the seed
                        replays[key] = (traj.seed, (), list(traj.prompt), ctx)
                    owner[key] = (record, kind)
                    wrong = _wrong_context(traj, ti, ctx, donors, cfg)
                    if wrong is not None:  # asked in the same sampling call as the real ones
                        traj.info["wrong_context"] = wrong[0]
                        asks[f"{key}{_WRONG}"] = (g.task_id, wrong[0])
                        if not task_style:
                            replays[f"{key}{_WRONG}"] = (traj.seed, (), list(traj.prompt), wrong[0])
                        wrong_from[key] = wrong[1]
                    response = traj.turns[0].response_token_ids if traj.turns else None
                    if local and response:
                        student_ids = list(backend.encode(traj.prompt))  # type: ignore[attr-defined]
                        teacher_ids = _teacher_ids(backend, ctx, cfg)
                        wrong_ids = _teacher_ids(backend, wrong[0], cfg) if wrong else None
                        score_rows.append((student_ids, teacher_ids, wrong_ids, list(response)))
                        score_success.append(bool(traj.success))
                per_task.append(record)
            if asks:
                t_params = dataclasses.replace(params, seed=(seed + 7_919) % 2**31)
                asked: Any = _ReAsked(env, asks)
                if not task_style:
                    asked = _Replayed(env, replays)
                with warnings.catch_warnings():  # replay mismatches are counted below
                    warnings.simplefilter("ignore", RolloutErrorWarning)
                    answered, _ = collect_groups(
                        asked, teacher_backend, list(asks), config.teacher_samples, t_params,
                        env_id=config.env, split="train", env_workers=config.env_workers,
                        env_factory=None if task_style else (lambda: _Replayed(env, replays)),
                    )  # fmt: skip
                entries: dict[str, dict[str, Any]] = {}
                for key, tg in zip(asks, answered, strict=True):
                    graded = {
                        "successes": sum(bool(t.success) for t in tg.trajectories),
                        "samples": len(tg.trajectories),
                        "rewards": tg.rewards,
                        "replay_mismatches": sum(
                            t.error is not None and _REPLAY_MISMATCH in t.error.message
                            for t in tg.trajectories
                        ),
                    }  # fmt: skip
                    if key.endswith(_WRONG):  # asked right after its rollout's real context
                        base = key.removesuffix(_WRONG)
                        entries[base]["wrong"] = {"from": wrong_from[base], **graded}
                        control_groups.append(tg)
                        continue
                    record, kind = owner[key]
                    entries[key] = {"rollout": key, "kind": kind, **graded, "wrong": None}
                    record["teacher"].append(entries[key])
                    teacher_groups.append(tg)
            if local and score_rows:
                rows_scored.extend(
                    _divergences(backend, score_rows, cfg, config.temperature, config.score_batch)
                )
            student_groups.extend(groups)
            bar.update(len(chunk))
    finally:
        bar.close()

    report = _report(config, cfg, per_task, rows_scored, score_success, task_style, local)
    report["elapsed_s"] = round(time.perf_counter() - t0, 3)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{ROLLOUTS}.tmp"
    with TrajectoryWriter(tmp) as writer:
        for g in [*student_groups, *teacher_groups, *control_groups]:
            writer.write(g)
    tmp.replace(out / ROLLOUTS)
    _write_atomic(out / OUTPUT, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return DiagnoseResult(report, report["verdict"], report["message"], out)


def _report(
    config: DiagnoseConfig, cfg: SDPOConfig, per_task: list[dict[str, Any]],
    scored: list[tuple[dict[str, float], dict[str, float] | None]], row_success: list[bool],
    task_style: bool, local: bool,
) -> dict[str, Any]:  # fmt: skip
    graded = sum(r["graded"] for r in per_task)
    kinds = {k: sum(r["contexts"][k] for r in per_task) for k in ("solution", "feedback", "both")}
    with_ctx = sum(kinds.values())
    signal = with_ctx / graded if graded else 0.0
    successes = sum(r["student_successes"] for r in per_task)

    # (b): per task, one (teacher, student) pair per rollout with a context
    succ_t, succ_s, succ_d, rew_t, rew_s, rew_d = ([] for _ in range(6))
    for r in per_task:
        ok = [x for x in r["student_rewards"] if x is not None]
        if not r["teacher"] or not ok:
            continue
        s_rate = r["student_successes"] / r["graded"]
        s_rew = sum(ok) / len(ok)
        ts, tr = [], []
        for t in r["teacher"]:
            got = [x for x in t["rewards"] if x is not None]
            if not got:  # a teacher answer the env could not grade: left out, not scored 0
                continue
            ts.append(t["successes"] / t["samples"])
            tr.append(sum(got) / len(got))
        succ_t.append(ts)
        succ_s.append([s_rate] * len(ts))
        succ_d.append([x - s_rate for x in ts])
        rew_t.append(tr)
        rew_s.append([s_rew] * len(tr))
        rew_d.append([x - s_rew for x in tr])

    def flat_mean(clusters: list[list[float]]) -> float | None:
        return _mean([x for c in clusters for x in c])

    def ci(clusters: list[list[float]]) -> list[float] | None:
        b = bootstrap_ci(
            clusters, resamples=config.bootstrap, confidence=config.confidence, seed=config.seed
        )
        return None if b is None else [round(b[0], 4), round(b[1], 4)]

    teacher_answers = sum(len(r["teacher"]) * config.teacher_samples for r in per_task)
    teacher_succ = sum(t["successes"] for r in per_task for t in r["teacher"])
    mismatches = sum(t.get("replay_mismatches", 0) for r in per_task for t in r["teacher"])
    delta = flat_mean(succ_d)
    delta_ci = ci(succ_d)
    answers: dict[str, Any] = {
        "measured": not (mismatches and mismatches == teacher_answers),
        "why_not": None if not (mismatches and mismatches == teacher_answers) else (
            "the env is not deterministic given the seed and the earlier actions: replaying "
            "the rollouts gave other chats than they saw, so no teacher answer could be graded "
            "on the rollout's own task"
        ),
        "how": "re-asked: the task's prompt replaced by the teacher prompt" if task_style else (
            "replayed: a fresh env reset with the rollout's seed (and its earlier actions "
            "stepped), checked to give the chat the rollout saw, then the teacher's answers "
            "stepped into it"
        ),
        "replay_mismatches": mismatches,
        "compared_rollouts": sum(len(c) for c in succ_d),
        "teacher_answers": teacher_answers,
        "teacher_success": flat_mean(succ_t),
        "teacher_success_ci": ci(succ_t),
        "teacher_success_wilson": list(
            wilson_interval(teacher_succ, teacher_answers, config.confidence)
        ),
        "student_success": flat_mean(succ_s),
        "student_success_ci": ci(succ_s),
        "delta_success": delta,
        "delta_success_ci": delta_ci,
        "teacher_reward": flat_mean(rew_t),
        "teacher_reward_ci": ci(rew_t),
        "student_reward": flat_mean(rew_s),
        "student_reward_ci": ci(rew_s),
        "delta_reward": flat_mean(rew_d),
        "delta_reward_ci": ci(rew_d),
    }  # fmt: skip

    divergence: dict[str, Any] = {
        "measured": local and bool(scored),
        "why_not": None if local else "an endpoint gives no logits; pass a local model",
        "alpha": cfg.alpha,
        "top_k": cfg.top_k,
        **_divergence_stats([r for r, _ in scored], row_success),
    }

    # the context control: the rollouts whose real and wrong-context answers were both graded
    w_succ, r_succ, s_succ, c_d, w_d, w_rew, c_rd = ([] for _ in range(7))
    wrong_succ = wrong_n = wrong_mismatches = wrong_asked = 0
    for r in per_task:
        ok = [x for x in r["student_rewards"] if x is not None]
        entries = [t for t in r["teacher"] if t.get("wrong")]
        wrong_asked += len(entries)
        wrong_mismatches += sum(t["wrong"]["replay_mismatches"] for t in entries)
        if not ok:
            continue
        s_rate = r["student_successes"] / r["graded"]
        ws, rs, d, wd, wr, rd = [], [], [], [], [], []
        for t in entries:
            w = t["wrong"]
            got = [x for x in t["rewards"] if x is not None]
            w_got = [x for x in w["rewards"] if x is not None]
            if not got or not w_got:
                continue
            right, wrong = t["successes"] / t["samples"], w["successes"] / w["samples"]
            wrong_succ, wrong_n = wrong_succ + w["successes"], wrong_n + w["samples"]
            ws.append(wrong)
            rs.append(right)
            d.append(right - wrong)
            wd.append(wrong - s_rate)
            wr.append(sum(w_got) / len(w_got))
            rd.append(sum(got) / len(got) - wr[-1])
        for clusters, values in zip(
            (w_succ, r_succ, s_succ, c_d, w_d, w_rew, c_rd),
            (ws, rs, [s_rate] * len(ws), d, wd, wr, rd), strict=True,
        ):  # fmt: skip
            clusters.append(values)
    compared = sum(len(c) for c in c_d)
    with_ctx_rollouts = sum(len(r["teacher"]) for r in per_task)
    why_not = None
    if not answers["measured"]:
        why_not = "the teacher's answers were not measured (see teacher_answers)"
    elif not wrong_asked:
        why_not = (
            "no rollout got a wrong context: no other sampled task had a solution or feedback "
            "of the kind the real contexts hold; raise --tasks"
        )
    elif not compared:
        why_not = "no wrong-context answer could be graded (see replay_mismatches)"
    c_delta, c_delta_ci = flat_mean(c_d), ci(c_d)
    control: dict[str, Any] = {
        "measured": compared > 0,
        "why_not": why_not,
        "how": (
            "the rollout's own prompt with a wrong context of the same kind (solution, "
            "feedback, both; same headers): another sampled task's solution and/or the "
            "feedback on another task's rollout, built by build_teacher_messages; answered "
            "and graded as the real teacher's, on the rollout's own task"
        ),
        "rollouts": wrong_asked,
        "unmatched": with_ctx_rollouts - wrong_asked,
        "replay_mismatches": wrong_mismatches,
        "compared_rollouts": compared,
        "teacher_answers": wrong_n,
        "wrong_success": flat_mean(w_succ),
        "wrong_success_ci": ci(w_succ),
        "wrong_success_wilson": list(wilson_interval(wrong_succ, wrong_n, config.confidence)),
        "right_success": flat_mean(r_succ),
        "right_success_ci": ci(r_succ),
        "student_success": flat_mean(s_succ),
        "delta_success": c_delta,
        "delta_success_ci": c_delta_ci,
        "wrong_minus_student": flat_mean(w_d),
        "wrong_minus_student_ci": ci(w_d),
        "wrong_reward": flat_mean(w_rew),
        "wrong_reward_ci": ci(w_rew),
        "delta_reward": flat_mean(c_rd),
        "delta_reward_ci": ci(c_rd),
        "divergence": {
            "measured": local and any(w is not None for _, w in scored),
            **_divergence_stats(
                [w for _, w in scored if w is not None],
                [s for (_, w), s in zip(scored, row_success, strict=True) if w is not None],
            ),
        },
    }

    v = verdict(
        signal, delta, None if delta_ci is None else (delta_ci[0], delta_ci[1]),
        context_delta=c_delta if control["measured"] else None,
        context_ci=None if c_delta_ci is None else (c_delta_ci[0], c_delta_ci[1]),
    )  # fmt: skip
    report: dict[str, Any] = {
        "env": config.env,
        "model": config.model,
        "base_url": config.base_url,
        "algo": config.algo,
        "sdpo": dataclasses.asdict(cfg),
        "tasks": len(per_task),
        "group_size": config.group_size,
        "teacher_samples": config.teacher_samples,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "seed": config.seed,
        "confidence": config.confidence,
        "student": {
            "rollouts": sum(r["rollouts"] for r in per_task),
            "graded": graded,
            "success": successes / graded if graded else None,
            "success_wilson": list(wilson_interval(successes, graded, config.confidence)),
            "tasks_with_success": sum(r["student_successes"] > 0 for r in per_task),
        },
        "teacher_signal": {"frac": signal, "rollouts": with_ctx, "graded": graded, **kinds},
        "teacher_answers": answers,
        "divergence": divergence,
        "context_control": control,
        "verdict": v,
        "rule": {
            "min_signal_frac": MIN_SIGNAL_FRAC,
            "min_gain": MIN_GAIN,
            "text": "no_signal if teacher_signal.frac < min_signal_frac; helps if the CI of "
            "delta_success is above 0 and delta_success >= min_gain, unless the context "
            "control says otherwise: context_independent if the CI of "
            "context_control.delta_success (right minus wrong context) has its upper end "
            "< min_gain, inconclusive if it is not also above 0 with "
            "context_control.delta_success >= min_gain; not_better if the CI's upper end "
            "< min_gain; else inconclusive",
        },
        "per_task": per_task,
    }
    report["message"] = _message(report)
    return report


def _divergence_stats(rows: list[dict[str, float]], success: list[bool]) -> dict[str, Any]:
    """(c)'s numbers over scored rows (:func:`_divergences`), per token."""
    tokens = sum(r["tokens"] for r in rows)

    def gap(ok: bool) -> float | None:
        picked = [r for r, s in zip(rows, success, strict=True) if s == ok]
        n = sum(r["tokens"] for r in picked)
        return sum(r["logprob_gap_sum"] for r in picked) / n if n else None

    return {
        "rollouts": len(rows),
        "tokens": int(tokens),
        "divergence_mean": sum(r["divergence_sum"] for r in rows) / tokens if tokens else None,
        "top1_disagreement": sum(r["top1_disagree"] for r in rows) / tokens if tokens else None,
        "logprob_gap_failed": gap(False),
        "logprob_gap_successful": gap(True),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _message(r: dict[str, Any]) -> str:
    """The verdict in plain words, with the numbers behind it."""
    sig, ans = r["teacher_signal"], r["teacher_answers"]
    ci = ans["delta_success_ci"]
    level = f"{100 * r['confidence']:.0f}%"
    numbers = (
        f"teacher {_pct(ans['teacher_success'])} vs student {_pct(ans['student_success'])} "
        f"success on the same questions, difference {_pct(ans['delta_success'])} "
        f"({level} CI {_pct(ci[0]) if ci else 'n/a'} to {_pct(ci[1]) if ci else 'n/a'}); "
        f"{_pct(sig['frac'])} of rollouts get a teacher signal"
    )
    ctl = r["context_control"]
    c_ci = ctl["delta_success_ci"]
    control = (
        f"with another task's context it answers {_pct(ctl['wrong_success'])} against "
        f"{_pct(ctl['right_success'])} with its own, right minus wrong "
        f"{_pct(ctl['delta_success'])} ({level} CI {_pct(c_ci[0]) if c_ci else 'n/a'} to "
        f"{_pct(c_ci[1]) if c_ci else 'n/a'}, {ctl['compared_rollouts']} rollouts)"
        if ctl["measured"]
        else f"the context control was not measured: {ctl['why_not']}"
    )
    v = r["verdict"]
    if v == "no_signal":
        return (
            f"only {_pct(sig['frac'])} of rollouts would get a teacher signal (no successful "
            "sibling and no feedback for the rest): SDPO has little to learn from; expect GRPO "
            "to do as well; raise --group-size, enable feedback, or use an easier setting"
        )
    if v == "helps":
        gain = f"{100 * ans['delta_success']:.0f} percentage points"
        why = ", and because its context is right" if ctl["measured"] else ""
        return (
            f"the self-teacher answers right {gain} more often{why}: SDPO should help "
            f"({numbers}; {control})"
        )
    if v == "context_independent":
        return (
            "the self-teacher beats the student, but does about as well with a wrong context "
            "(another task's solution or feedback): the lift comes from the teacher prompt's "
            "form (its length, the instruction, a format cue), not from what the context says; "
            "SDPO would distill that form, which a better prompt or GRPO may give as well "
            f"({numbers}; {control})"
        )
    if v == "not_better":
        return (
            "the self-teacher is not clearly better than the student here: expect GRPO to win; "
            f"consider λ-mixing (grpo_mix, the sdpo preset's 0.9) or a larger model ({numbers})"
        )
    if not ans["measured"]:
        return f"the teacher's answers were not measured ({ans['why_not']})"
    lifted = ci is not None and ci[0] > 0 and ans["delta_success"] >= r["rule"]["min_gain"]
    if ctl["measured"] and lifted:  # the control made it inconclusive
        return (
            "the self-teacher beats the student, but whether because its context is right is "
            "not clear at this sample size; raise --tasks or --group-size "
            f"({numbers}; {control})"
        )
    return (
        "the self-teacher may be better, but not clearly at this sample size; raise --tasks "
        f"or --group-size, or prefer λ-mixing (grpo_mix) meanwhile ({numbers})"
    )


def format_summary(r: dict[str, Any]) -> str:
    """The numbers and the verdict, as ``rlrf diagnose`` prints them."""
    st, sig, ans, div = r["student"], r["teacher_signal"], r["teacher_answers"], r["divergence"]

    def ci(x: list[float] | None) -> str:
        return "n/a" if x is None else f"[{x[0]:.3f}, {x[1]:.3f}]"

    def f(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [
        f"{r['env']} | {r['model']} | --algo {r['algo']}: {r['tasks']} train tasks x "
        f"G={r['group_size']}, temperature {r['temperature']}, {r['max_tokens']} tokens",
        f"student success rate {f(st['success'])} (Wilson {ci(st['success_wilson'])}), "
        f"{st['tasks_with_success']}/{r['tasks']} tasks with a success",
        f"(a) teacher signal: {f(sig['frac'])} of {sig['graded']} rollouts (solution "
        f"{sig['solution']}, feedback {sig['feedback']}, both {sig['both']})",
    ]
    if ans["measured"]:
        lines += [
            f"(b) success: teacher {f(ans['teacher_success'])} {ci(ans['teacher_success_ci'])} "
            f"vs student {f(ans['student_success'])} {ci(ans['student_success_ci'])}; "
            f"difference {f(ans['delta_success'])} {ci(ans['delta_success_ci'])} "
            f"({ans['compared_rollouts']} rollouts)",
            f"    reward:  teacher {f(ans['teacher_reward'])} vs student "
            f"{f(ans['student_reward'])}; difference {f(ans['delta_reward'])} "
            f"{ci(ans['delta_reward_ci'])}",
        ]
    else:
        lines.append(f"(b) not measured: {ans['why_not']}")
    if div["measured"]:
        lines.append(
            f"(c) divergence (alpha {div['alpha']}, top-{div['top_k']}) {f(div['divergence_mean'])}"
            f" nats per token, top-1 disagreement {f(div['top1_disagreement'])} of "
            f"{div['tokens']} tokens; log q - log p of the sampled tokens (nats): failed "
            f"{f(div['logprob_gap_failed'])}, successful {f(div['logprob_gap_successful'])}"
        )
    else:
        lines.append(f"(c) not measured: {div['why_not'] or 'no response tokens'}")
    ctl = r["context_control"]
    if ctl["measured"]:
        lines += [
            f"(d) context control, a wrong context (another task's): success "
            f"{f(ctl['wrong_success'])} {ci(ctl['wrong_success_ci'])} vs the right context's "
            f"{f(ctl['right_success'])} {ci(ctl['right_success_ci'])}; right - wrong "
            f"{f(ctl['delta_success'])} {ci(ctl['delta_success_ci'])}, wrong - student "
            f"{f(ctl['wrong_minus_student'])} {ci(ctl['wrong_minus_student_ci'])} "
            f"({ctl['compared_rollouts']} rollouts, {ctl['unmatched']} without a wrong context)",
        ]
        cdiv = ctl["divergence"]
        if cdiv["measured"]:
            lines.append(
                f"    divergence with the wrong context {f(cdiv['divergence_mean'])} per token, "
                f"top-1 disagreement {f(cdiv['top1_disagreement'])}; log q - log p: failed "
                f"{f(cdiv['logprob_gap_failed'])}, successful {f(cdiv['logprob_gap_successful'])}"
            )
    else:
        lines.append(f"(d) context control not measured: {ctl['why_not']}")
    lines.append(f"verdict: {r['verdict']}: {r['message']}")
    return "\n".join(lines)
