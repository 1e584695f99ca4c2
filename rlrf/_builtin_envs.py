"""The ids of the environments that ship with rlrf (entry points are imported lazily)."""

from rlrf.registration import register

register(
    "rlrf/Arithmetic-v0",
    "envs.arithmetic:ArithmeticEnv",
    description="Integer arithmetic; feedback says whether the answer is too high or too low",
)
