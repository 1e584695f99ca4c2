"""GRPO's options and its presets, registered like any algorithm (see :mod:`algorithms.registry`).

Torch-free: the command line reads it for ``--help`` without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from algorithms.config import TrainConfig, check_choice, validate_field_types
from algorithms.registry import Preset
from rlrf.errors import ConfigError

if TYPE_CHECKING:
    from algorithms.objective import Objective

__all__ = ["ALGORITHMS", "AdvantageScale", "Aggregation", "GRPOConfig", "GRPOTrainConfig"]

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
"""How per-token losses become one number (see :func:`algorithms.losses.aggregate`)."""

AdvantageScale = Literal["none", "group", "batch"]
"""What group-relative advantages are divided by (:func:`algorithms.losses.group_advantages`)."""


@dataclass
class GRPOConfig:
    """The loss options of GRPO (training options live in the trainer's shared config)."""

    advantage_scale: AdvantageScale = "none"
    """Divide A_i = r_i − mean by the reward std of its group ("group"), of the batch
    ("batch"), or not at all ("none", the paper's baseline)."""

    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 − ε_low."""

    clip_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + ε_high (DAPO's clip-higher uses 0.28)."""

    kl_coef: float = 0.0
    """β of the k3 KL penalty to the frozen initial model; 0 disables it (no reference kept)."""

    aggregation: Aggregation = "token_mean"
    """How per-token losses become one number, named by the normalizer: token_mean (Σℓ/Σm
    over the whole batch), seq_mean_token_mean (original GRPO), seq_mean_token_sum_norm
    (Dr. GRPO, Σℓ / (B · L_max))."""

    filter_zero_advantage_groups: bool = False
    """Drop groups whose rewards are all equal (A = 0 everywhere) before the update."""

    def __post_init__(self) -> None:
        validate_field_types(self)
        check_choice("advantage_scale", self.advantage_scale, AdvantageScale)
        check_choice("aggregation", self.aggregation, Aggregation)
        if not 0.0 <= self.clip_low < 1.0:
            raise ConfigError(f"clip_low must be in [0, 1), got {self.clip_low}")
        if self.clip_high < 0.0:
            raise ConfigError(f"clip_high must be >= 0, got {self.clip_high}")
        if self.kl_coef < 0.0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")



@dataclass
class GRPOTrainConfig(TrainConfig):
    """GRPO: the shared training options plus GRPO's loss options (``grpo``)."""

    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """GRPO's loss options."""

    @property
    def algorithm(self) -> str:
        """Name of the algorithm this config trains."""
        return "grpo"

    def build_objective(self, model: Any, tokenizer: Any) -> Objective:
        """Return :class:`algorithms.grpo.objective.GRPOObjective`."""
        from algorithms.grpo.objective import GRPOObjective

        return GRPOObjective(self, model)



    def fsdp2_refusals(self) -> list[str]:
        """The base refusals, plus the KL term (its frozen reference is not sharded)."""
        refusals = super().fsdp2_refusals()
        if self.grpo.kl_coef > 0:
            refusals.append(
                f"kl_coef={self.grpo.kl_coef} (the frozen reference model is not sharded); "
                "set kl_coef: 0, or use parallelism: ddp (the default) for the KL term"
            )
        return refusals


ALGORITHMS = (
    Preset(
        "grpo",
        GRPOTrainConfig,
        {"lr": 1e-6, "warmup_steps": 0},
        "GRPO, the paper's baseline (no std scaling, token mean, no KL)",
    ),
)
"""What ``rlrf train --algo grpo`` runs (registered by :mod:`algorithms.registry`)."""
