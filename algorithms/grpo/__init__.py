"""GRPO: group-relative policy optimization, the baseline that SDPO is compared against.

The algorithm, one step at a time (all math below is pure functions of tensors):

1. Sample a group of G rollouts y_1..y_G for each prompt x with the current policy, which
   becomes π_old; keep its per-token log-probs.
2. Advantage per rollout (:func:`group_advantages`): A_i = r_i − mean_j r_j over the group,
   optionally divided by the group's or the batch's reward standard deviation. A group whose
   rewards are all equal gets exactly A = 0 (and can be dropped:
   :func:`groups_with_signal`).
3. Per response token, the clipped surrogate (:func:`policy_loss`):
   ρ_t = exp(log π_θ(y_t) − log π_old(y_t)),
   ℓ_t = −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i),
   plus β · k3(π_θ ‖ π_ref) when a frozen reference is given, with
   k3 = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1.
4. Aggregation over tokens (:func:`aggregate`), named by its normalizer: ``token_mean``,
   ``seq_mean_token_mean`` (the original GRPO), ``seq_mean_token_sum_norm`` (Dr. GRPO);
   :func:`aggregation_weights` gives the same aggregation as per-token weights.

Where it lives: the math (steps 2-4) is shared with SDPO and lives in :mod:`algorithms.losses`;
what the trainer calls is :class:`GRPOObjective` (:mod:`algorithms.grpo.objective`, an
:class:`algorithms.objective.Objective`): rows with their advantages
(:func:`~algorithms.losses.rollout_advantages`), the aggregation's normalizer summed over the
whole mini-batch, and the loss above with the frozen reference's log-probs when
``kl_coef > 0``. The options are :class:`GRPOConfig` and the presets are registered in
:mod:`algorithms.grpo.config`, the same way a third-party algorithm registers.

Departures from the paper (DeepSeekMath GRPO) and why:

- The default advantage is NOT divided by the group std (``advantage_scale="none"``), as in the
  SDPO paper's GRPO baseline and Dr. GRPO: std scaling over-weights near-uniform groups.
- The default aggregation is ``token_mean`` over the WHOLE batch (every micro-batch and every
  process), not a mean of per-sequence means; long responses are not down-weighted per token.
- Exact gradient accumulation: every aggregation takes an explicit ``normalizer`` (the
  whole batch's token count, sequence count, or B · L_max). A batch split into any number of
  micro-batches, each given the same global normalizer, sums to exactly the one-call loss.
  Implementations that average per micro-batch get a different loss for the same batch.
- ε_low and ε_high are separate (DAPO's clip-higher, e.g. 0.28 for ε_high).
- The KL-to-reference term uses the k3 estimator inside the per-token loss (as in the
  paper) but is off by default (β = 0), as in the SDPO paper's baseline.
- Masked positions (prompt, padding) are removed with ``torch.where`` before any
  exponentiation, so garbage values there can never produce inf/NaN or gradient.
- Multi-turn episodes (DeepSeekMath's GRPO is single-turn): every assistant turn is a row
  trained with its EPISODE's advantage, A_i = R_i − mean_j R_j where R is the return (the
  sum of the turns' rewards), the same for all of episode i's turns. The group baseline is
  defined over whole episodes of one task, and turn-level returns would need a value
  function or per-turn baselines that the G episodes do not give (their turn k are
  different states). An episode's turns all count in the aggregation (``token_mean``: each
  token once; ``seq_mean_token_mean``: each turn is one sequence). What the env wrote
  (observations, tool results) is in the rows' prompts only, never a trained token.
"""

from __future__ import annotations

import importlib
from typing import Any

from algorithms.grpo.config import AdvantageScale, Aggregation, GRPOConfig, GRPOTrainConfig

# torch-bearing names, imported on first use (PEP 562) so the configs stay torch-free
_LAZY = {
    **{
        name: "algorithms.losses"
        for name in (
            "aggregate",
            "aggregation_weights",
            "default_normalizer",
            "group_advantages",
            "groups_with_signal",
            "k3_kl",
            "policy_loss",
            "rollout_advantages",
        )
    },
    "GRPOObjective": "algorithms.grpo.objective",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'algorithms.grpo' has no attribute {name!r}")


__all__ = [
    "AdvantageScale",
    "Aggregation",
    "GRPOConfig",
    "GRPOObjective",
    "GRPOTrainConfig",
    "aggregate",
    "aggregation_weights",
    "default_normalizer",
    "group_advantages",
    "groups_with_signal",
    "k3_kl",
    "policy_loss",
    "rollout_advantages",
    "train",
]


def train(env: Any = None, model: Any = None, config: Any = None, **kwargs: Any) -> Any:
    """Train with GRPO; see :func:`algorithms.engine.trainer.train`.

    ``config`` is a GRPOConfig or GRPOTrainConfig; ``kwargs`` override any config field by
    name (``lr=1e-5``).
    From the shell: ``python -m algorithms.grpo --env rlrf/Code-v0 --model PATH ...``.
    """
    from algorithms.engine.trainer import train as _train

    return _train(env, model, config, algorithm="grpo", **kwargs)

