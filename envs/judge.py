"""LLM-judge critiques from any OpenAI-compatible endpoint (``rlrf/Judge-v0``).

Any task plus a rubric: the response is graded by a model behind an OpenAI-compatible chat
completions endpoint (vLLM, llama.cpp, ``llm-katan``, OpenAI, ...) through the ``openai``
client. The judge is asked for ``{"score": <int>, "critique": "..."}``.

Reward: the judge's score normalized to [0, 1] (``(score - min_score) / (max_score -
min_score)``); ``success`` when it reaches ``success_threshold``. An empty response gets 0.0
without asking the judge.

Feedback: ``judge_critique`` with the judge's critique (and a
:class:`~rlrf.feedback.JudgeDetails` holding the raw score), by default only when the
response fell short of a perfect score.

When the judge cannot give a verdict (endpoint down, timeouts after the retries, a refused
key, an answer without a usable score) the step's reward is **missing**
(``Outcome(reward=None)``, ``info["reward_missing"]`` in the step): trainers skip and count
such rollouts instead of training on a silent zero. The feedback is then ``other`` and says
why, and ``info["judge_error"]`` carries the reason.

Robustness: structured output (``response_format={"type": "json_object"}``, dropped
automatically if the server rejects it) with a tolerant fallback parser (code fences, JSON
embedded in prose, ``{"response": "..."}`` wrappers, ``Score: 7/10`` text); a timeout that
bounds each whole request (connect, send, and the complete answer: a server that trickles
bytes cannot hold a step past it); retries with exponential backoff on connection errors,
timeouts, HTTP 429 and 5xx (never on a refused key); at most ``max_concurrency`` requests in
flight; an LRU cache of verdicts keyed by (judge model, rubric, prompt, response, reference).

Configuration from the environment when not passed: ``RLRF_JUDGE_BASE_URL`` (default
``http://127.0.0.1:8000/v1``), ``RLRF_JUDGE_MODEL`` (default ``judge``), and the API key from
the variable named by ``api_key_env`` (default ``RLRF_JUDGE_API_KEY``; local servers accept
any key, so an unset variable sends ``"EMPTY"``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from envs._jsonl import jsonl_records
from envs._numbers import loads_json, raw_decode_json, to_float
from rlrf.env import Message, Outcome, RLRFEnv, user_prompt
from rlrf.errors import ConfigError, RLRFError
from rlrf.feedback import Feedback, FeedbackKind, JudgeDetails, truncate_text

__all__ = [
    "DEFAULT_RUBRIC",
    "JudgeClient",
    "JudgeEnv",
    "JudgeError",
    "JudgeParseError",
    "JudgeTask",
    "JudgeUnavailableError",
    "Verdict",
    "load_judge_tasks_jsonl",
    "parse_verdict",
]

_T = TypeVar("_T")

DEFAULT_RUBRIC = (
    "Score how well the response answers the task: correct, complete, clear and concise. "
    "Deduct points for factual errors, missing parts, and padding."
)

_DEFAULT_TASKS: tuple[tuple[str, str, str], ...] = (
    ("train", "explain-photosynthesis", "Explain photosynthesis to a 10-year-old in 3 sentences."),
    ("train", "haiku-autumn", "Write a haiku about autumn leaves."),
    ("train", "email-decline", "Write a short, polite email declining a meeting invitation."),
    ("train", "list-primes", "List the prime numbers below 20, separated by commas."),
    ("train", "define-entropy", "Define entropy in thermodynamics in one or two sentences."),
    ("train", "python-reverse", "Write a Python function that reverses a string."),
    ("test", "summarize-rain", "Summarize in one sentence why the sky looks blue."),
    ("test", "advice-sleep", "Give three practical tips for sleeping better."),
)


class JudgeError(RLRFError):
    """The judge could not produce a verdict."""


class JudgeUnavailableError(JudgeError):
    """The endpoint could not be reached, timed out, refused the key, or failed."""


class JudgeParseError(JudgeError):
    """The judge answered, but without a usable score (empty, truncated, garbage)."""


@dataclass(frozen=True)
class Verdict:
    """A judge's verdict on one response.

    Attributes:
        score: The raw score on the judge's scale.
        critique: The judge's critique (may be empty).
        raw: The judge's answer text as received.

    """

    score: float
    critique: str
    raw: str = ""


@dataclass(frozen=True)
class JudgeTask:
    """A task to be judged.

    Attributes:
        id: Unique task id.
        messages: The prompt shown to the policy.
        rubric: What the judge grades against (``None``: the env's rubric).
        reference: An optional reference answer shown to the judge only.
        split: ``"train"`` or ``"test"``.

    """

    id: str
    messages: tuple[Message, ...]
    rubric: str | None = None
    reference: str | None = None
    split: str = "train"


# ---- parsing the judge's answer -----------------------------------------------------------

_SCORE_KEYS = ("score", "rating", "grade", "points", "mark")
_CRITIQUE_KEYS = ("critique", "feedback", "explanation", "reason", "rationale", "comment")
_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
# One class for the quotes and blanks around the separator: three adjacent ``\s*`` (as
# before) backtracked cubically on a run of spaces (1,000 spaces took 11 s).
_SCORE_RE = re.compile(
    r"\b(?:score|rating|grade)\b[\"'*\s]*(?:(?:[:=]|is|of)[\"'*\s]*)?"
    r"(-?\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(-?\d+(?:\.\d+)?))?",
    re.I,
)
_PARTIAL_CRITIQUE_RE = re.compile(
    r'"(critique|feedback|explanation|reason|rationale|comment)"\s*:\s*"((?:[^"\\]|\\.)*)'
)
# Denominators may carry a sign only so that "5/-10" is rejected rather than read as 5.
_FRACTION_RE = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(-?\d+(?:\.\d+)?)\b", re.I)


def _json_objects(text: str) -> Iterable[dict[str, Any]]:
    """JSON objects in ``text``: the whole text, fenced blocks, then embedded ones."""
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE_RE.finditer(text)]
    for c in candidates:
        try:
            value = loads_json(c)
        except (ValueError, RecursionError):  # ValueError: also integers over the digit cap
            continue
        if isinstance(value, dict):
            yield value
    for attempts, m in enumerate(re.finditer(r"\{", text)):
        if attempts >= 32:
            break
        try:
            value, _ = raw_decode_json(text, m.start())
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            yield value


def _number(value: Any) -> tuple[float, float | None] | None:
    """A score and its optional denominator from a JSON value (``7``, ``"7"``, ``"7/10"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return to_float(value), None  # a 400-digit int saturates to inf (then: off scale)
    if isinstance(value, str):
        m = _FRACTION_RE.search(value) or re.search(r"-?\d+(?:\.\d+)?", value)
        if m:
            den = m.group(2) if m.re is _FRACTION_RE else None
            return float(m.group(1)), None if den is None else float(den)
    return None


def parse_verdict(
    text: str | None,
    min_score: float = 0.0,
    max_score: float = 10.0,
    *,
    finish_reason: str | None = None,
) -> Verdict:
    """Read a score and critique from a judge's answer, as tolerantly as is safe.

    Tries JSON first (the whole text, fenced blocks, objects embedded in prose, and the
    ``{"response": "<text>"}`` wrapper some servers put around JSON-mode output), then
    ``Score: 7``/``7/10`` patterns in plain text. A score given out of another total
    (``4/5``) is rescaled; a score outside ``[min_score, max_score]`` is rejected.

    Raises:
        JudgeParseError: No usable score; the message quotes the start of the answer.

    """
    if text is None or not text.strip():
        raise JudgeParseError("the judge's answer was empty")
    body = text
    for _ in range(3):  # unwrap {"response": "..."} wrappers
        score, critique, inner = None, None, None
        for obj in _json_objects(body):
            for k in _SCORE_KEYS:
                if k in obj and _number(obj[k]) is not None:
                    score = _number(obj[k])
                    break
            critique = next(
                (str(obj[k]) for k in _CRITIQUE_KEYS if isinstance(obj.get(k), (str, list))),
                critique,
            )
            if score is not None:
                break
            if inner is None and isinstance(obj.get("response"), str):
                inner = obj["response"]
        if score is not None or inner is None:
            break
        body = inner
    if score is None:
        m = _SCORE_RE.search(body)
        if m:
            score = (float(m.group(1)), float(m.group(2)) if m.group(2) else None)
        else:
            m = _FRACTION_RE.search(body)
            if m:
                score = (float(m.group(1)), float(m.group(2)))
        if score is not None and critique is None:
            partial = _PARTIAL_CRITIQUE_RE.search(body)  # JSON cut off inside the critique
            critique = partial.group(2) if partial else " ".join(body.split())
    if score is None:
        cut = " (it was cut off at the token limit)" if finish_reason == "length" else ""
        snippet = truncate_text(text.strip(), 200)
        raise JudgeParseError(f"the judge's answer has no usable score{cut}: {snippet!r}")
    value, denominator = score
    if denominator is not None:
        if not (0 < denominator < math.inf):  # "7/0" is no score, not 7 on the judge's scale
            raise JudgeParseError(
                f"the judge's score {value:g}/{denominator:g} has no valid denominator: "
                f"{truncate_text(text.strip(), 200)!r}"
            )
        if denominator != max_score:
            value = min_score + value / denominator * (max_score - min_score)
    if not (min_score <= value <= max_score):
        raise JudgeParseError(
            f"the judge's score {value:g} is outside the scale [{min_score:g}, {max_score:g}]"
        )
    return Verdict(score=value, critique=(critique or "").strip(), raw=text)


# ---- the client ---------------------------------------------------------------------------


class _DeadlineExceededError(Exception):
    """A request did not complete within its whole-request deadline."""


def _within(timeout_s: float, call: Callable[[], _T]) -> _T:
    """Return ``call()``, or raise :class:`_DeadlineExceededError` after ``timeout_s`` seconds.

    The HTTP client's timeout applies to each socket operation, so a server that trickles
    one byte a second never trips it; this bounds the whole request (connect, send, headers
    and body) instead. The call runs in a daemon thread that is abandoned at the deadline;
    it ends on its own when the server finishes or falls silent for ``timeout_s`` (the
    client's per-read timeout).
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # handed to the caller below
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="rlrf-judge-request", daemon=True).start()
    if not done.wait(timeout_s):
        raise _DeadlineExceededError(f"no complete answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _clean(text: str) -> str:
    """Make text safe to send as JSON: lone surrogates become U+FFFD."""
    return text.encode("utf-8", "replace").decode("utf-8")


class JudgeClient:
    """Asks an OpenAI-compatible endpoint for verdicts; thread-safe.

    Args:
        base_url: The endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        model: The model name the server serves.
        api_key_env: Name of the environment variable holding the API key.
        timeout_s: Deadline of each attempt in seconds, for the whole request (not per read):
            a step takes at most about ``(max_retries + 1) * timeout_s`` plus backoff.
        max_retries: Retries after the first attempt on transient failures.
        backoff_s: First backoff delay; doubles per retry (with jitter).
        max_concurrency: Requests in flight at most (across threads).
        max_tokens: The judge's answer budget.
        temperature: The judge's sampling temperature.
        response_format: ``"json_object"`` asks for JSON mode; ``None`` sends plain chat.
        cache_size: Verdicts kept (LRU); 0 disables the cache.
        min_score: Bottom of the judge's score scale.
        max_score: Top of the judge's score scale.

    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "RLRF_JUDGE_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_concurrency: int = 4,
        max_tokens: int = 256,
        temperature: float = 0.0,
        response_format: Literal["json_object"] | None = "json_object",
        cache_size: int = 10_000,
        min_score: float = 0.0,
        max_score: float = 10.0,
    ) -> None:
        if max_score <= min_score:
            raise ConfigError(f"max_score ({max_score}) must exceed min_score ({min_score})")
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ConfigError(
                "max_concurrency must be >= 1, max_retries >= 0 and timeout_s > 0; got "
                f"{max_concurrency}, {max_retries}, {timeout_s}"
            )
        if response_format not in ("json_object", None):
            raise ConfigError(
                f"response_format must be 'json_object' or None, got {response_format!r}"
            )
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.max_tokens, self.temperature = max_tokens, temperature
        self.response_format = response_format
        self.min_score, self.max_score = min_score, max_score
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._cache: OrderedDict[str, Verdict] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._client: Any = None
        #: Counters: ``requests`` sent, ``cache_hits``, ``failures`` (no verdict).
        self.stats = {"requests": 0, "cache_hits": 0, "failures": 0}

    def _openai(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = os.environ.get(self.api_key_env) or "EMPTY"
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=0
                )
            return self._client

    def messages(
        self, rubric: str, prompt: Sequence[Message], response: str, reference: str | None
    ) -> list[dict[str, str]]:
        """The chat messages sent to the judge."""
        lo, hi = f"{self.min_score:g}", f"{self.max_score:g}"
        system = (
            "You are a strict, fair grader. Grade the response to the task against the "
            f'rubric. Reply with one JSON object only: {{"score": <number from {lo} to '
            f'{hi}>, "critique": "<what is wrong or missing and how to fix it, briefly>"}}'
        )
        if len(prompt) == 1:
            task = prompt[0]["content"]
        else:
            task = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt)
        parts = [f"## Task\n{task}", f"## Rubric\n{rubric}"]
        if reference:
            parts.append(f"## Reference answer\n{reference}")
        parts.append(f"## Response to grade\n{response}")
        parts.append(
            f'Reply with the JSON object only: {{"score": ..., "critique": ...}}, score {lo}-{hi}.'
        )
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": _clean("\n\n".join(parts))},
        ]

    def cache_key(
        self, rubric: str, prompt: Sequence[Message], response: str, reference: str | None
    ) -> str:
        """The cache key of one request."""
        blob = json.dumps(
            [self.model, self.min_score, self.max_score, rubric, list(prompt), response, reference],
            sort_keys=True,
            ensure_ascii=True,
        )
        return hashlib.sha256(blob.encode("ascii")).hexdigest()

    def judge(
        self,
        rubric: str,
        prompt: Sequence[Message],
        response: str,
        reference: str | None = None,
    ) -> Verdict:
        """Return the judge's verdict on ``response`` (cached).

        Raises:
            JudgeUnavailableError: The endpoint failed after the retries, or refused.
            JudgeParseError: The judge answered without a usable score.

        """
        key = self.cache_key(rubric, prompt, response, reference)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                return self._cache[key]
        try:
            text, finish = self._ask(self.messages(rubric, prompt, response, reference))
            verdict = parse_verdict(text, self.min_score, self.max_score, finish_reason=finish)
        except JudgeError:
            with self._lock:
                self.stats["failures"] += 1
            raise
        if self._cache_size > 0:
            with self._lock:
                self._cache[key] = verdict
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return verdict

    def _ask(self, messages: list[dict[str, str]]) -> tuple[str | None, str | None]:
        import openai

        client = self._openai()
        last: Exception | None = None
        attempt, fallback_used = 0, False
        while attempt <= self.max_retries:
            if last is not None and not fallback_used:
                delay = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay * (0.5 + random.random()))  # jitter spreads herds of retries
            fallback_used = False
            attempt += 1
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            }
            if self.response_format is not None:
                kwargs["response_format"] = {"type": self.response_format}
            try:
                with self._slots:
                    with self._lock:
                        self.stats["requests"] += 1
                    completion = _within(
                        self.timeout_s, functools.partial(client.chat.completions.create, **kwargs)
                    )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise JudgeUnavailableError(
                    f"the judge endpoint {self.base_url} refused the API key (HTTP "
                    f"{e.status_code}); set ${self.api_key_env} to a valid key"
                ) from e
            except openai.NotFoundError as e:
                raise JudgeUnavailableError(
                    f"the judge endpoint {self.base_url} answered 404 for model "
                    f"{self.model!r}: check base_url (it usually ends in /v1) and the model name"
                ) from e
            except openai.BadRequestError as e:
                if self.response_format is not None:
                    # Some servers reject JSON mode: fall back to plain chat for good, at
                    # once and without spending a retry.
                    self.response_format = None
                    last, fallback_used = e, True
                    attempt -= 1
                    continue
                raise JudgeUnavailableError(
                    f"the judge endpoint {self.base_url} rejected the request (HTTP 400): "
                    f"{truncate_text(str(e), 300)}"
                ) from e
            except (openai.APITimeoutError, _DeadlineExceededError) as e:
                last = JudgeUnavailableError(
                    f"the judge at {self.base_url} did not answer within {self.timeout_s:g} s"
                )
                last.__cause__ = e
                continue
            except openai.APIConnectionError as e:
                last = JudgeUnavailableError(
                    f"cannot connect to the judge at {self.base_url} ({type(e).__name__}: "
                    f"{truncate_text(str(e.__cause__ or e), 200)}); is the server running?"
                )
                last.__cause__ = e
                continue
            except openai.APIStatusError as e:
                last = JudgeUnavailableError(
                    f"the judge at {self.base_url} answered HTTP {e.status_code}: "
                    f"{truncate_text(str(e), 200)}"
                )
                last.__cause__ = e
                if e.status_code in (408, 409, 429) or e.status_code >= 500:
                    continue
                raise last from e
            except Exception as e:  # an unreadable body (invalid JSON) from a broken server
                last = JudgeUnavailableError(
                    f"the judge at {self.base_url} sent an unreadable response "
                    f"({type(e).__name__}: {truncate_text(str(e), 200)})"
                )
                last.__cause__ = e
                continue
            try:
                choice = completion.choices[0]
                return choice.message.content, choice.finish_reason
            except (AttributeError, IndexError, TypeError) as e:
                last = JudgeParseError(
                    f"the judge's reply has no choices/message ({type(e).__name__}); is "
                    f"{self.base_url} an OpenAI-compatible chat endpoint?"
                )
                continue
        if isinstance(last, JudgeError):
            raise JudgeUnavailableError(
                f"{last} (gave up after {self.max_retries + 1} attempt(s))"
            ) from last.__cause__
        raise JudgeUnavailableError(
            f"the judge at {self.base_url} failed after {self.max_retries + 1} attempt(s): {last}"
        ) from last


# ---- the env ------------------------------------------------------------------------------


def load_judge_tasks_jsonl(path: str | os.PathLike[str]) -> list[JudgeTask]:
    """Load judge tasks from JSONL.

    Each line holds ``id``, ``prompt`` (text or chat messages), and optionally ``rubric``,
    ``reference`` and ``split`` (default ``"train"``).
    """
    tasks = []
    for where, rec in jsonl_records(path, "judge task file"):
        try:
            tasks.append(_task_from_mapping(rec))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{where}: malformed judge task ({e})") from e
    return tasks


def _task_from_mapping(rec: Mapping[str, Any]) -> JudgeTask:
    prompt = rec["prompt"]
    if isinstance(prompt, str):
        prompt = user_prompt(prompt)
    return JudgeTask(
        id=str(rec["id"]),
        messages=tuple({"role": m["role"], "content": str(m["content"])} for m in prompt),
        rubric=rec.get("rubric"),
        reference=rec.get("reference"),
        split=str(rec.get("split", "train")),
    )


class JudgeEnv(RLRFEnv):
    """Responses graded by an LLM judge; see the module docstring.

    Args:
        tasks: A JSONL path (:func:`load_judge_tasks_jsonl`), :class:`JudgeTask` objects or
            dicts; default: eight built-in open-ended prompts. Ignored with ``base_env``.
        base_env: Judge the tasks of another env instead (a registered id or an instance):
            its prompts, its splits, and its gold answer as the judge's reference.
        rubric: The rubric for tasks without their own.
        base_url: The OpenAI-compatible endpoint (default ``$RLRF_JUDGE_BASE_URL`` or
            ``http://127.0.0.1:8000/v1``).
        model: The judge model (default ``$RLRF_JUDGE_MODEL`` or ``"judge"``).
        api_key_env: Environment variable holding the key.
        success_threshold: Normalized score counted as success.
        critique_on_success: Also return the critique when the score is perfect.
        max_response_chars: Responses are cut to this many characters before judging.
        **client_kwargs: Passed to :class:`JudgeClient` (``timeout_s``, ``max_retries``,
            ``backoff_s``, ``max_concurrency``, ``max_tokens``, ``temperature``,
            ``response_format``, ``cache_size``, ``min_score``, ``max_score``).

    """

    def __init__(
        self,
        tasks: str | os.PathLike[str] | Iterable[JudgeTask | Mapping[str, Any]] | None = None,
        *,
        base_env: str | RLRFEnv | None = None,
        rubric: str = DEFAULT_RUBRIC,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = "RLRF_JUDGE_API_KEY",
        success_threshold: float = 1.0,
        critique_on_success: bool = False,
        max_response_chars: int = 8000,
        **client_kwargs: Any,
    ) -> None:
        self.rubric = rubric
        self.success_threshold = success_threshold
        self.critique_on_success = critique_on_success
        self.max_response_chars = max_response_chars
        self.client = JudgeClient(
            base_url or os.environ.get("RLRF_JUDGE_BASE_URL", "http://127.0.0.1:8000/v1"),
            model or os.environ.get("RLRF_JUDGE_MODEL", "judge"),
            api_key_env=api_key_env,
            **client_kwargs,
        )
        self._base: RLRFEnv | None = None
        self._tasks: dict[str, JudgeTask] = {}
        self._ids: dict[str, list[str]] = {}
        if base_env is not None:
            if isinstance(base_env, str):
                from rlrf.registration import make

                base_env = make(base_env)
            self._base = base_env
            self.splits = tuple(base_env.splits)
            return
        if tasks is None:
            items: list[JudgeTask] = [
                JudgeTask(tid, ({"role": "user", "content": text},), split=split)
                for split, tid, text in _DEFAULT_TASKS
            ]
        elif isinstance(tasks, (str, os.PathLike)):
            items = load_judge_tasks_jsonl(tasks)
        else:
            items = [t if isinstance(t, JudgeTask) else _task_from_mapping(t) for t in tasks]
        if not items:
            raise ConfigError("JudgeEnv needs at least one task")
        self._ids = {"train": [], "test": []}
        for t in items:
            if t.id in self._tasks:
                raise ConfigError(f"JudgeEnv: duplicate task id {t.id!r}")
            self._tasks[t.id] = t
            self._ids.setdefault(t.split, []).append(t.id)
        self.splits = tuple(sorted(self._ids, key=lambda s: (s != "train", s)))

    def task_ids(self, split: str = "train") -> Sequence[str]:
        """Return the ids of ``split``."""
        if self._base is not None:
            return self._base.task_ids(split)
        return self._ids.get(split, [])

    def prompt(self, task_id: str) -> list[Message]:
        """The task's prompt."""
        if self._base is not None:
            return self._base.prompt(task_id)
        return [dict(m) for m in self._tasks[task_id].messages]  # type: ignore[misc]

    def _rubric_and_reference(self, task_id: str) -> tuple[str, str | None]:
        if self._base is not None:
            return self.rubric, self._base.gold_answer(task_id)
        task = self._tasks[task_id]
        return task.rubric or self.rubric, task.reference

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Ask the judge; the reward is the normalized score, or missing on failure."""
        source = f"judge:{self.client.model}"
        if not response.strip():
            return Outcome(
                0.0,
                Feedback(FeedbackKind.FORMAT, "Your response is empty.", source=source),
            )
        rubric, reference = self._rubric_and_reference(task_id)
        prompt = self.prompt(task_id)
        text = truncate_text(_clean(response), self.max_response_chars)
        try:
            verdict = self.client.judge(rubric, prompt, text, reference)
        except JudgeError as e:
            message = truncate_text(
                f"No reward: the judge is unavailable or gave no usable verdict ({e}).",
                self.feedback_max_chars,
            )
            return Outcome(
                None,
                Feedback(FeedbackKind.OTHER, message, source=source),
                success=False,
                info={"judge_error": str(e)},
            )
        lo, hi = self.client.min_score, self.client.max_score
        reward = min(max((verdict.score - lo) / (hi - lo), 0.0), 1.0)
        success = reward >= self.success_threshold
        info = {"judge_score": verdict.score}
        if reward >= 1.0 and not self.critique_on_success:
            return Outcome(reward, success=success, info=info)
        critique = verdict.critique or f"The judge scored this {verdict.score:g}/{hi:g}."
        feedback = Feedback(
            FeedbackKind.JUDGE_CRITIQUE,
            truncate_text(critique, self.feedback_max_chars),
            JudgeDetails(score=verdict.score, max_score=hi, model=self.client.model),
            source,
        )
        return Outcome(reward, feedback, success=success, info=info)

    def evaluate_many(self, task_id: str, responses: Sequence[str]) -> list[Outcome]:
        """Judge several responses concurrently (up to the client's concurrency limit)."""
        workers = max(1, min(self.client.max_concurrency, len(responses)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda r: self.evaluate(task_id, r), responses))
