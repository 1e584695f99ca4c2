"""SDPO's teacher weights: EMA, trust region, frozen, or live.

The teacher is the student's own network conditioned on a richer prompt; what differs between
modes is which weights score that prompt:

- ``ema`` (default): a copy θ' updated after every optimizer step,
  θ' ← (1 − τ) θ' + τ θ, in place and without gradient;
- ``trust_region``: a frozen copy of the initial weights θ_0; the teacher's logits are
  lerp(logits_θ0, logits_θ, τ) = logits_θ0 + τ (logits_θ − logits_θ0), two forward passes;
- ``frozen``: the initial weights θ_0;
- ``live``: the current student θ itself (no copy; unregularized, the paper shows it
  eventually diverges).

How a trainer uses it::

    teacher = Teacher(model, "ema", tau=0.01)       # the UNWRAPPED model (no DDP wrapper)
    ...
    with torch.no_grad():
        outs = [m(input_ids=ids, attention_mask=am).logits
                for m in teacher.scoring_modules(model)]
        teacher_logits = teacher.combine_logits(outs)
    ...
    optimizer.step()
    teacher.update(model)                            # after EVERY optimizer step

A chunked scorer calls each module of :meth:`Teacher.scoring_modules` for hidden states,
projects the same chunk of positions through each module's head, and combines the chunk's
logits with :meth:`Teacher.combine_logits` (elementwise, so chunking commutes with it).
:meth:`Teacher.logits` does the whole forward in one call.

Departures and choices: the copies never require gradient and are kept in eval mode; when the
student's parameters are in low precision (bf16/fp16) the EMA accumulates in an fp32 shadow
(``fp32_ema=True``), because a bf16 weight cannot register a 1% step toward a nearby value;
the LoRA case copies the whole model (base included) rather than re-using the base weights.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, get_args

import torch
from torch import Tensor, nn

from algorithms.sdpo.config import TeacherMode
from rlrf.errors import ConfigError

__all__ = ["Teacher", "TeacherMode"]


class Teacher:
    """The weights that score teacher prompts in SDPO (see the module docstring for modes)."""

    def __init__(
        self,
        student: nn.Module,
        mode: TeacherMode = "ema",
        tau: float = 0.01,
        *,
        fp32_ema: bool = True,
    ) -> None:
        """Copy the student's current weights when the mode needs them.

        Args:
            student: the unwrapped student model (not the DDP/accelerate wrapper).
            mode: "ema", "trust_region", "frozen" or "live".
            tau: EMA rate or trust-region lerp weight, in (0, 1].
            fp32_ema: with low-precision parameters, accumulate the EMA in an fp32 shadow.

        """
        if mode not in get_args(TeacherMode):
            raise ConfigError(
                f"teacher mode {mode!r} is not one of {', '.join(map(repr, get_args(TeacherMode)))}"
            )
        if mode in ("ema", "trust_region") and not 0.0 < tau <= 1.0:
            raise ConfigError(f"teacher tau must be in (0, 1] for mode {mode!r}, got {tau}")
        self.mode: TeacherMode = mode
        self.tau = float(tau)
        self.module: nn.Module | None = None
        self._shadow: list[Tensor] | None = None
        if mode != "live":
            self.module = _frozen_copy(student)
        if mode == "ema" and fp32_ema:
            params = list(self.module.parameters()) if self.module is not None else []
            if any(p.dtype in (torch.float16, torch.bfloat16) for p in params):
                self._shadow = [p.detach().float().clone() for p in params]

    # --- updates ---------------------------------------------------------------------

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """Move the EMA toward the student (call after every optimizer step); other modes: no-op."""
        if self.mode != "ema":
            return
        assert self.module is not None
        pairs = _matched_parameters(self.module, student)
        if self._shadow is not None:
            for shadow, (t, s) in zip(self._shadow, pairs, strict=True):
                shadow.lerp_(s.detach().float(), self.tau)
                t.copy_(shadow)
        else:
            for t, s in pairs:
                t.lerp_(s.detach().to(t.dtype), self.tau)
        for tb, sb in zip(self.module.buffers(), student.buffers(), strict=True):
            tb.copy_(sb)

    # --- scoring ---------------------------------------------------------------------

    def scoring_modules(self, student: nn.Module) -> tuple[nn.Module, ...]:
        """Return the module(s) whose logits :meth:`combine_logits` turns into teacher logits.

        One module for "ema", "frozen" (the copy) and "live" (the student); two for
        "trust_region": (frozen initial copy, student). Run them under ``torch.no_grad()``.
        """
        if self.mode == "live":
            return (student,)
        assert self.module is not None
        if self.mode == "trust_region":
            return (self.module, student)
        return (self.module,)

    def combine_logits(self, logits: Sequence[Tensor]) -> Tensor:
        """Combine the logits of :meth:`scoring_modules`, in the same order, into the teacher's.

        Trust region: lerp(frozen, current, τ); otherwise the single tensor unchanged. The
        result is detached.
        """
        roles = self.scoring_roles()
        if len(logits) != len(roles):
            raise ValueError(
                f"mode {self.mode!r} combines {len(roles)} logits tensors {roles}, "
                f"got {len(logits)}"
            )
        if self.mode == "trust_region":
            frozen, current = logits
            return torch.lerp(frozen.detach(), current.detach().to(frozen.dtype), self.tau)
        return logits[0].detach()

    def scoring_roles(self) -> tuple[str, ...]:
        """Name the modules :meth:`scoring_modules` returns, in order (for logging and checks)."""
        return ("frozen", "student") if self.mode == "trust_region" else (self.mode,)

    @torch.no_grad()
    def logits(
        self,
        student: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        **forward_kwargs: Any,
    ) -> Tensor:
        """Return the teacher's full logits [B, L, V] for a batch of sequences (no gradient)."""
        outs = [
            module(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs).logits
            for module in self.scoring_modules(student)
        ]
        return self.combine_logits(outs)

    # --- checkpointing ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return what a checkpoint needs to restore the teacher exactly."""
        return {
            "mode": self.mode,
            "tau": self.tau,
            "module": None if self.module is None else self.module.state_dict(),
            "shadow": None if self._shadow is None else [t.clone() for t in self._shadow],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` (the mode must match)."""
        if state["mode"] != self.mode:
            raise ConfigError(
                f"checkpoint holds a {state['mode']!r} teacher but this run uses {self.mode!r}; "
                "resume with the same teacher mode"
            )
        self.tau = float(state["tau"])
        sharded = self.module is not None and _is_sharded(self.module)
        if self.module is not None:
            if sharded:  # a full (one-process) state into FSDP2 shards
                from algorithms.engine.parallel import load_full_into

                load_full_into(self.module, state["module"])
            else:
                self.module.load_state_dict(state["module"])
        if state["shadow"] is not None and self._shadow is not None:
            for mine, saved in zip(self._shadow, state["shadow"], strict=True):
                if sharded:
                    from algorithms.engine.parallel import shard_like

                    saved = shard_like(saved, mine)
                mine.copy_(saved)


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def _frozen_copy(student: nn.Module) -> nn.Module:
    if _is_sharded(student):
        # FSDP2: a hook-free copy whose parameters keep the student's shards, so the EMA
        # update is shard-local (algorithms.engine.parallel)
        from algorithms.engine.parallel import frozen_copy

        return frozen_copy(student)
    module = copy.deepcopy(student)
    module.requires_grad_(False)
    for p in module.parameters():
        p.grad = None
    return module.eval()


def _matched_parameters(teacher: nn.Module, student: nn.Module) -> list[tuple[Tensor, Tensor]]:
    t_named = list(teacher.named_parameters())
    s_named = list(student.named_parameters())
    t_names = [n for n, _ in t_named]
    s_names = [n for n, _ in s_named]
    if t_names != s_names:
        missing = sorted(set(t_names) ^ set(s_names))[:3]
        raise ValueError(
            f"the student's parameters do not match the teacher copy (first differences: "
            f"{missing}); pass the same unwrapped model to Teacher() and update() "
            "(e.g. accelerator.unwrap_model(model))"
        )
    return [(t, s) for (_, t), (_, s) in zip(t_named, s_named, strict=True)]
