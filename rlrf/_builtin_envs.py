"""The ids of the environments that ship with rlrf (entry points are imported lazily)."""

from rlrf.registration import register

register(
    "rlrf/Arithmetic-v0",
    "envs.arithmetic:ArithmeticEnv",
    description="Integer arithmetic; feedback says whether the answer is too high or too low",
)
register(
    "rlrf/Code-v0",
    "envs.code:CodeEnv",
    kwargs={"dataset": "shipped"},
    description="Competitive programming with judge-style feedback; dataset=PATH loads "
    "LiveCodeBench JSONL",
)
register(
    "rlrf/HumanEval-v0",
    "envs.code:CodeEnv",
    kwargs={"dataset": "humaneval"},
    description="HumanEval (164 problems); failed-assertion / runtime-error feedback",
)
