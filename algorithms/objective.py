"""The one interface between the training loop and an algorithm: :class:`Objective`.

The trainer (:mod:`algorithms.engine.trainer`) rolls out, batches, accumulates gradients, keeps
the processes in lockstep, checkpoints and logs; it knows nothing of GRPO or SDPO. An
objective says what the algorithm does with that machinery, in six calls:

1. :meth:`Objective.rows`: which rollouts (and turns) of a step's groups become training
   :class:`~algorithms.engine.batching.Row` s, with their per-row extras (advantage, teacher
   prompt), and what it records in each trajectory's ``info`` (written to
   trajectories.jsonl); plus named counts that the trainer sums over processes.
2. :meth:`Objective.normalizers`: named float sums over a mini-batch's rows on this process
   (token counts, row counts, ...). The trainer sums them over every process in one
   all-reduce and hands the totals to every micro-batch's loss, which is how gradient
   accumulation stays exact whatever the micro-batch size and process count.
3. :meth:`Objective.loss`: the loss of one micro-batch given those whole-mini-batch totals,
   scored through a :class:`Scorer` the trainer lends it (the student's forward through
   the DDP wrapper with shared prompt prefixes, chunked LM-head log-probs), with detached
   statistics (logged as ``train/<name>``; a ``timing/<phase>`` statistic is seconds, added
   to the step's timing instead).
4. :meth:`Objective.after_optimizer_step`: what happens after every optimizer step (SDPO's
   EMA teacher moves toward the student).
5. :meth:`Objective.state_dict` / :meth:`Objective.load_state_dict`: extra state a resumable
   checkpoint keeps (under the key ``"objective"``).
6. :meth:`Objective.rollout_metrics`: the ``rollout/`` metrics of a step from the counts of
   :meth:`Objective.rows`, summed over processes.

:attr:`Objective.metric_names` lists the metric keys it adds (the first is shown in the
progress bar). A train config builds its objective (:meth:`TrainConfig.build_objective
<algorithms.config.TrainConfig.build_objective>`). Implementations:
:class:`algorithms.grpo.GRPOObjective` and :class:`algorithms.sdpo.SDPOObjective`.

The contract the trainer's DDP invariants rely on: :meth:`~Objective.rows` and
:meth:`~Objective.normalizers` return the same keys on every process whatever its rollouts;
:meth:`~Objective.loss` runs its student forward through ``scorer.student_hidden`` (the
wrapped model, so DDP sees one forward per backward) and may return a loss that does not
touch every parameter (the trainer adds a zero that does); it must not make collective calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from algorithms.engine.batching import Batch, Row
from algorithms.scoring import chunked_logprobs_from_hidden, shared_prefix_hidden_states
from rlrf.errors import RLRFError
from rlrf.rollout import turn_prompts

if TYPE_CHECKING:
    from rlrf.env import Message
    from rlrf.trajectory import Group

__all__ = [
    "Encode",
    "Objective",
    "RolloutKey",
    "Scorer",
    "TrainingError",
    "TurnKey",
    "rollout_rows",
    "rollouts_with_reward",
]

RolloutKey = tuple[int, int]
"""``(group index, trajectory index)`` of a rollout within a step's groups."""

TurnKey = tuple[int, int, int]
"""``(group index, trajectory index, turn index)`` of one assistant turn."""

Encode = Callable[["Sequence[Message]"], list[int]]
"""The policy's chat encoder: messages -> prompt token ids (chat template applied)."""


class TrainingError(RLRFError):
    """Training cannot continue (non-finite loss, nothing to train on, ...)."""


@dataclass
class Scorer:
    """What the trainer lends an objective to score a micro-batch.

    Attributes:
        model: the training forward: the LM's body (:class:`algorithms.scoring.HiddenStates`)
            wrapped by accelerate (DDP on several processes); it returns hidden states.
        lm: the plain (unwrapped) LM: its head projects hidden states to logits, and frozen
            copies of it (teacher, reference) score without gradient.
        pad: the pad token id.
        temperature: sampling temperature; log-probs divide the logits by it.
        chunk_size: response positions per LM-head chunk (peak memory ~ rows x chunk x V).

    """

    model: Any
    lm: Any
    pad: int
    temperature: float
    chunk_size: int

    def student_hidden(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Student hidden states ``[B, L, H]`` at the response positions, with gradient.

        Goes through the wrapped model, so DDP synchronizes the gradients. The rows of one
        group share their prompt (a micro-batch holds whole groups where it can), so each
        group's prompt runs once and its keys/values serve every row. Returns the hidden
        states and the response mask.
        """
        return shared_prefix_hidden_states(
            self.model,
            batch.prompts,
            batch.responses,
            groups=[r.group for r in batch.rows],
            pad=self.pad,
            max_batch_size=len(batch.rows),
        )

    def logprobs(
        self, hidden: torch.Tensor, targets: torch.Tensor, module: Any = None
    ) -> torch.Tensor:
        """Log-probs ``[B, L]`` of ``targets`` from hidden states, chunk by chunk.

        ``module`` is the LM whose head projects (default :attr:`lm`; a frozen reference
        passes its own).
        """
        return chunked_logprobs_from_hidden(
            self.lm if module is None else module,
            hidden,
            targets,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )


@runtime_checkable
class Objective(Protocol):
    """An algorithm as the trainer sees it (see the module docstring for the contract)."""

    metric_names: tuple[str, ...]
    """The ``train/`` and ``rollout/`` keys it adds to a step's metrics; the first one is
    shown in the progress bar."""

    def rows(self, groups: list[Group], encode: Encode) -> tuple[list[Row], dict[str, float]]:
        """Turn a step's groups (this process's) into training rows.

        Returns the rows and named counts (the same keys on every process; the trainer sums
        them over processes and passes the totals to :meth:`rollout_metrics`). May record
        per-rollout details in ``trajectory.info``. Raises :class:`TrainingError` when a
        rollout cannot be trained on.
        """
        ...

    def normalizers(self, rows: Sequence[Row]) -> dict[str, float]:
        """Named sums over a mini-batch's rows on this process (same keys everywhere).

        The trainer sums each over all processes and passes the totals, plus ``"rows"``
        (the mini-batch's row count over all processes), to :meth:`loss`.
        """
        ...

    def loss(
        self, batch: Batch, norm: Mapping[str, float], scorer: Scorer, *, on_policy: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch, normalized by the whole mini-batch's ``norm``.

        ``on_policy`` is True for the first mini-batch of the first epoch (the policy has not
        moved since sampling). Returns the scalar loss (summing the micro-batches' losses
        gives the mini-batch's) and detached scalar statistics, aggregated the same way.
        """
        ...

    def after_optimizer_step(self, model: torch.nn.Module) -> None:
        """Called after every optimizer step with the unwrapped, updated model."""
        ...

    def rollout_metrics(self, stats: Mapping[str, float]) -> dict[str, float]:
        """``rollout/`` metrics from :meth:`rows`' counts summed over processes."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Extra state a checkpoint must keep to resume exactly (may be empty)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result."""
        ...


# --- shared pieces of rows() ---------------------------------------------------------------


def rollouts_with_reward(groups: Sequence[Group]) -> list[RolloutKey]:
    """Every rollout with a reward, in order; rollouts whose reward is missing are skipped.

    Raises:
        TrainingError: a rollout holds no token ids or log-probs (a backend that does not
            return them, e.g. an OpenAI-compatible endpoint, cannot train).

    """
    keys = []
    for gi, g in enumerate(groups):
        for ti, traj in enumerate(g.trajectories):
            if traj.reward is None:
                continue
            if any(t.response_token_ids is None or t.logprobs is None for t in traj.turns):
                raise TrainingError(
                    "a rollout has no token ids or log-probs; training needs the HF backend"
                )
            keys.append((gi, ti))
    return keys


def rollout_rows(
    groups: Sequence[Group],
    keys: Sequence[RolloutKey],
    encode: Encode,
    *,
    advantages: Mapping[RolloutKey, float],
) -> list[Row]:
    """One :class:`Row` per assistant turn (with response tokens) of each rollout in ``keys``.

    A turn's prompt is the chat before it (:func:`rlrf.rollout.turn_prompts`) through
    ``encode``: the messages the env wrote (observations, tool results) are prompt tokens
    there, never response tokens, so no loss trains on them; a turn whose sampler dropped
    the prompt's first tokens (``turn.info["prompt_tokens_dropped"]``, a vLLM engine's
    context cut) gets the prompt without them. A rollout's advantage goes to
    each of its rows. An objective that attaches more to a row builds its own row class from
    these (``(row.group, row.trajectory, row.turn)`` is the row's :data:`TurnKey`).
    """
    rows: list[Row] = []
    for gi, ti in keys:
        traj = groups[gi].trajectories[ti]
        chats = turn_prompts(traj)
        for k, (turn, chat) in enumerate(zip(traj.turns, chats, strict=True)):
            if not turn.response_token_ids:
                continue
            # a sampler that cut the prompt's start (vLLM past its context) sampled from
            # the rest: the row's prompt is what it saw, so old and new log-probs agree
            cut = int(turn.info.get("prompt_tokens_dropped", 0))
            rows.append(
                Row(
                    prompt_ids=encode(chat)[cut:],
                    response_ids=list(turn.response_token_ids),
                    old_logprobs=list(turn.logprobs or ()),
                    advantage=advantages[(gi, ti)],
                    group=gi,
                    trajectory=ti,
                    turn=k,
                )
            )
    return rows
