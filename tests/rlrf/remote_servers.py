"""Servers for the rlrf.remote tests: rlrf envs to serve, plain OpenEnv envs rlrf did not write.

Every server listens on 127.0.0.1 on a free port, in a thread, and is stopped by its context
manager.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from openenv.core.env_server.http_server import create_fastapi_app
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field

import rlrf
from rlrf import (
    ErrorDetails,
    Feedback,
    FeedbackKind,
    JudgeDetails,
    Outcome,
    RLRFEnv,
    SchemaViolation,
    TestCaseDetails,
    ToolCallDetails,
)

TEACHER_ONLY = "TEACHER-ONLY: the intended answer involves carrying the one"

RICH_FEEDBACK = (
    Feedback(FeedbackKind.WRONG_ANSWER, "2 3 gave 6", TestCaseDetails("2 3", "5", "6"), "tests"),
    Feedback(
        FeedbackKind.RUNTIME_ERROR,
        "ZeroDivisionError at line 3",
        ErrorDetails("ZeroDivisionError", "division by zero", 3, "x = 1 / 0", "0"),
        "runner",
    ),
    Feedback(
        FeedbackKind.TOOL_VALIDATION,
        "bad argument",
        ToolCallDetails("search", (SchemaViolation("/q", "not a string", "type"),)),
    ),
    Feedback(FeedbackKind.JUDGE_CRITIQUE, "café: too vague", JudgeDetails(0.25, 1.0, "judge:x")),
    Feedback(FeedbackKind.OTHER, TEACHER_ONLY, source="teacher"),
)


class RichEnv(RLRFEnv):
    """Gymnasium style, two turns: all feedback details types, one item for the teacher only.

    The chat gets "Try again." after the first turn; the teacher-only item is only in info.
    """

    max_turns = 2

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._n = int(self.np_random.integers(100))
        self._chat = [{"role": "user", "content": f"Add one to {self._n}."}]
        self._turns = 0
        return list(self._chat), {"task_id": str(self._n), "split": "train"}

    def step(self, action):
        self._turns += 1
        right = action.strip() == str(self._n + 1)
        self._chat = [*self._chat, {"role": "assistant", "content": action}]
        done = right or self._turns >= 2
        if not done:
            self._chat.append({"role": "user", "content": "Try again."})
        feedback = () if right else RICH_FEEDBACK
        info = {"feedback": feedback, "extra": {"array": (1, 2.5), "note": "kept"}}
        return list(self._chat), 1.0 if right else 0.0, done, False, info


class MissingRewardEnv(RLRFEnv):
    """Task style: the reward can never be computed (a judge that is down)."""

    def task_ids(self, split="train"):
        return ["t0", "t1"]

    def prompt(self, task_id):
        return [{"role": "user", "content": f"Task {task_id}."}]

    def evaluate(self, task_id, response, history=()):
        return Outcome(None, Feedback(FeedbackKind.OTHER, "the judge is down"))


class RaisingEnv(RLRFEnv):
    """Task style; grading the response "boom" raises (a bug in the env)."""

    def task_ids(self, split="train"):
        return ["t0"]

    def prompt(self, task_id):
        return [{"role": "user", "content": "Say anything."}]

    def evaluate(self, task_id, response, history=()):
        if response == "boom":
            raise ZeroDivisionError("the env broke")
        return Outcome(1.0)


def register_test_envs() -> None:
    rlrf.register("remote-test/Rich-v0", RichEnv, override=True)
    rlrf.register("remote-test/MissingReward-v0", MissingRewardEnv, override=True)
    rlrf.register("remote-test/Raising-v0", RaisingEnv, override=True)


# ---- plain OpenEnv envs (no rlrf inside) ------------------------------------------------------


class MessageAction(Action):
    message: str = Field(..., description="What to say")


class PromptObservation(Observation):
    prompt: str = ""


class SeedlessEnv(Environment):
    """Ignores the seed: every reset gives the next question."""

    SUPPORTS_CONCURRENT_SESSIONS = True
    counter = 0

    def reset(self, seed=None, episode_id=None, **kwargs):
        SeedlessEnv.counter += 1
        return PromptObservation(prompt=f"Question number {SeedlessEnv.counter}?")

    def step(self, action, timeout_s=None, **kwargs):
        return PromptObservation(prompt="ok", reward=1.0, done=True)

    @property
    def state(self):
        return State()


class NullRewardEnv(Environment):
    """Rewards that cannot be trusted: null on the first step, NaN on the second."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def reset(self, seed=None, episode_id=None, **kwargs):
        self._n = 0
        return PromptObservation(prompt="Say something.")

    def step(self, action, timeout_s=None, **kwargs):
        self._n += 1
        reward = None if self._n == 1 else float("nan")
        return PromptObservation(
            prompt=f"heard {action.message}",
            reward=reward,
            done=self._n >= 2,
            metadata={"feedback": "the grader crashed"},
        )

    @property
    def state(self):
        return State()


class FileAction(Action):
    command: str = Field(..., description="A shell command")
    path: str = Field(..., description="Where to run it")


class TwoFieldEnv(Environment):
    """An action with two required text fields: the response's place is not obvious."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def reset(self, seed=None, episode_id=None, **kwargs):
        return PromptObservation(prompt="List the files.")

    def step(self, action, timeout_s=None, **kwargs):
        return PromptObservation(
            prompt=f"ran {action.command} in {action.path}", done=True, reward=0.5
        )

    @property
    def state(self):
        return State()


def openenv_app(env_cls: type[Environment], action_cls: type[Action]) -> Any:
    return create_fastapi_app(env_cls, action_cls, PromptObservation, max_concurrent_envs=4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 in a thread; yield its URL; stop it afterwards."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
