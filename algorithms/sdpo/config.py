"""SDPO's options and its presets (``sdpo``, ``sdpo-srf``), registered like any algorithm.

Torch-free: the command line reads it for ``--help`` without loading a model. The presets
are registered by :mod:`algorithms.registry` exactly as a third-party algorithm's are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from algorithms.config import TrainConfig, check_choice, validate_field_types
from algorithms.grpo.config import GRPOConfig
from algorithms.registry import Preset
from rlrf.errors import ConfigError

if TYPE_CHECKING:
    from algorithms.objective import Objective

__all__ = [
    "ALGORITHMS",
    "Demonstration",
    "LossLevel",
    "SDPOConfig",
    "SDPOTrainConfig",
    "TeacherMode",
]

TeacherMode = Literal["ema", "trust_region", "frozen", "live"]
"""Which weights the self-teacher scores with (see :class:`algorithms.sdpo.teacher.Teacher`)."""

LossLevel = Literal["logit", "token"]
"""Top-K logit distillation, or a token-level policy gradient."""

Demonstration = Literal["first", "random", "shortest"]
"""Which successful sibling becomes the teacher's solution."""


@dataclass
class SDPOConfig:
    """The options of SDPO (teacher context, teacher weights, distillation loss).

    The field defaults are the paper's rich-feedback setting with pure SDPO (``grpo_mix=0``).
    Named settings: :meth:`rich_feedback` (the paper's code/tool-use setting) and
    :meth:`successful_rollout` (the ``sdpo-srf`` preset's loss options: no environment
    feedback, a successful sibling's solution is the only teacher context; also exported as
    ``algorithms.sdpo.SRF``).
    """

    preset: ClassVar[str | None] = None
    """The preset this config was made from (:meth:`successful_rollout` sets ``"sdpo-srf"``;
    not a field): ``train(config=...)`` then takes that preset's training options too."""

    success_threshold: float = 1.0
    """A sibling rollout with reward >= this is a correct solution (reference config: 0.5)."""

    use_solution: bool = True
    """Put another successful rollout of the group (see ``demonstration``) into the teacher
    context."""

    demonstration: Demonstration = "first"
    """Which successful sibling (reward >= ``success_threshold``, j ≠ i) is the solution:
    "first" in group order (the paper's reference code), "random" (uniform, seeded by the
    rollout's sampling seed, policy version, task and index: reproducible and resumable), or
    "shortest" (fewest characters after stripping reasoning; ties to the first). Other SDPO
    users report "shortest" preceding collapse; "first" stays the default until measured."""

    use_feedback: bool = True
    """Put the environment's feedback on the student's own attempt into the teacher context."""

    feedback_only_without_solution: bool = False
    """Show feedback only when no solution exists (the reference code's behaviour); the default
    shows both, which the paper's ablation found best."""

    strip_reasoning: bool = True
    """Remove ``<think>…</think>`` blocks from a solution before showing it to the teacher."""

    teacher_max_prompt_tokens: int = 2048
    """Cap on the teacher prompt in TOKENS (after the chat template); longer prompts lose
    tokens from the left of the prompt body, never the instruction or the assistant header."""

    teacher: TeacherMode = "ema"
    """Teacher weights: "ema" of the student, "trust_region" (lerp of frozen-initial and current
    logits), "frozen" (initial model), "live" (the current student, unregularized)."""

    teacher_tau: float = 0.01
    """τ: EMA rate θ' ← (1−τ)θ' + τθ per optimizer step, or the trust-region lerp weight."""

    top_k: int = 20
    """K: number of the student's largest logits distilled per position (plus a tail bucket)."""

    alpha: float = 1.0
    """Divergence: 0 forward KL(q‖p), 1 reverse KL(p‖q), in between generalized JSD (0.5 = JSD)."""

    is_clip: float = 2.0
    """Upper clip of the importance weight exp(log π_θ(y) − log π_old(y)) on each token."""

    loss_level: LossLevel = "logit"
    """ "logit": top-K distillation; "token": policy gradient with per-token advantage
    log q(y_t) − log p(y_t) on the sampled token only."""

    grpo_mix: float = 0.0
    """λ of the paper's Eq. 3: λ · A_GRPO + (1 − λ) · A_SDPO; 0 is pure SDPO (0.9 helped at
    0.6B; the ``sdpo`` preset uses 0.9)."""

    feedback_max_chars: int = 2000
    """Cap on the rendered feedback text in characters (a visible truncation marker is added)."""

    def __post_init__(self) -> None:
        validate_field_types(self)
        check_choice("teacher", self.teacher, TeacherMode)
        check_choice("loss_level", self.loss_level, LossLevel)
        check_choice("demonstration", self.demonstration, Demonstration)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.teacher_tau <= 1.0:
            raise ConfigError(f"teacher_tau must be in (0, 1], got {self.teacher_tau}")
        if self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.is_clip <= 0.0:
            raise ConfigError(f"is_clip must be > 0, got {self.is_clip}")
        if not 0.0 <= self.grpo_mix <= 1.0:
            raise ConfigError(f"grpo_mix must be in [0, 1], got {self.grpo_mix}")
        if self.teacher_max_prompt_tokens < 1:
            raise ConfigError(
                f"teacher_max_prompt_tokens must be >= 1, got {self.teacher_max_prompt_tokens}"
            )
        if self.feedback_max_chars < 0:
            raise ConfigError(f"feedback_max_chars must be >= 0, got {self.feedback_max_chars}")
        if not (self.use_solution or self.use_feedback):
            raise ConfigError(
                "use_solution and use_feedback are both False, so no rollout could ever get a "
                "teacher context; enable at least one"
            )

    @classmethod
    def rich_feedback(cls, **overrides: Any) -> SDPOConfig:
        """Return the paper's rich-feedback setting: reverse KL (α = 1), K = 20, EMA τ = 0.01."""
        return cls(**{"alpha": 1.0, "top_k": 20, "teacher_tau": 0.01, **overrides})

    @classmethod
    def successful_rollout(cls, **overrides: Any) -> SDPOConfig:
        """Return the ``sdpo-srf`` preset's SDPO options: no env feedback, JSD, K = 100, τ = 0.05.

        It needs nothing but a scalar reward, so it runs on any RLVR environment. The result
        remembers the preset (:attr:`preset`), so ``sdpo.train(config=...)`` also takes the
        preset's learning rate and warm-up.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in _SRF_VALUES.items() if k in names}
        config = cls(**{**values, **overrides})
        config.preset = "sdpo-srf"  # type: ignore[misc]
        return config



@dataclass
class SDPOTrainConfig(TrainConfig):
    """SDPO: the shared training options plus SDPO's options (``sdpo``).

    ``grpo`` holds the clipping and advantage options used by the token-level variant
    (``loss_level="token"``) and by the GRPO mix (``grpo_mix > 0``).
    """

    sdpo: SDPOConfig = field(default_factory=SDPOConfig)
    """SDPO's options (teacher context, teacher weights, distillation loss)."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO options for the token-level variant and the GRPO mix."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # SDPO trains every rollout with a teacher signal and has no reference-model term
        if self.grpo.kl_coef > 0 or self.grpo.filter_zero_advantage_groups:
            raise ConfigError(
                "grpo.kl_coef and grpo.filter_zero_advantage_groups are GRPO-only options; "
                "SDPO ignores them: leave them at 0 / false or use --algo grpo"
            )

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains."""
        return "sdpo"

    def build_objective(self, model: Any, tokenizer: Any) -> Objective:
        """Return :class:`algorithms.sdpo.objective.SDPOObjective`."""
        from algorithms.sdpo.objective import SDPOObjective

        return SDPOObjective(self, model, tokenizer)



    def alarm_remedies(self) -> dict[str, str]:
        """The base remedies, plus SDPO's (applied by SDPOObjective.apply_remedy)."""
        remedies = {
            **super().alarm_remedies(),
            "raise_grpo_mix": "move grpo_mix halfway to 1 (more GRPO) at each rollback",
        }
        if self.sdpo.teacher == "ema":  # the other teachers do not move by themselves
            remedies["freeze_teacher"] = "stop the EMA teacher's updates"
        return remedies

    def fsdp2_refusals(self) -> list[str]:
        """The base refusals, plus the teachers that score with the student itself."""
        refusals = super().fsdp2_refusals()
        if self.sdpo.teacher in ("trust_region", "live"):
            refusals.append(
                f"teacher: {self.sdpo.teacher} (it scores with the student itself, without "
                "gradient, a data-dependent number of times, which sharded layers cannot do); "
                "use teacher: ema or frozen, or use parallelism: ddp (the default) for this "
                "teacher"
            )
        return refusals


_SRF_VALUES = {
    "lr": 1e-5,
    "warmup_steps": 10,
    "use_feedback": False,
    "use_solution": True,
    "alpha": 0.5,
    "top_k": 100,
    "teacher_tau": 0.05,
}

ALGORITHMS = (
    # The README's demo measured λ = 0.9 as the winner at 135M (held-out 0.266 -> 0.719,
    # against 0.266 -> 0.234 for pure SDPO), so the `sdpo` name means the mixed loss;
    # pure SDPO is `grpo_mix=0` (or SDPOConfig() from Python).
    Preset(
        "sdpo",
        SDPOTrainConfig,
        {"lr": 1e-6, "warmup_steps": 0, "grpo_mix": 0.9},
        "SDPO with rich feedback, mixed with GRPO as in the paper's Eq. 3 (λ = 0.9)",
    ),
    Preset(
        "sdpo-srf",
        SDPOTrainConfig,
        _SRF_VALUES,
        "the successful-rollout variant (no env feedback; paper Table 12: JSD, K=100, τ=0.05)",
    ),
)
"""What ``rlrf train --algo sdpo`` and ``--algo sdpo-srf`` run."""
