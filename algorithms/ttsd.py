"""Test-time self-distillation (TTSD): solve one hard question by SDPO at inference time.

The paper's third result (Hübotter et al. 2026, "Test-time self-distillation"):
for ONE question and no training set, repeatedly

1. sample a batch of attempts (16 by default) from the current weights;
2. stop as soon as one attempt succeeds;
3. otherwise take one SDPO step on this question alone, each failure distilled toward the
   same model shown that failure's feedback (reverse KL, K = 20, EMA teacher τ = 0.01:
   :meth:`algorithms.sdpo.SDPOConfig.rich_feedback`; AdamW lr 1e-6), and go back to 1,

until a budget of attempts is spent. Every question starts from the same weights. The metric
is discovery@k: the fraction of questions solved within k attempts.

Two baselines spend the same budget in the same batches, from the same weights and seeds:

- ``best_of_k``: keep sampling batches, never update;
- ``multi_turn``: keep the feedback in the context window instead of the weights. Each of the
  ``batch_size`` attempts of a round continues its own conversation: the earlier attempts
  of that chain as assistant messages, each followed by a user message with the env's
  feedback; when the chat no longer fits ``max_context_tokens`` (prompt + ``max_new_tokens``),
  the oldest attempt-and-feedback pair is dropped first.

How it is built: TTSD is the shared training loop (:class:`algorithms.engine.trainer.Trainer`) run
on a one-task view of the env (:class:`OneTaskEnv`, whose ``"train"`` split is just that
task). One model object is loaded once; its initial ``state_dict`` is kept in memory and
restored before and after every question, and each question gets a fresh Trainer (so a
fresh AdamW state and a fresh EMA teacher). Each round calls ``Trainer.collect()``, stops at
a success, and otherwise ``Trainer.learn()`` on the failures.

Python API::

    from algorithms.ttsd import TTSDConfig, run_methods, discovery_at_k
    results = run_methods("rlrf/Arithmetic-v0", ["test-00000"], TTSDConfig(budget=64),
                          env_kwargs={"digits": 1, "ops": "+"})
    discovery_at_k(results["ttsd"], 64)

Command line: ``rlrf ttsd --env ID --tasks ...`` (:mod:`algorithms.commands.ttsd`).

Departures from the paper, and why:

- Attempts are counted one by one inside a batch: a question solved by the 3rd sample of
  the 2nd batch of 16 used 16 + 3 = 19 attempts (samples of one batch are exchangeable, so
  this is the usual unbiased way to read discovery@k at k that are not multiples of 16).
  Every method counts the same way.
- Common random numbers (not in the paper): batch b of a question is sampled with the seed
  mix(seed, crc32(task id), b) in every method, so the first batch is identical across the
  three methods and the curves differ only by what each method does with the failures.
- In TTSD no successful sibling exists before the stop, so the teacher context is the
  failure's feedback alone; an attempt without feedback gets no loss, and a batch without
  any feedback makes no update (that round is plain best-of-k).
- Weights are reset by restoring an in-memory copy of the full ``state_dict`` (full
  fine-tuning, no LoRA): simplest exact reset; it costs one extra copy of the weights.
- A budget that is not a multiple of ``batch_size`` ends with a smaller batch.
- ``multi_turn`` runs ``batch_size`` independent chains in parallel (one attempt per chain
  per round) rather than one long conversation, so its rounds cost what the other methods'
  batches cost; the env grades each retry on its own (``evaluate_many``), as it grades any
  single-turn response. It needs a single-turn env (``max_turns == 1``).

Sampling backend: every method samples through the one backend ``generation_backend`` names
(:func:`sampling_backend`): the model's own :class:`algorithms.sampling.hf.HFPolicy`, or ONE vLLM
engine in this process (:class:`algorithms.sampling.vllm.VLLMBackend`) shared by all methods
and questions (an engine per question would cost its start-up each time). With vLLM, TTSD's
trainer samples through that engine, which takes the weights after every SDPO step, and
again when the weights are reset to the initial ones (before and after each question), so
every method and every question samples from the weights it would with HF sampling.
"""

from __future__ import annotations

import dataclasses
import gc
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import rlrf
from algorithms.engine.trainer import Trainer, mix_seed, rollout_sampling
from algorithms.sampling.hf import HFPolicy, SamplingParams
from algorithms.sdpo import SDPOConfig
from algorithms.sdpo.config import SDPOTrainConfig
from rlrf.env import Message, RLRFEnv
from rlrf.errors import ConfigError
from rlrf.feedback import render_feedback
from rlrf.rollout import collect_groups, grade_responses
from rlrf.sampling import Sample, SamplingBackend
from rlrf.trajectory import Group
from rlrf.wrappers import Wrapper

__all__ = [
    "METHODS",
    "Method",
    "OneTaskEnv",
    "QuestionResult",
    "TTSDConfig",
    "TokenSampler",
    "attempts_to_reach",
    "best_of_k",
    "discovery_at_k",
    "multi_turn_retry",
    "plot_discovery",
    "question_seed",
    "retry_message",
    "run_methods",
    "sampling_backend",
    "ttsd_solve",
    "write_discovery",
    "write_results",
]

Method = Literal["ttsd", "best_of_k", "multi_turn"]
METHODS: tuple[Method, ...] = get_args(Method)


@runtime_checkable
class TokenSampler(SamplingBackend, Protocol):
    """A sampling backend that also works on token ids (HFPolicy, VLLMBackend).

    The multi-turn baseline encodes chats itself (to fit them into its context limit) and
    samples from the token ids.
    """

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Tokenize a chat prompt as the trainer does."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Decode response tokens."""
        ...

    def sample_ids(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """Return ``n`` samples per tokenized prompt, in prompt order."""
        ...


def sampling_backend(config: TTSDConfig, model: Any, tokenizer: Any) -> TokenSampler:
    """The backend every method samples through: ``config.generation_backend``'s.

    ``"hf"``: an :class:`HFPolicy` over ``model`` (it always samples the current weights).
    ``"vllm"``: a vLLM engine in this process built from ``model``'s weights
    (:func:`algorithms.sampling.vllm.make_vllm_backend`; the caller closes it).

    Raises:
        ConfigError: vLLM is missing or unsupported (the message names the extra).

    """
    if config.generation_backend == "vllm":
        from algorithms.sampling.vllm import make_vllm_backend

        return make_vllm_backend(config, model, tokenizer)
    return HFPolicy(model, tokenizer, max_batch_size=config.generation_batch_size)


def _follows_weights(backend: Any, model: Any) -> bool:
    """Whether ``backend`` samples ``model``'s current weights without a sync."""
    return isinstance(backend, HFPolicy) and backend.model is model


def _sync(backend: Any, model: Any, version: int) -> None:
    """Load ``model``'s weights into an engine backend (a no-op for an HFPolicy of it)."""
    if not _follows_weights(backend, model):
        backend.sync(model, version)


@dataclass
class TTSDConfig:
    """Options of test-time self-distillation and its two baselines."""

    budget: int = 128
    """Attempts allowed per question (every method)."""

    batch_size: int = 16
    """Attempts sampled per round (the paper: 16)."""

    max_new_tokens: int = 256
    """Cap on tokens generated per attempt."""

    temperature: float = 1.0
    """Sampling temperature."""

    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""

    lr: float = 1e-6
    """AdamW learning rate of the SDPO steps (the paper's test-time setting: 1e-6)."""

    sdpo: SDPOConfig = field(default_factory=SDPOConfig.rich_feedback)
    """SDPO's options; default reverse KL, K = 20, EMA teacher τ = 0.01."""

    max_context_tokens: int = 4096
    """multi_turn: cap on prompt + max_new_tokens; oldest earlier attempts dropped first."""

    model: str = "smollm2-135m"
    """Model loaded when run_methods gets none."""

    seed: int = 0
    """Seed of all sampling (mixed with each task id and batch index)."""

    micro_batch_size: int = 16
    """Rollouts per forward/backward pass of an SDPO step (the loss does not depend on it)."""

    generation_batch_size: int = 64
    """Rows sampled at once."""

    env_workers: int = 1
    """Groups graded concurrently (TTSD and best_of_k)."""

    generation_backend: Literal["hf", "vllm"] = "hf"
    """Sampler of every method: "hf" (the model's own KV-cached loop) or "vllm" (one vLLM
    engine in this process for all methods and questions, its weights synced after every
    TTSD step and every reset)."""

    vllm_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """vLLM: the engine's dtype."""

    vllm_gpu_memory_utilization: float = 0.3
    """vLLM on CUDA: the fraction of GPU memory the engine may take (weights + KV cache)."""

    vllm_kv_cache_gib: float | None = None
    """vLLM on CPU: KV-cache space in GiB (None: the backend's default, 1 GiB)."""

    vllm_max_model_len: int | None = None
    """vLLM: the engine's context length (None: the model's); multi_turn then fits its chats
    into the smaller of this and max_context_tokens."""

    def __post_init__(self) -> None:
        for name in ("budget", "batch_size", "max_new_tokens", "max_context_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TTSDConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"TTSDConfig.lr must be > 0, got {self.lr}")
        if self.generation_backend not in ("hf", "vllm"):
            raise ConfigError(
                f"TTSDConfig.generation_backend must be 'hf' or 'vllm', got "
                f"{self.generation_backend!r}"
            )

    def train_config(self, seed: int) -> SDPOTrainConfig:
        """The Trainer config of one question's SDPO run (one task x ``batch_size``)."""
        return SDPOTrainConfig(
            sdpo=self.sdpo,
            lr=self.lr,
            questions_per_step=1,
            rollouts_per_question=self.batch_size,
            steps=max(1, -(-self.budget // self.batch_size)),
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            micro_batch_size=self.micro_batch_size,
            generation_batch_size=self.generation_batch_size,
            env_workers=self.env_workers,
            eval_every=0,
            checkpoint_every=0,
            progress=False,
            seed=seed,
        )

    def sampling(self, seed: int, batch: int) -> SamplingParams:
        """Sampling parameters of round ``batch``: the seed the Trainer uses at that step."""
        return rollout_sampling(self, seed, batch)


@dataclass
class QuestionResult:
    """What one method did on one question.

    Attributes:
        method: ``"ttsd"``, ``"best_of_k"`` or ``"multi_turn"``.
        task_id: The question.
        solved: Whether an attempt succeeded within the budget.
        attempts: Attempts used: the first success's index (1-based), or the whole budget.
        response: The winning response, or None.
        rounds: Batches sampled.
        seconds: Wall-clock time spent on the question.
        info: Extras (per-round SDPO metrics, context sizes of multi_turn, ...).

    """

    method: str
    task_id: str
    solved: bool
    attempts: int
    response: str | None
    rounds: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable record."""
        return dataclasses.asdict(self)


def question_seed(seed: int, task_id: str) -> int:
    """The seed of one question: the same in every method and every run."""
    return mix_seed(seed, zlib.crc32(task_id.encode("utf-8")))


def _first_success(group: Group) -> tuple[int, str] | None:
    for i, traj in enumerate(group.trajectories):
        if traj.success:
            return i, traj.turns[-1].response if traj.turns else ""
    return None


# --- TTSD -----------------------------------------------------------------------------------


class OneTaskEnv(Wrapper):
    """A view of an env whose ``"train"`` split is just one task (the Trainer's input)."""

    def __init__(self, env: RLRFEnv | Wrapper, task_id: str) -> None:
        super().__init__(env)
        self.only_task = task_id

    @property
    def splits(self) -> tuple[str, ...]:
        """Only ``"train"``: there is nothing held out at test time."""
        return ("train",)

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """The one task, for any split."""
        return [self.only_task]


def _snapshot(model: Any) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def ttsd_solve(
    model: Any,
    tokenizer: Any,
    env: RLRFEnv | Wrapper,
    task_id: str,
    config: TTSDConfig,
    initial_state: dict[str, Any] | None = None,
    *,
    backend: TokenSampler | None = None,
) -> QuestionResult:
    """Solve one question by TTSD; the model's weights are restored afterwards.

    Args:
        model: The causal LM (loaded once by the caller).
        tokenizer: Its tokenizer.
        env: The env holding ``task_id``.
        task_id: The question.
        config: Budget, batch size, SDPO options.
        initial_state: The weights every question starts from (default: the model's
            current weights).
        backend: What to sample with: None or an :class:`HFPolicy` of ``model`` (the
            trainer's own sampling), or an engine with ``sync(model, version)`` (a
            :class:`algorithms.sampling.vllm.VLLMBackend`): it is synced to the initial
            weights first, after every SDPO step (by the trainer), and to the initial
            weights again at the end.

    Raises:
        ConfigError: ``backend`` can neither follow ``model``'s weights nor take them
            (``sync``), so TTSD's updates would never reach the samples.

    """
    engine = None if backend is None or _follows_weights(backend, model) else backend
    if engine is not None and not callable(getattr(engine, "sync", None)):
        raise ConfigError(
            f"TTSD updates the model between rounds, but the sampling backend "
            f"{type(engine).__name__} cannot take new weights (no sync()); use "
            "generation_backend 'hf' or 'vllm'"
        )
    state = initial_state if initial_state is not None else _snapshot(model)
    model.load_state_dict(state)
    t0 = time.perf_counter()
    seed = question_seed(config.seed, task_id)
    trainer = Trainer(
        config.train_config(seed),
        env=OneTaskEnv(env, task_id),
        model=model,
        tokenizer=tokenizer,
    )
    if engine is not None:
        # The trainer's rollouts sample through this engine and learn() syncs it after every
        # step (vllm_sync_every = 1), as a Trainer built with generation_backend="vllm"
        # would; one engine serves every question instead of one engine start each.
        engine.sync(model, 0)
        trainer.vllm = engine
    attempts, rounds, updates = 0, 0, []
    result: QuestionResult | None = None
    try:
        while attempts < config.budget:
            n = min(config.batch_size, config.budget - attempts)
            if n != trainer.config.rollouts_per_question:
                trainer.config = dataclasses.replace(trainer.config, rollouts_per_question=n)
            groups, rstats = trainer.collect()
            rounds += 1
            (group,) = groups
            hit = _first_success(group)
            if hit is not None:
                result = QuestionResult(
                    "ttsd", task_id, True, attempts + hit[0] + 1, hit[1], rounds, 0.0
                )
                break
            attempts += n
            metrics = trainer.learn(groups, rstats)  # only failures are learned from
            updates.append(
                {k: v for k, v in metrics.items() if k.startswith("train/") and _is_num(v)}
            )
    finally:
        del trainer
        gc.collect()
        model.load_state_dict(state)
        if engine is not None and getattr(engine, "policy_version", 1) != 0:
            engine.sync(model, 0)  # the next method or question starts from these weights
    if result is None:
        result = QuestionResult("ttsd", task_id, False, config.budget, None, rounds, 0.0)
    result.seconds = time.perf_counter() - t0
    result.info["updates"] = updates
    return result


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float))


# --- baselines ------------------------------------------------------------------------------


def best_of_k(
    policy: SamplingBackend, env: RLRFEnv | Wrapper, task_id: str, config: TTSDConfig
) -> QuestionResult:
    """Sample batches with fixed weights until one attempt succeeds or the budget is spent.

    ``policy``: any sampling backend (:func:`sampling_backend`'s: HF or vLLM).
    """
    t0 = time.perf_counter()
    seed = question_seed(config.seed, task_id)
    env_id = getattr(env, "env_id", None)
    attempts = rounds = 0
    while attempts < config.budget:
        n = min(config.batch_size, config.budget - attempts)
        (group,), _ = collect_groups(
            env,
            policy,
            [task_id],
            n,
            config.sampling(seed, rounds),
            env_id=env_id,
            env_workers=config.env_workers,
        )
        rounds += 1
        hit = _first_success(group)
        if hit is not None:
            return QuestionResult(
                "best_of_k",
                task_id,
                True,
                attempts + hit[0] + 1,
                hit[1],
                rounds,
                time.perf_counter() - t0,
            )
        attempts += n
    return QuestionResult(
        "best_of_k", task_id, False, config.budget, None, rounds, time.perf_counter() - t0
    )


def retry_message(feedback_text: str) -> Message:
    """The user message that follows a failed attempt in the multi-turn baseline."""
    if feedback_text:
        content = (
            f"Your answer was not correct.\n\nFeedback:\n{feedback_text}\n\n"
            "Correctly solve the original question."
        )
    else:
        content = "Your answer was not correct. Correctly solve the original question."
    return {"role": "user", "content": content}


def _fit_chat(
    policy: TokenSampler,
    prompt: list[Message],
    history: list[tuple[str, str]],
    limit: int,
) -> tuple[list[int], int]:
    """Encode prompt + the newest earlier attempts that fit in ``limit`` tokens.

    Returns the token ids and how many (oldest) earlier attempts were dropped.
    """
    for dropped in range(len(history) + 1):
        chat = list(prompt)
        for response, feedback_text in history[dropped:]:
            chat.append({"role": "assistant", "content": response})
            chat.append(retry_message(feedback_text))
        ids = policy.encode(chat)
        if len(ids) <= limit:
            return ids, dropped
    raise ConfigError(
        f"the prompt alone takes {len(ids)} tokens, more than max_context_tokens - "
        f"max_new_tokens = {limit}; raise max_context_tokens or lower max_new_tokens"
    )


def multi_turn_retry(
    policy: TokenSampler, env: RLRFEnv | Wrapper, task_id: str, config: TTSDConfig
) -> QuestionResult:
    """Retry with earlier attempts and their feedback in the context (see the module doc).

    ``policy``: a backend that samples token ids (:func:`sampling_backend`'s: HF or vLLM).
    A vLLM engine's context (``max_model_len``) caps ``max_context_tokens``, so the oldest
    attempts are dropped here rather than the chat's start cut by the engine.
    """
    if int(getattr(env, "max_turns", 1) or 1) > 1:
        raise ConfigError(
            f"the multi_turn baseline needs a single-turn env; {getattr(env, 'env_id', env)} "
            "has max_turns > 1 (use the ttsd and best_of_k methods)"
        )
    t0 = time.perf_counter()
    seed = question_seed(config.seed, task_id)
    prompt = list(env.prompt(task_id))
    context = config.max_context_tokens
    engine_context = getattr(policy, "max_model_len", None)
    if isinstance(engine_context, int) and engine_context < context:
        context = engine_context
    limit = context - config.max_new_tokens
    if limit < 1:
        raise ConfigError(
            f"the context ({context} tokens: max_context_tokens, or the vLLM engine's "
            f"max_model_len if smaller) must exceed max_new_tokens ({config.max_new_tokens})"
        )
    histories: list[list[tuple[str, str]]] = [[] for _ in range(config.batch_size)]
    context_tokens: list[int] = []
    dropped_total = 0
    attempts = rounds = 0
    while attempts < config.budget:
        n = min(config.batch_size, config.budget - attempts)
        fitted = [_fit_chat(policy, prompt, h, limit) for h in histories[:n]]
        encoded = [ids for ids, _ in fitted]
        dropped_total += sum(d for _, d in fitted)
        context_tokens.extend(len(ids) for ids in encoded)
        samples = policy.sample_ids(encoded, 1, config.sampling(seed, rounds))
        texts = [s[0].text for s in samples]
        outcomes = grade_responses(env, task_id, texts)
        rounds += 1
        for i, (text, outcome) in enumerate(zip(texts, outcomes, strict=True)):
            if outcome.solved:
                return QuestionResult(
                    "multi_turn",
                    task_id,
                    True,
                    attempts + i + 1,
                    text,
                    rounds,
                    time.perf_counter() - t0,
                    {"context_tokens": context_tokens, "dropped": dropped_total},
                )
        for history, text, outcome in zip(histories, texts, outcomes, strict=False):
            history.append((text, render_feedback(outcome.feedback_items)))
        attempts += n
    return QuestionResult(
        "multi_turn",
        task_id,
        False,
        config.budget,
        None,
        rounds,
        time.perf_counter() - t0,
        {"context_tokens": context_tokens, "dropped": dropped_total},
    )


# --- running the methods over questions ------------------------------------------------------


def run_methods(
    env: RLRFEnv | Wrapper | str,
    task_ids: Sequence[str],
    config: TTSDConfig | None = None,
    *,
    methods: Sequence[str] = METHODS,
    model: Any = None,
    tokenizer: Any = None,
    env_kwargs: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[QuestionResult]]:
    """Run each method on each question from the same weights; return results per method.

    Args:
        env: An env instance or a registered id.
        task_ids: The questions.
        config: Budget and options (default :class:`TTSDConfig`).
        methods: Any of ``"ttsd"``, ``"best_of_k"``, ``"multi_turn"``.
        model: A model object (with ``tokenizer=``), or None to load ``config.model`` once.
        tokenizer: The tokenizer of ``model``.
        env_kwargs: Keyword arguments of ``rlrf.make`` when ``env`` is an id.
        log: Called with one line per finished question (for example ``print``).

    """
    config = config or TTSDConfig()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if isinstance(env, str):
        env = rlrf.make(env, **(env_kwargs or {}))
    if model is None:
        from algorithms.models import load_model

        model, tokenizer = load_model(config.model)
    elif tokenizer is None:
        raise ConfigError("pass tokenizer= together with a model object")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    initial = _snapshot(model)
    backend = sampling_backend(config, model, tokenizer)
    out: dict[str, list[QuestionResult]] = {m: [] for m in methods}
    try:
        for method in methods:
            for task_id in task_ids:
                if method == "ttsd":
                    r = ttsd_solve(model, tokenizer, env, task_id, config, initial, backend=backend)
                elif method == "best_of_k":
                    r = best_of_k(backend, env, task_id, config)
                else:
                    r = multi_turn_retry(backend, env, task_id, config)
                out[method].append(r)
                if log is not None:
                    status = f"solved at attempt {r.attempts}" if r.solved else "not solved"
                    log(f"{method:>10} {task_id}: {status} ({r.rounds} rounds, {r.seconds:.1f} s)")
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    return out


def discovery_at_k(results: Sequence[QuestionResult], budget: int) -> list[float]:
    """discovery@k for k = 1..budget: the fraction of questions solved within k attempts."""
    if not results:
        return [0.0] * budget
    solved_at = [r.attempts for r in results if r.solved]
    return [sum(a <= k for a in solved_at) / len(results) for k in range(1, budget + 1)]


def attempts_to_reach(curve: Sequence[float], target: float) -> int | None:
    """The smallest k with discovery@k >= target (None if never reached or target <= 0)."""
    if target <= 0:
        return None
    for k, value in enumerate(curve, start=1):
        if value >= target - 1e-12:
            return k
    return None


def write_results(path: str | Path, results: dict[str, list[QuestionResult]]) -> Path:
    """Write one JSON line per (method, question)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rows in results.values():
            for r in rows:
                f.write(json.dumps(r.to_dict()) + "\n")
    return path


def write_discovery(
    path: str | Path, results: dict[str, list[QuestionResult]], budget: int
) -> Path:
    """Write one JSON line per method: its discovery@k for k = 1..budget."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for method, rows in results.items():
            record = {
                "method": method,
                "questions": len(rows),
                "budget": budget,
                "discovery_at_k": discovery_at_k(rows, budget),
            }
            f.write(json.dumps(record) + "\n")
    return path


def plot_discovery(
    path: str | Path, results: dict[str, list[QuestionResult]], budget: int, title: str = ""
) -> Path:
    """Plot discovery@k of every method into an image file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = list(range(1, budget + 1))
    for method, rows in results.items():
        ax.step(ks, discovery_at_k(rows, budget), where="post", label=method)
    ax.set_xlabel("attempts k")
    ax.set_ylabel("discovery@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or f"discovery@k ({len(next(iter(results.values()), []))} questions)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
