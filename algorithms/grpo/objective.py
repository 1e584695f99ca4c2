"""GRPO's objective: what the trainer calls (see :mod:`algorithms.grpo`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from algorithms.losses import normalizer_of, policy_loss, rollout_advantages

if TYPE_CHECKING:
    from algorithms.config import TrainConfig
    from algorithms.engine.batching import Batch, Row
    from algorithms.grpo.config import GRPOConfig, GRPOTrainConfig
    from algorithms.objective import Encode, Scorer
    from rlrf.trajectory import Group

__all__ = ["GRPOObjective"]


class GRPOObjective:
    """GRPO as an :class:`algorithms.objective.Objective`: clipped surrogate, optional KL.

    Every rollout with a reward trains, every assistant turn of it as one row with the
    episode's group-relative advantage (the return's, see the module docstring); with
    ``kl_coef > 0`` a frozen copy of the initial model is the reference.
    """

    metric_names = (
        "train/policy_objective",
        "train/clip_frac",
        "train/approx_kl_old",
        "rollout/zero_adv_groups",
    )

    def __init__(self, config: GRPOTrainConfig | TrainConfig, model: torch.nn.Module) -> None:
        """Keep the config; copy ``model`` as the frozen reference when ``kl_coef > 0``."""
        self.config = config
        self.grpo: GRPOConfig = config.grpo  # type: ignore[attr-defined]
        self.reference: torch.nn.Module | None = None
        if self.grpo.kl_coef > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    def rows(self, groups: list[Group], encode: Encode) -> tuple[list[Row], dict[str, float]]:
        """Every rollout with a reward (groups without signal dropped if so configured)."""
        from algorithms.objective import rollout_rows, rollouts_with_reward

        keys = rollouts_with_reward(groups)
        advantages, keep, zero_groups = rollout_advantages(groups, keys, self.grpo)
        rows = rollout_rows(groups, sorted(keep), encode, advantages=advantages)
        return rows, {"zero_adv_groups": zero_groups}

    def normalizers(self, rows: Sequence[Row]) -> dict[str, float]:
        """``pg``: the aggregation's normalizer (tokens, rows, or rows x max_new_tokens)."""
        return {"pg": normalizer_of(rows, self.grpo, self.config.max_new_tokens)}

    def loss(
        self, batch: Batch, norm: Mapping[str, float], scorer: Scorer, *, on_policy: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`policy_loss` on the student's log-probs (and the reference's, for the KL)."""
        from algorithms.scoring import response_hidden_states

        g = self.grpo
        hidden, _ = scorer.student_hidden(batch)
        lp = scorer.logprobs(hidden, batch.response_ids)
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref_hidden, _ = response_hidden_states(
                    self.reference, batch.prompts, batch.responses, pad=scorer.pad
                )
                ref = scorer.logprobs(ref_hidden, batch.response_ids, module=self.reference)
        return policy_loss(
            lp,
            batch.old_logprobs,
            batch.advantages,
            batch.mask,
            clip_low=g.clip_low,
            clip_high=g.clip_high,
            ref_logprobs=ref,
            kl_coef=g.kl_coef,
            aggregation=g.aggregation,
            normalizer=norm["pg"],
        )

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        """Nothing: the reference stays the initial model."""

    def rollout_metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """``rollout/zero_adv_groups``."""
        return {"rollout/zero_adv_groups": stats.get("zero_adv_groups", 0.0)}

    def state_dict(self) -> dict[str, Any]:
        """Nothing to keep: the reference is rebuilt from the initial model on resume."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""

