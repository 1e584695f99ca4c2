"""SDPO as the trainer calls it: rows with teacher prompts, chunked teacher scoring, the loss.

:class:`SDPOObjective` implements :class:`algorithms.objective.Objective` for every SDPO
variant: logit-level (top-K distillation) or token-level, pure or mixed with GRPO
(``grpo_mix``, the paper's Eq. 3), with environment feedback or only successful siblings
(the successful-rollout variant is a config, not a class).

Rows: one per assistant turn of every rollout with a reward; each turn gets its own
teacher context (:func:`~algorithms.sdpo.contexts.turn_teacher_contexts`: the chat up to
that turn, the feedback after it, a successful sibling's final answer; recorded in
``trajectory.info["teacher_context"]`` for the first turn and ``turn.info`` for every turn of
a multi-turn episode), tokenized and left-truncated by
:func:`~algorithms.sdpo.contexts.encode_teacher_prompt`. Pure SDPO trains the turns that
have one; with ``grpo_mix > 0`` every turn trains (the GRPO part). The env's own messages
are in the rows' prompts only, never in a trained response.

The logit-level loss runs on hidden states: the student's final hidden states are computed
once with gradient; per chunk of ``logit_chunk_size`` response positions the student logits
give the top-K indices (no gradient), the teacher's log-softmax over the full vocabulary is
gathered at those indices (no gradient), and
:func:`~algorithms.sdpo.loss.distillation_loss` runs under ``torch.utils.checkpoint`` so
the chunk's ``[N, V]`` logits are recomputed in the backward pass instead of stored: peak
memory does not grow with ``T x V``. Only the N positions that are distilled (rows with a
teacher, inside the response) go through the LM head. The teacher's forward runs each
group's common teacher-prompt prefix once (the question, often a sibling's solution) and
reuses its keys/values for every row (:func:`algorithms.scoring.shared_prefix_hidden_states`).

Normalizers: ``pg`` (GRPO's aggregation normalizer, for the token-level loss and the mix)
and ``sdpo`` (tokens of rows with a teacher, the distillation's token mean), both summed
over the whole mini-batch by the trainer. Pure SDPO's logit-level loss is a token mean over
the distilled tokens (``sdpo``). With the GRPO mix (the paper's Eq. 3, λ · A_GRPO + (1 − λ) ·
A_SDPO per token) BOTH terms are aggregated by GRPO's aggregation and ``pg``, at the logit
level (the distillation term weighted token by token with
:func:`algorithms.losses.aggregation_weights`) as at the token level (mixed advantages in one
surrogate): a row without a teacher adds 0 to the SDPO term but counts in the normalizer.
The statistics (``divergence``, ``entropy``, ...) stay token means over the distilled tokens.

Monitors (:mod:`algorithms.engine.monitors`): every step logs ``train/divergence`` and
``train/entropy`` (the student's entropy on the distilled tokens, from the logits the top-K
selection computes anyway; the token-level loss runs one extra LM-head pass without gradient
for them), ``rollout/teacher_signal_frac``, and the trainer's response length and gradient
norm; the trainer's live :class:`~algorithms.engine.monitors.StabilityMonitor` reads them from
the logged metrics (:mod:`algorithms.engine.guard`: warn, stop or roll back).

Remedies after a rollback (``on_alarm: rollback``, :meth:`SDPOObjective.apply_remedy`):
``raise_grpo_mix`` halves the distance of ``grpo_mix`` to 1 per rollback (0 → 0.5 → 0.75;
0.9 → 0.95), ``freeze_teacher`` stops the EMA teacher's updates.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from algorithms import losses
from algorithms.engine.batching import Row
from algorithms.objective import rollout_rows, rollouts_with_reward
from algorithms.scoring import lm_head_logits, shared_prefix_hidden_states
from algorithms.sdpo.contexts import encode_teacher_prompt, turn_teacher_contexts
from algorithms.sdpo.loss import (
    distillation_loss,
    divergence,
    entropy_from_logits,
    mixed_advantages,
    student_topk_indices,
    token_level_advantages,
    topk_with_tail,
)
from algorithms.sdpo.teacher import Teacher
from rlrf.errors import ConfigError

if TYPE_CHECKING:
    from algorithms.engine.batching import Batch
    from algorithms.objective import Encode, Scorer, TurnKey
    from algorithms.sdpo.config import SDPOTrainConfig
    from rlrf.trajectory import Group

__all__ = ["SDPOObjective", "SDPORow", "has_teacher"]


@dataclass
class SDPORow(Row):
    """A training row with its turn's teacher prompt (None: no solution and no feedback)."""

    teacher_prompt_ids: list[int] | None = None


def has_teacher(batch: Batch) -> torch.Tensor:
    """[B] bool on the batch's device: which rows have a teacher prompt.

    Computed once per batch (the loss asks for it several times per micro-batch).
    """
    cached = batch.__dict__.get("_has_teacher")
    if cached is None:
        flags = [getattr(r, "teacher_prompt_ids", None) is not None for r in batch.rows]
        cached = torch.tensor(flags, dtype=torch.bool, device=batch.mask.device)
        batch.__dict__["_has_teacher"] = cached
    return cached


class SDPOObjective:
    """SDPO (every variant) as an :class:`algorithms.objective.Objective`.

    Args:
        config: the run's :class:`~algorithms.config.SDPOTrainConfig`.
        model: the unwrapped student; the teacher copies it (``ema``, ``frozen``,
            ``trust_region``) or scores with it (``live``).
        tokenizer: encodes the teacher prompts with the student's chat template.

    """

    metric_names = (
        "train/divergence",
        "train/entropy",
        "train/is_weight",
        "train/teacher_tail_mass",
        "train/logprob_gap",
        "rollout/teacher_signal_frac",
        "rollout/no_teacher_signal",
        "rollout/zero_adv_groups",
    )

    def __init__(self, config: SDPOTrainConfig, model: torch.nn.Module, tokenizer: Any) -> None:
        """Build the teacher from the student's current weights."""
        self.config = config
        self.sdpo = config.sdpo
        self.grpo = config.grpo
        self.tokenizer = tokenizer
        self.teacher = Teacher(model, config.sdpo.teacher, config.sdpo.teacher_tau)
        self.teacher_frozen = False  # the freeze_teacher remedy

    # --- rows --------------------------------------------------------------------------

    def rows(self, groups: list[Group], encode: Encode) -> tuple[list[Row], dict[str, float]]:
        """Rows with teacher prompts, one per assistant turn; records the contexts in info.

        Every turn gets its own teacher context
        (:func:`~algorithms.sdpo.contexts.turn_teacher_contexts`). The first turn's is
        recorded in ``trajectory.info["teacher_context"]`` (with ``"teacher_prompt_tokens"``);
        a multi-turn episode also records each turn's in ``turn.info``. Pure SDPO trains the
        turns that have a teacher; with ``grpo_mix > 0`` every turn trains. The counts
        ``teacher_signal`` / ``no_teacher_signal`` are TURNS of rollouts with a reward (for
        single-turn envs, rollouts).
        """
        s = self.sdpo
        keys = rollouts_with_reward(groups)
        # GRPO's advantages feed the token-level loss and the mix (SDPOTrainConfig refuses
        # filter_zero_advantage_groups, so every rollout with a reward is kept)
        advantages, keep, zero_groups = losses.rollout_advantages(groups, keys, self.grpo)
        contexts: dict[TurnKey, list[int] | None] = {}
        for gi, g in enumerate(groups):
            for ti, (traj, turn_ctxs) in enumerate(
                zip(g.trajectories, turn_teacher_contexts(g, s), strict=True)
            ):
                traj.info["teacher_context"] = turn_ctxs[0] if turn_ctxs else None
                multi_turn = len(traj.turns) > 1
                for k, ctx in enumerate(turn_ctxs):
                    ids = None
                    if ctx is not None:
                        ids = encode_teacher_prompt(
                            self.tokenizer,
                            ctx,
                            max_tokens=s.teacher_max_prompt_tokens,
                            enable_thinking=False,
                        )
                        if k == 0:
                            traj.info["teacher_prompt_tokens"] = len(ids)
                    if multi_turn:
                        traj.turns[k].info["teacher_context"] = ctx
                        if ids is not None:
                            traj.turns[k].info["teacher_prompt_tokens"] = len(ids)
                    contexts[(gi, ti, k)] = ids
        turn_keys = [
            (gi, ti, k) for gi, ti in keep for k in range(len(groups[gi].trajectories[ti].turns))
        ]
        with_ctx = sum(contexts[key] is not None for key in turn_keys)
        stats = {
            "zero_adv_groups": zero_groups,
            "teacher_signal": float(with_ctx),
            "no_teacher_signal": float(len(turn_keys) - with_ctx),
        }
        rows = [
            SDPORow(**vars(r), teacher_prompt_ids=contexts.get((r.group, r.trajectory, r.turn)))
            for r in rollout_rows(groups, sorted(keep), encode, advantages=advantages)
        ]
        if s.grpo_mix == 0:
            # pure SDPO: a turn without a teacher has no loss at all; the GRPO mix trains it
            rows = [r for r in rows if r.teacher_prompt_ids is not None]
        return rows, stats

    def normalizers(self, rows: Sequence[Row]) -> dict[str, float]:
        """``pg``: GRPO's normalizer; ``sdpo``: response tokens of rows with a teacher."""
        teacher_tokens = sum(
            len(r.response_ids) for r in rows if getattr(r, "teacher_prompt_ids", None) is not None
        )
        return {
            "pg": losses.normalizer_of(rows, self.grpo, self.config.max_new_tokens),
            "sdpo": float(teacher_tokens),
        }

    # --- the loss ------------------------------------------------------------------------

    def loss(
        self, batch: Batch, norm: Mapping[str, float], scorer: Scorer, *, on_policy: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logit-level or token-level loss (mixed with GRPO's by ``grpo_mix``)."""
        if self.sdpo.loss_level == "token":
            loss, stats = self._token_loss(batch, norm, scorer, on_policy)
        else:
            loss, stats = self._logit_loss(batch, norm, scorer, on_policy)
        return loss, stats

    def _teacher_hidden(
        self, batch: Batch, scorer: Scorer
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher hidden states of the rows that have a teacher prompt (no gradient)."""
        index = torch.nonzero(has_teacher(batch).cpu(), as_tuple=False)[:, 0]
        if index.numel() == 0:  # with grpo_mix > 0 a micro-batch may hold no teacher row
            return index.to(batch.mask.device), []
        rows = [batch.rows[i] for i in index.tolist()]
        prompts = [r.teacher_prompt_ids for r in rows]
        responses = [r.response_ids for r in rows]
        hiddens = []
        with torch.no_grad():
            for module in self.teacher.scoring_modules(scorer.lm):
                # a group's rows share most of their teacher prompt: run that prefix once
                h, _ = shared_prefix_hidden_states(
                    module,  # type: ignore[arg-type]
                    prompts,  # type: ignore[arg-type]
                    responses,
                    groups=[r.group for r in rows],
                    pad=scorer.pad,
                    max_batch_size=len(rows),
                )
                # The teacher rows may be a subset whose longest response is shorter than
                # the batch's: pad to the batch's width so chunks line up.
                width = batch.response_ids.shape[1]
                hiddens.append(torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1])))
        return index.to(batch.mask.device), hiddens

    def _teacher_chunk_logits(
        self, scorer: Scorer, hiddens: list[torch.Tensor], sl: slice, select: torch.Tensor
    ) -> torch.Tensor:
        """Teacher logits (float32, divided by the temperature) at the selected positions.

        ``select`` is ``[teacher rows, chunk]``; the result is ``[N, V]``, one row per
        selected position in row-major order (the order of boolean-mask indexing).
        """
        modules = self.teacher.scoring_modules(scorer.lm)
        logits = self.teacher.combine_logits(
            [
                lm_head_logits(m, h[:, sl][select]).float()
                for m, h in zip(modules, hiddens, strict=True)
            ]
        )
        return logits / scorer.temperature

    def _logit_loss(
        self, batch: Batch, norm: Mapping[str, float], scorer: Scorer, on_policy: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s, g = self.sdpo, self.grpo
        chunk_size = scorer.chunk_size
        hidden, mask = scorer.student_hidden(batch)
        t0 = time.perf_counter()
        t_index, t_hiddens = self._teacher_hidden(batch, scorer)
        teacher_s = time.perf_counter() - t0
        tmask = batch.mask & has_teacher(batch)[:, None]
        head = scorer.lm
        total = hidden.new_zeros((), dtype=torch.float32)
        stats: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        temperature = scorer.temperature
        k = min(s.top_k, head.config.vocab_size)
        # Eq. 3 under ONE normalizer: with the GRPO mix the distillation term is weighted
        # token by token exactly as GRPO aggregates its own (a row without a teacher adds 0
        # but counts), as the token-level path's mixed advantages are; pure SDPO is a token
        # mean over the distilled tokens
        mix_weights = None
        if s.grpo_mix > 0:
            mix_weights = losses.aggregation_weights(batch.mask, g.aggregation, norm["pg"])
        for start in range(0, hidden.shape[1], chunk_size):
            sl = slice(start, start + chunk_size)
            # Only the positions that are distilled (teacher rows, inside the response) go
            # through the LM head: padding and rows without a teacher would add nothing.
            valid = tmask[:, sl]
            if not bool(valid.any()):
                continue
            h = hidden[:, sl][valid][None]  # [1, N, H]
            ids = batch.response_ids[:, sl][valid][None]
            t0 = time.perf_counter()
            with torch.no_grad():
                s_logits = lm_head_logits(head, h.detach()).float() / temperature
                idx = student_topk_indices(s_logits, k)
                entropy = entropy_from_logits(s_logits).sum()  # the monitor, nearly free here
                del s_logits
                t_logits = self._teacher_chunk_logits(scorer, t_hiddens, sl, valid[t_index])[None]
                # the very ops distillation_loss applies to full teacher logits
                t_lse = torch.logsumexp(t_logits, dim=-1, keepdim=True)
                t_full = topk_with_tail(t_logits, idx, t_lse)
                t_topk, t_tail = t_full[..., :-1], t_full[..., -1]
                t_lp_y = (t_logits.gather(-1, ids[..., None]) - t_lse)[..., 0]
                del t_logits, t_full
            teacher_s += time.perf_counter() - t0
            old = None if on_policy else batch.old_logprobs[:, sl][valid][None]
            weights = None if mix_weights is None else mix_weights[:, sl][valid][None]

            def chunk_loss(
                h: torch.Tensor,
                idx: torch.Tensor = idx,
                t_topk: torch.Tensor = t_topk,
                t_tail: torch.Tensor = t_tail,
                t_lp_y: torch.Tensor = t_lp_y,
                old: torch.Tensor | None = old,
                ids: torch.Tensor = ids,
                weights: torch.Tensor | None = weights,
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                logits = lm_head_logits(head, h).float() / temperature
                return distillation_loss(
                    logits,
                    None,
                    torch.ones_like(ids, dtype=torch.bool),
                    old,
                    ids,
                    teacher_topk_logprobs=t_topk,
                    teacher_tail_logprobs=t_tail,
                    topk_indices=idx,
                    teacher_sampled_logprobs=t_lp_y,
                    alpha=s.alpha,
                    is_clip=s.is_clip,
                    normalizer=norm["sdpo"],
                    token_weights=weights,
                )

            if torch.is_grad_enabled():
                loss_c, stats_c = checkpoint(chunk_loss, h, use_reentrant=False)
            else:
                loss_c, stats_c = chunk_loss(h)
            total = total + loss_c
            for key, value in stats_c.items():
                stats[key] = stats[key] + value.detach().float().cpu()
            stats["entropy"] = stats["entropy"] + entropy.float().cpu() / norm["sdpo"]
        stats["timing/teacher"] = torch.tensor(teacher_s)
        if s.grpo_mix > 0:
            lp = scorer.logprobs(hidden, batch.response_ids)
            pg_loss, pg_stats = losses.policy_loss(
                lp,
                batch.old_logprobs,
                batch.advantages,
                mask,
                clip_low=g.clip_low,
                clip_high=g.clip_high,
                aggregation=g.aggregation,
                normalizer=norm["pg"],
            )
            total = s.grpo_mix * pg_loss + (1.0 - s.grpo_mix) * total
            for key, value in pg_stats.items():
                stats[key] = value.detach().float().cpu()
        return total, dict(stats)

    def _token_loss(
        self, batch: Batch, norm: Mapping[str, float], scorer: Scorer, on_policy: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s, g = self.sdpo, self.grpo
        chunk_size = scorer.chunk_size
        hidden, mask = scorer.student_hidden(batch)
        lp = scorer.logprobs(hidden, batch.response_ids)
        t0 = time.perf_counter()
        t_index, t_hiddens = self._teacher_hidden(batch, scorer)
        t_lp_y = torch.zeros_like(lp, dtype=torch.float32)
        tmask = batch.mask & has_teacher(batch)[:, None]
        k = min(s.top_k, scorer.lm.config.vocab_size)
        monitor_sums = torch.zeros(2)  # divergence, entropy over the distilled tokens
        with torch.no_grad():
            for start in range(0, lp.shape[1], chunk_size):
                sl = slice(start, start + chunk_size)
                valid = tmask[:, sl]
                if bool(valid.any()):
                    t_logits = self._teacher_chunk_logits(scorer, t_hiddens, sl, valid[t_index])
                    t_lp = t_logits.log_softmax(-1)
                    ids = batch.response_ids[:, sl][valid]
                    t_lp_y[:, sl][valid] = t_lp.gather(-1, ids[:, None])[:, 0]
                    # monitors only: the student's distribution at the same positions (one
                    # more LM-head pass, without gradient) gives its entropy and the top-K
                    # divergence the logit-level loss would distill
                    h = hidden[:, sl][valid].detach()
                    s_logits = lm_head_logits(scorer.lm, h).float() / scorer.temperature
                    idx = student_topk_indices(s_logits, k)
                    d = divergence(
                        topk_with_tail(s_logits, idx), topk_with_tail(t_logits, idx), s.alpha
                    )
                    monitor_sums += torch.stack(
                        [d.sum(), entropy_from_logits(s_logits).sum()]
                    ).cpu()
                    del t_logits, t_lp, s_logits
        teacher_s = time.perf_counter() - t0
        # Eq. 3; with grpo_mix = 0 this is the SDPO advantage alone, and every row has a
        # teacher (rows without one are not trained then), so one path serves both. Off
        # policy the advantage goes through GRPO's clipped ratio (the documented decision:
        # a drop-in GRPO replacement, see algorithms.sdpo).
        adv = mixed_advantages(
            batch.advantages,
            token_level_advantages(t_lp_y, lp),
            s.grpo_mix,
            teacher_mask=has_teacher(batch),
        )
        loss, stats = losses.policy_loss(
            lp,
            batch.old_logprobs,
            adv,
            mask,
            clip_low=g.clip_low,
            clip_high=g.clip_high,
            aggregation=g.aggregation,
            normalizer=norm["pg"],
        )
        with torch.no_grad():
            gap = losses.aggregate(
                (t_lp_y - lp.detach()).float(), tmask, "token_mean", norm["sdpo"] or None
            )
        stats = {k: v.detach().float().cpu() for k, v in stats.items()}
        stats["logprob_gap"] = gap.cpu()
        if norm["sdpo"]:
            stats["divergence"] = monitor_sums[0] / norm["sdpo"]
            stats["entropy"] = monitor_sums[1] / norm["sdpo"]
        stats["timing/teacher"] = torch.tensor(teacher_s)
        return loss, stats

    # --- after a step, metrics, checkpoints ----------------------------------------------

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        """Move the teacher (EMA: θ' ← (1−τ)θ' + τθ; the other modes do nothing)."""
        if not self.teacher_frozen:
            self.teacher.update(model)

    def apply_remedy(self, name: str, level: int) -> str:
        """Set a rollback remedy to ``level`` (the rollbacks that applied it); say what it set.

        ``raise_grpo_mix``: λ = 1 − (1 − λ₀) / 2^level; ``freeze_teacher``: the teacher stops
        moving from level 1 (see :mod:`algorithms.engine.guard`). Level 0 is the config's.
        """
        if name == "raise_grpo_mix":
            mix = 1.0 - (1.0 - self.config.sdpo.grpo_mix) * 0.5**level
            self.sdpo = dataclasses.replace(self.sdpo, grpo_mix=mix)
            return f"grpo_mix {mix:.4g}"
        if name == "freeze_teacher":
            self.teacher_frozen = level > 0
            return "teacher frozen" if self.teacher_frozen else "teacher moving"
        raise ConfigError(
            f"SDPO has no remedy {name!r} (its remedies: raise_grpo_mix, freeze_teacher)"
        )

    def rollout_metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """Share of trained rollouts with a teacher signal, and the count without one.

        Called once per step after the updates.
        """
        with_ctx = stats.get("teacher_signal", 0.0)
        without = stats.get("no_teacher_signal", 0.0)
        out = {
            "rollout/zero_adv_groups": stats.get("zero_adv_groups", 0.0),
            "rollout/teacher_signal_frac": with_ctx / max(1.0, with_ctx + without),
            "rollout/no_teacher_signal": without,
        }
        return out

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights (and its fp32 EMA shadow).

        The rollback remedies are not here: the trainer's guard keeps their levels and sets
        them again after every restore (:meth:`apply_remedy`).
        """
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the teacher (also from checkpoints that kept it at their top level)."""
        if state.get("teacher") is None:
            raise ConfigError("the checkpoint holds no teacher; it was not an SDPO run")
        self.teacher.load_state_dict(state["teacher"])
        # an older checkpoint's "monitor" entry is ignored: the trainer's guard watches now
