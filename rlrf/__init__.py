"""rlrf: Reinforcement Learning with Rich Feedback.

Environments (subclasses of :class:`RLRFEnv`) return a reward plus typed :class:`Feedback`;
algorithms (``algorithms.grpo``, ``algorithms.sdpo``) consume one trajectory format
(:class:`Trajectory`, :class:`Group`). ``import rlrf`` is light: it does not import torch.

>>> import rlrf
>>> env = rlrf.make("rlrf/Arithmetic-v0")
>>> prompt, info = env.reset(seed=0)
>>> isinstance(env.step_result("<answer>3</answer>").reward, float)
True
"""

from rlrf import _builtin_envs  # noqa: F401  (registers the built-in ids; imports no env code)
from rlrf.checker import check_env
from rlrf.env import (
    ChatSpace,
    Message,
    Outcome,
    ResponseSpace,
    RLRFEnv,
    StepResult,
    user_prompt,
)
from rlrf.errors import (
    ConfigError,
    EnvCheckError,
    EnvError,
    EnvNotFoundError,
    RLRFError,
    RLRFWarning,
)
from rlrf.feedback import (
    ErrorDetails,
    Feedback,
    FeedbackKind,
    JudgeDetails,
    SchemaViolation,
    TestCaseDetails,
    ToolCallDetails,
    render_feedback,
    tokenize_feedback,
    truncate_text,
)
from rlrf.registration import (
    BuiltinOverrideWarning,
    EnvSpec,
    load_plugins,
    make,
    pprint_registry,
    register,
    registry,
    spec,
)
from rlrf.sampling import OpenAIBackend, Sample, SamplingBackend, SamplingParams
from rlrf.trajectory import (
    Group,
    Trajectory,
    TrajectoryWriter,
    Turn,
    read_trajectories,
    write_trajectories,
)
from rlrf.wrappers import CapFeedback, DropFeedback, FeedbackWrapper, RedactFeedback, Wrapper

__version__ = "0.1.0"

__all__ = [
    "BuiltinOverrideWarning",
    "CapFeedback",
    "ChatSpace",
    "ConfigError",
    "DropFeedback",
    "EnvCheckError",
    "EnvError",
    "EnvNotFoundError",
    "EnvSpec",
    "ErrorDetails",
    "Feedback",
    "FeedbackKind",
    "FeedbackWrapper",
    "Group",
    "JudgeDetails",
    "Message",
    "OpenAIBackend",
    "Outcome",
    "RLRFEnv",
    "RLRFError",
    "RLRFWarning",
    "RedactFeedback",
    "ResponseSpace",
    "Sample",
    "SamplingBackend",
    "SamplingParams",
    "SchemaViolation",
    "StepResult",
    "TestCaseDetails",
    "ToolCallDetails",
    "Trajectory",
    "TrajectoryWriter",
    "Turn",
    "Wrapper",
    "check_env",
    "load_plugins",
    "make",
    "pprint_registry",
    "read_trajectories",
    "register",
    "registry",
    "render_feedback",
    "spec",
    "tokenize_feedback",
    "truncate_text",
    "user_prompt",
    "write_trajectories",
]
