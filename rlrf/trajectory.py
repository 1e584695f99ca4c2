"""The common trajectory format that every algorithm consumes.

A :class:`Trajectory` is one episode: the prompt, then one :class:`Turn` per response (its
text and token ids, the sampler's log-probs, reward, feedback, and for multi-turn envs the
messages the env appended). A :class:`Group` holds the G trajectories sampled for one task.

Files are JSON Lines, one record per line, each carrying ``"schema_version"``; writes
stream (:class:`TrajectoryWriter` flushes every record), so a run never holds its whole
history in memory and a crash loses at most the line being written: readers skip a torn last
line (even one ending inside a UTF-8 character) with a warning, and appending removes it.

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
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
        # NaN/Infinity are not JSON; other readers would choke on Python's extension.
        return json.dumps(payload, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TrajectoryFormatError(
            f"cannot serialize {kind} for task {record.task_id!r}: {e}. Keep info/timings "
            "values JSON-native (str, int, finite float, bool, None, list, dict)"
        ) from e


def _decode(line: str, where: str) -> Group | Trajectory:
    try:
        payload = json.loads(line)
    except json.JSONDecodeError as e:
        raise TrajectoryFormatError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(payload, dict) or "schema_version" not in payload:
        raise TrajectoryFormatError(f"{where}: not an rlrf trajectory record")
    version = payload.pop("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise TrajectoryFormatError(
            f"{where}: written with trajectory schema version {version}, but this rlrf reads "
            f"versions up to {SCHEMA_VERSION}; upgrade rlrf to read it"
        )
    kind = payload.pop("type", None)
    try:
        if kind == "group":
            return Group.from_dict(payload)
        if kind == "trajectory":
            return Trajectory.from_dict(payload)
    except (KeyError, TypeError) as e:
        raise TrajectoryFormatError(f"{where}: missing or malformed field ({e!r})") from e
    raise TrajectoryFormatError(f"{where}: unknown record type {kind!r}")


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
