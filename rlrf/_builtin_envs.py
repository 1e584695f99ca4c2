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
    "rlrf/CodeRepair-v0",
    "envs.code_repair:CodeRepairEnv",
    description="Multi-turn code repair (stateful): revise or edit a program from test feedback",
)
register(
    "rlrf/HumanEval-v0",
    "envs.code:CodeEnv",
    kwargs={"dataset": "humaneval"},
    description="HumanEval (164 problems); failed-assertion / runtime-error feedback",
)
register(
    "rlrf/ToolUse-v0",
    "envs.tool_use:ToolUseEnv",
    description="Tool calls validated with JSON Schema against ground truth; multi-turn tools",
)
register(
    "rlrf/BFCL-v0",
    "envs.bfcl:BFCLEnv",
    kwargs={"categories": ["simple", "multiple", "parallel"]},
    description="BFCL simple/multiple/parallel function calling (needs bfcl-eval --no-deps)",
)
register(
    "rlrf/Judge-v0",
    "envs.judge:JudgeEnv",
    description="LLM-judge score and critique from any OpenAI-compatible endpoint",
)
register(
    "rlrf/MCQ-v0",
    "envs.science:MultipleChoiceEnv",
    description="Multiple-choice science QA; 1/0 reward, explanation feedback if any",
)
register(
    "rlrf/ReasoningGym-v0",
    "envs.reasoning:ReasoningGymEnv",
    kwargs={"dataset": "chain_sum"},
    description="reasoning-gym procedural tasks (any dataset by name), score_answer reward",
)
