"""The common trajectory format that every algorithm consumes.

A :class:`Trajectory` is one episode: the prompt, then one :class:`Turn` per response (its
text and token ids, the sampler's log-probs, reward, feedback, and for multi-turn envs the
messages the env appended). A :class:`Group` holds the G trajectories sampled for one task.

Files are JSON Lines, one record per line, each carrying ``"schema_version"``; writes
stream (:class:`TrajectoryWriter` flushes every record), so a run never holds its whole
history in memory and a crash loses at most the line being written: readers skip a torn last
line (even one ending inside a UTF-8 character) with a warning, and appending removes it.

A trajectory file may come from anyone (a collaborator's run folder), so the reader treats it
as untrusted: every field is checked for its type and range before a record is built (finite
rewards, integer token ids, messages with string roles and contents, a teacher context that is
text or messages), nesting deeper than :data:`MAX_RECORD_DEPTH` is refused before parsing,
and anything wrong raises :class:`~rlrf.errors.TrajectoryFormatError` naming ``file:line`` and
the field, never another exception.

>>> import tempfile, os
>>> t = Trajectory("rlrf/Echo-v0", "a", ({"role": "user", "content": "Say a."},),
...                [Turn("a", reward=1.0)], success=True)
>>> path = os.path.join(tempfile.mkdtemp(), "t.jsonl")
>>> with TrajectoryWriter(path) as w:
...     w.write(Group("rlrf/Echo-v0", "a", [t]))
>>> [g.trajectories[0] == t for g in read_trajectories(path)]
[True]
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, Any

from rlrf.env import Message
from rlrf.errors import RLRFWarning, TrajectoryFormatError
from rlrf.feedback import Feedback

__all__ = [
    "SCHEMA_VERSION",
    "Group",
    "RolloutError",
    "Trajectory",
    "TrajectoryWriter",
    "TruncatedFileWarning",
    "Turn",
    "read_trajectories",
    "write_trajectories",
]

#: Version of the on-disk record layout. Readers refuse records from a newer version.
SCHEMA_VERSION = 1

#: Deepest nesting of arrays and objects a record may have (rlrf writes about 10, plus what
#: ``info`` holds); deeper lines are refused before they are parsed.
MAX_RECORD_DEPTH = 100


class TruncatedFileWarning(RLRFWarning):
    """A trajectory file ended in a partial line (a crash mid-write); complete lines kept."""


@dataclass
class Turn:
    """One response of the policy and what the env said about it.

    Attributes:
        response: The response text.
        reward: The reward of this turn, ``None`` when the env could not compute it.
        feedback: The env's typed feedback on this response.
        response_token_ids: The sampled token ids, when a local policy produced them.
        logprobs: The sampler's log-probability of each token in ``response_token_ids``.
        observation: Messages the env appended after this turn (multi-turn envs).
        info: Free-form, JSON-serializable extras.

    """

    response: str
    reward: float | None
    feedback: tuple[Feedback, ...] = ()
    response_token_ids: tuple[int, ...] | None = None
    logprobs: tuple[float, ...] | None = None
    observation: tuple[Message, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.feedback = tuple(self.feedback)
        self.observation = tuple(self.observation)
        if self.response_token_ids is not None:
            self.response_token_ids = tuple(self.response_token_ids)
        if self.logprobs is not None:
            self.logprobs = tuple(self.logprobs)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serializable record of this turn."""
        return {
            "response": self.response,
            "reward": self.reward,
            "feedback": [f.to_dict() for f in self.feedback],
            "response_token_ids": _maybe_list(self.response_token_ids),
            "logprobs": _maybe_list(self.logprobs),
            "observation": [dict(m) for m in self.observation],
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        """Inverse of :meth:`to_dict`."""
        return cls(
            response=d["response"],
            reward=d["reward"],
            feedback=tuple(Feedback.from_dict(f) for f in d.get("feedback", ())),
            response_token_ids=_maybe_tuple(d.get("response_token_ids")),
            logprobs=_maybe_tuple(d.get("logprobs")),
            observation=tuple(d.get("observation", ())),
            info=d.get("info", {}),
        )


@dataclass(frozen=True)
class RolloutError:
    """Why an episode ended early: the env raised or broke its contract (not fatal to a run).

    Attributes:
        method: The env method that failed: ``"make"``, ``"reset"``, ``"step"``, or for
            task-style envs ``"prompt"``, ``"evaluate_many"`` or ``"evaluate"``.
        turn: The turn being played (0 for ``make`` and ``reset``, 1 for the first response).
        error_type: The exception's class name (``"EnvError"`` for a broken contract).
        message: The exception's message.

    """

    method: str
    turn: int
    error_type: str
    message: str

    def __str__(self) -> str:
        return f"{self.method} (turn {self.turn}) raised {self.error_type}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serializable record."""
        return {
            "method": self.method,
            "turn": self.turn,
            "error_type": self.error_type,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutError:
        """Inverse of :meth:`to_dict`."""
        return cls(d["method"], int(d["turn"]), d["error_type"], d["message"])

    @classmethod
    def from_exception(cls, method: str, turn: int, e: BaseException) -> RolloutError:
        """Record ``e``, raised by ``method`` at ``turn``."""
        return cls(method, turn, type(e).__name__, str(e))


@dataclass
class Trajectory:
    """One episode: a prompt and the turns that followed it.

    Attributes:
        env_id: The registered env id (or class name) that produced it.
        task_id: The task within the env.
        prompt: The prompt messages the policy saw first.
        turns: One entry per response.
        seed: The reset seed that picked the task when the task was chosen by seed, else the
            sampling seed.
        success: Whether the episode solved the task.
        policy_version: The optimizer step of the policy that sampled it.
        timings: Seconds spent per phase (``"generate"``, ``"env"``, ...).
        info: Free-form, JSON-serializable extras (for SDPO: the teacher context).
        error: Set when the env failed during this episode; the reward is then missing.

    """

    env_id: str
    task_id: str
    prompt: tuple[Message, ...]
    turns: list[Turn]
    seed: int | None = None
    success: bool = False
    policy_version: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: RolloutError | None = None

    def __post_init__(self) -> None:
        self.prompt = tuple(self.prompt)
        self.turns = list(self.turns)

    @property
    def reward(self) -> float | None:
        """The return (sum of the turns' rewards); ``None`` if one is missing or the env failed."""
        if self.error is not None:
            return None
        rewards = [t.reward for t in self.turns]
        if any(r is None for r in rewards):
            return None
        return float(sum(rewards))  # type: ignore[arg-type]

    @property
    def feedback(self) -> tuple[Feedback, ...]:
        """All turns' feedback, in order."""
        return tuple(f for t in self.turns for f in t.feedback)

    @property
    def response(self) -> str:
        """The last turn's response (``""`` when there is none)."""
        return self.turns[-1].response if self.turns else ""

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serializable record of this trajectory."""
        return {
            "env_id": self.env_id,
            "task_id": self.task_id,
            "prompt": [dict(m) for m in self.prompt],
            "turns": [t.to_dict() for t in self.turns],
            "seed": self.seed,
            "success": self.success,
            "policy_version": self.policy_version,
            "timings": self.timings,
            "info": self.info,
            # written only when set, so records of healthy episodes are unchanged
            **({"error": self.error.to_dict()} if self.error is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        """Inverse of :meth:`to_dict`."""
        return cls(
            env_id=d["env_id"],
            task_id=d["task_id"],
            prompt=tuple(d["prompt"]),
            turns=[Turn.from_dict(t) for t in d["turns"]],
            seed=d.get("seed"),
            success=d.get("success", False),
            policy_version=d.get("policy_version", 0),
            timings=d.get("timings", {}),
            info=d.get("info", {}),
            error=RolloutError.from_dict(d["error"]) if d.get("error") else None,
        )


@dataclass
class Group:
    """The G trajectories sampled for one task (what group-relative algorithms need)."""

    env_id: str
    task_id: str
    trajectories: list[Trajectory]

    @property
    def rewards(self) -> list[float | None]:
        """Each trajectory's reward (``None`` where missing)."""
        return [t.reward for t in self.trajectories]

    def __len__(self) -> int:
        return len(self.trajectories)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-serializable record of this group."""
        return {
            "env_id": self.env_id,
            "task_id": self.task_id,
            "trajectories": [t.to_dict() for t in self.trajectories],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Group:
        """Inverse of :meth:`to_dict`."""
        return cls(d["env_id"], d["task_id"], [Trajectory.from_dict(t) for t in d["trajectories"]])


def _maybe_list(x: Sequence[Any] | None) -> list[Any] | None:
    return None if x is None else list(x)


def _maybe_tuple(x: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if x is None else tuple(x)


def _encode(record: Group | Trajectory) -> str:
    if isinstance(record, Group):
        kind = "group"
    elif isinstance(record, Trajectory):
        kind = "trajectory"
    else:
        raise TypeError(f"can only write Group or Trajectory, got {type(record).__name__}")
    payload = {"schema_version": SCHEMA_VERSION, "type": kind, **record.to_dict()}
    try:
        # The reader's checks, here too: a file rlrf writes is always one rlrf can read.
        _check_group(payload) if kind == "group" else _check_trajectory(payload, "")
    except _BadField as e:
        raise TrajectoryFormatError(
            f"cannot write {kind} for task {record.task_id!r}: {e} (a reader would refuse it)"
        ) from None
    try:
        # NaN/Infinity are not JSON; other readers would choke on Python's extension.
        return json.dumps(payload, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TrajectoryFormatError(
            f"cannot serialize {kind} for task {record.task_id!r}: {e}. Keep info/timings "
            "values JSON-native (str, int, finite float, bool, None, list, dict)"
        ) from e


def _decode(line: str, where: str) -> Group | Trajectory:
    depth = _json_depth(line)
    if depth > MAX_RECORD_DEPTH:
        raise TrajectoryFormatError(
            f"{where}: nested {depth} levels deep; a trajectory record has at most "
            f"{MAX_RECORD_DEPTH} (was the file written by rlrf?)"
        )
    try:
        payload = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, a 5000-digit integer
        raise TrajectoryFormatError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(payload, dict) or "schema_version" not in payload:
        raise TrajectoryFormatError(
            f"{where}: not an rlrf trajectory record (a JSON object with 'schema_version')"
        )
    version = payload.pop("schema_version")
    if not _is_int(version) or version > SCHEMA_VERSION:
        raise TrajectoryFormatError(
            f"{where}: written with trajectory schema version {_show(version)}, but this rlrf "
            f"reads versions up to {SCHEMA_VERSION}; upgrade rlrf to read it"
        )
    kind = payload.pop("type", None)
    if kind not in ("group", "trajectory"):
        raise TrajectoryFormatError(f"{where}: unknown record type {_show(kind)}")
    try:
        if kind == "group":
            _check_group(payload)
            return Group.from_dict(payload)
        _check_trajectory(payload, "")
        return Trajectory.from_dict(payload)
    except _BadField as e:
        raise TrajectoryFormatError(
            f"{where}: {e}; the record was not written by rlrf's TrajectoryWriter, or was "
            "edited since"
        ) from None
    except TrajectoryFormatError as e:  # a feedback record's own check
        raise TrajectoryFormatError(f"{where}: {e}") from e
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise TrajectoryFormatError(f"{where}: missing or malformed field ({e!r})") from e


# ---- checks of untrusted records: each raises _BadField naming the field ------------------


class _BadField(Exception):
    """A field of a record is missing or has the wrong type (internal to the reader)."""


# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_MAX_INT = 1 << 63


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON ``text``, without parsing it."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub('""', text))
    return max(accumulate(_STEP[c] for c in brackets), default=0)


def _show(value: Any) -> str:
    """A short description of an untrusted value (its repr could be huge, or raise)."""
    if isinstance(value, (str, bool, float)) or value is None:
        return repr(value)[:60]
    if isinstance(value, int):
        return repr(value) if abs(value) < _MAX_INT else f"an integer of {value.bit_length()} bits"
    return f"a {type(value).__name__}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < _MAX_INT


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        return False


def _need(d: dict[str, Any], at: str, key: str, what: str, ok: Any, *, optional: bool = False):
    if key not in d:
        if optional:
            return None
        raise _BadField(f"field {at}{key} is missing")
    value = d[key]
    if not ok(value):
        raise _BadField(f"field {at}{key} must be {what}, got {_show(value)}")
    return value


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _opt_int(v: Any) -> bool:
    return v is None or _is_int(v)


def _dict(v: Any) -> bool:
    return isinstance(v, dict)


def _check_messages(value: Any, at: str) -> None:
    if not isinstance(value, list):
        raise _BadField(f"field {at} must be a list of messages, got {_show(value)}")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _BadField(f"field {at}[{i}] must be a message object, got {_show(m)}")
        _need(m, f"{at}[{i}].", "role", "a string", _str)
        _need(m, f"{at}[{i}].", "content", "a string", _str)


def _check_info(info: dict[str, Any], at: str) -> None:
    # The one key of info that rlrf itself reads back (SDPO's teacher context, in reports).
    if "teacher_context" in info:
        ctx = info["teacher_context"]
        if ctx is not None and not isinstance(ctx, str):
            _check_messages(ctx, f"{at}info.teacher_context")


def _check_group(d: dict[str, Any]) -> None:
    _need(d, "", "env_id", "a string", _str)
    _need(d, "", "task_id", "a string", _str)
    items = _need(d, "", "trajectories", "a list", lambda v: isinstance(v, list))
    for i, t in enumerate(items):
        if not isinstance(t, dict):
            raise _BadField(f"field trajectories[{i}] must be an object, got {_show(t)}")
        _check_trajectory(t, f"trajectories[{i}].")


def _check_trajectory(d: dict[str, Any], at: str) -> None:
    _need(d, at, "env_id", "a string", _str)
    _need(d, at, "task_id", "a string", _str)
    _check_messages(_need(d, at, "prompt", "a list", lambda v: True), f"{at}prompt")
    turns = _need(d, at, "turns", "a list", lambda v: isinstance(v, list))
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _BadField(f"field {at}turns[{i}] must be an object, got {_show(turn)}")
        _check_turn(turn, f"{at}turns[{i}].")
    _need(d, at, "seed", "an integer or null", _opt_int, optional=True)
    _need(d, at, "success", "true or false", lambda v: isinstance(v, bool), optional=True)
    _need(
        d, at, "policy_version", "an integer >= 0", lambda v: _is_int(v) and v >= 0, optional=True
    )
    timings = _need(d, at, "timings", "an object", _dict, optional=True) or {}
    for key, value in timings.items():
        if not _is_number(value):
            raise _BadField(f"field {at}timings.{key} must be a finite number, got {_show(value)}")
    _check_info(_need(d, at, "info", "an object", _dict, optional=True) or {}, at)
    error = _need(
        d, at, "error", "an object or null", lambda v: v is None or _dict(v), optional=True
    )
    if error:
        for key in ("method", "error_type", "message"):
            _need(error, f"{at}error.", key, "a string", _str)
        _need(error, f"{at}error.", "turn", "an integer >= 0", lambda v: _is_int(v) and v >= 0)


def _check_turn(d: dict[str, Any], at: str) -> None:
    _need(d, at, "response", "a string", _str)
    _need(d, at, "reward", "a finite number or null", lambda v: v is None or _is_number(v))
    feedback = _need(d, at, "feedback", "a list", lambda v: isinstance(v, list), optional=True)
    for i, f in enumerate(feedback or ()):
        if not isinstance(f, dict):
            raise _BadField(f"field {at}feedback[{i}] must be an object, got {_show(f)}")
        _need(f, f"{at}feedback[{i}].", "text", "a string", _str)
        _need(f, f"{at}feedback[{i}].", "source", "a string", _str, optional=True)
        details = Feedback.from_dict(f).details
        if details is not None:
            _check_details(details, f"{at}feedback[{i}].details")
    ids = _need(d, at, "response_token_ids", "a list", lambda v: v is None or isinstance(v, list))
    for i, token in enumerate(ids or ()):
        if not (_is_int(token) and token >= 0):
            raise _BadField(
                f"field {at}response_token_ids[{i}] must be a token id >= 0, got {_show(token)}"
            )
    logprobs = _need(d, at, "logprobs", "a list", lambda v: v is None or isinstance(v, list))
    for i, lp in enumerate(logprobs or ()):
        if not _is_number(lp):
            raise _BadField(f"field {at}logprobs[{i}] must be a finite number, got {_show(lp)}")
    if "observation" in d:
        _check_messages(d["observation"], f"{at}observation")
    _check_info(_need(d, at, "info", "an object", _dict, optional=True) or {}, at)


_DETAIL_CHECKS = {"str": _str, "int": _is_int, "float": _is_number, "None": lambda v: v is None}


def _check_details(details: Any, at: str) -> None:
    """Check a feedback detail's fields against their annotations (``str | None``, ...)."""
    for f in fields(details):
        value = getattr(details, f.name)
        if isinstance(value, tuple):  # ToolCallDetails.violations
            for i, item in enumerate(value):
                if not is_dataclass(item):
                    raise _BadField(f"field {at}.{f.name}[{i}] must be an object")
                _check_details(item, f"{at}.{f.name}[{i}]")
            continue
        kinds = [k.strip() for k in str(f.type).split("|")]
        if not any(_DETAIL_CHECKS.get(k, lambda v: False)(value) for k in kinds):
            raise _BadField(f"field {at}.{f.name} must be {' or '.join(kinds)}, got {_show(value)}")


class TrajectoryWriter:
    """Stream groups or trajectories to a JSONL file, one flushed line per record.

    Use as a context manager; ``append=True`` continues an existing file (resumed runs).
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append:
            _drop_torn_tail(self.path)
        self._file: IO[str] | None = self.path.open("a" if append else "w", encoding="utf-8")
        self.count = 0

    def write(self, record: Group | Trajectory) -> None:
        """Append one record and flush it to the OS.

        The line is encoded completely before any byte is written, so a record that cannot
        be serialized leaves the file as it was; a crash mid-write leaves at most one torn
        last line, which readers skip and ``append=True`` removes.
        """
        if self._file is None:
            raise ValueError(f"TrajectoryWriter for {self.path} is closed")
        self._file.write(_encode(record) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (no trailing newline) off ``path``, so appends start clean."""
    if not path.exists():
        return
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # find the last newline, reading backwards in blocks
        end = size
        while end > 0:
            start = max(0, end - 65536)
            f.seek(start)
            block = f.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        else:
            keep = 0
        warnings.warn(
            f"{path}: its last line was incomplete (the writer was killed mid-line); removed "
            f"its {size - keep} byte(s) before appending",
            TruncatedFileWarning,
            stacklevel=3,
        )
        f.truncate(keep)


def write_trajectories(path: str | os.PathLike[str], records: Sequence[Group | Trajectory]) -> None:
    """Write ``records`` to ``path`` (overwriting it)."""
    with TrajectoryWriter(path) as w:
        for r in records:
            w.write(r)


def read_trajectories(path: str | os.PathLike[str]) -> Iterator[Group | Trajectory]:
    """Stream the records of a trajectory file.

    A partial last line (the writer crashed mid-line, possibly inside a multi-byte UTF-8
    character) is reported with a :class:`TruncatedFileWarning` and skipped; every complete
    line before it is returned. Any other malformed line (bad JSON, bad UTF-8, a bad record)
    raises :class:`~rlrf.errors.TrajectoryFormatError` naming ``file:line``.
    """
    with Path(path).open("rb") as f:
        lineno = 0
        for raw in f:
            lineno += 1
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            if not raw.endswith(b"\n"):
                try:
                    record = _decode(_utf8(raw, where), where)
                except TrajectoryFormatError:
                    warnings.warn(
                        f"{where}: last line is incomplete (was the writer killed?); "
                        f"skipped it and kept the {lineno - 1} line(s) before it",
                        TruncatedFileWarning,
                        stacklevel=2,
                    )
                    return
                yield record
                return
            yield _decode(_utf8(raw, where), where)


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TrajectoryFormatError(f"{where}: not valid UTF-8 ({e})") from e
