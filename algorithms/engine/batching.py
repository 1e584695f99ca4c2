"""Turning groups of trajectories into padded training tensors.

A training :class:`Row` is one turn of one trajectory: its prompt tokens (the chat before
the turn, through the policy's chat template), the sampled response tokens, the sampler's
log-probs (π_old) and the rollout's scalar advantage. An objective that needs more per row
subclasses it (SDPO's :class:`~algorithms.sdpo.objective.SDPORow` adds the teacher prompt);
:func:`collate` pads a list of rows into a :class:`Batch` whose tensors are response-aligned
(position t is response token t) and keeps the rows, so an objective reads its own fields
from ``batch.rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Batch", "Row", "collate", "split_rows"]


@dataclass
class Row:
    """One (prompt, response) pair to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    old_logprobs: list[float]
    advantage: float = 0.0
    group: int = 0
    trajectory: int = 0
    turn: int = 0


@dataclass
class Batch:
    """Padded tensors of a list of rows (``L`` = longest response)."""

    rows: list[Row]
    response_ids: torch.Tensor  # [B, L] long
    mask: torch.Tensor  # [B, L] bool
    old_logprobs: torch.Tensor  # [B, L] float32
    advantages: torch.Tensor  # [B] float32

    @property
    def prompts(self) -> list[list[int]]:
        """The student prompts."""
        return [r.prompt_ids for r in self.rows]

    @property
    def responses(self) -> list[list[int]]:
        """The response tokens."""
        return [r.response_ids for r in self.rows]


def collate(rows: Sequence[Row], device: torch.device | str = "cpu") -> Batch:
    """Pad rows into a :class:`Batch` on ``device``."""
    width = max(1, max(len(r.response_ids) for r in rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    old = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        n = len(r.response_ids)
        if len(r.old_logprobs) != n:
            raise ValueError(
                f"row {i}: {n} response tokens but {len(r.old_logprobs)} log-probs; the sampler "
                "must return one log-prob per token"
            )
        ids[i, :n] = torch.tensor(r.response_ids, dtype=torch.long)
        mask[i, :n] = True
        old[i, :n] = torch.tensor(r.old_logprobs, dtype=torch.float32)
    adv = torch.tensor([r.advantage for r in rows], dtype=torch.float32)
    return Batch(
        rows=list(rows),
        response_ids=ids.to(device),
        mask=mask.to(device),
        old_logprobs=old.to(device),
        advantages=adv.to(device),
    )


def split_rows(rows: Sequence[Row], size: int) -> list[list[Row]]:
    """Split rows into consecutive chunks of at most ``size``."""
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]
