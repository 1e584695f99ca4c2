"""How processes share the model: data parallel (DDP) or FSDP2, behind one seam.

The trainer asks every question that depends on it (how to wrap the model, which micro-
batches to run, how every parameter gets a gradient, the gradient norm, the weights for
sampling, checkpoint states) of one object, :class:`DataParallel` or :class:`FullySharded`
(:func:`make_parallel`), so its loop reads the same for both; the functions below are what
:class:`FullySharded` is made of.

FSDP2 (``torch.distributed.fsdp.fully_shard``) is for models larger than one device.

``parallelism: fsdp2`` (``--parallelism fsdp2``) shards the trained model's parameters,
gradients and AdamW state over the processes of a ``torchrun`` / ``accelerate launch``
(gloo on CPU, NCCL on GPUs), instead of replicating them as DDP does:

- every decoder layer is its own FSDP unit (all-gathered for its forward and again for its
  backward, its gradient reduce-scattered right after), and the LM's body
  (:class:`algorithms.scoring.HiddenStates`) is the root unit. The root holds what is left:
  the embedding, the final norm and the LM head. With tied embeddings (SmolLM2) the
  embedding and the LM head are one parameter, so they must live in one unit; the root is
  that unit for tied and untied models alike.
- The chunked LM-head losses call the head OUTSIDE the wrapped forward. That works because
  FSDP2 does not reshard the root after its forward (its parameters are needed again at once
  for backward): the head's weight is the root's all-gathered, unsharded parameter from the
  student's forward until the root's post-backward, which reduce-scatters the gradient the
  chunks gave it (the checkpointed chunks recompute with it during backward). So every
  gradient reaches the sharded parameter through FSDP's own reduce-scatter.
- Every FSDP unit makes collective calls in every forward and backward, so every process must
  run the same number of them: under FSDP2 the student's forward of a micro-batch is one call
  (no shared-prefix sub-batches, whose count depends on the data), every process runs the
  same number of micro-batches (empty ones join with a zero loss), every backward runs
  through every layer (:meth:`FSDPScorer.zero_loss`), and a parameter that a process's loss
  did not use joins the reduce-scatter with a zero gradient.
- Generation (rollouts, evaluation) and the frozen copies of an objective (SDPO's EMA
  teacher) make a data-dependent number of forward calls per process, so they run on
  gathered weights: :func:`generation_weights` all-gathers every unit of the student once
  before sampling (and reshards after), :func:`gathered` all-gathers a frozen copy once per
  micro-batch. Those phases hold one full copy of the weights (not of the gradients or the
  optimizer state, which stay sharded: 12 of the 16 bytes per parameter of fp32 AdamW).
- SDPO's EMA teacher (:func:`frozen_copy`) is a plain module (no FSDP hooks) whose parameters
  are DTensors with the student's placements, so the EMA update
  θ' ← (1 − τ) θ' + τ θ is shard-local: no communication.
- Checkpoints and ``final/`` gather the full state on the main process
  (:func:`full_model_state`, :func:`full_optimizer_state`, :func:`full_tree`), so they are
  the same files as one process writes, and load into one process or back into FSDP2
  (:func:`load_full_state`).

Not supported under FSDP2 (refused when the config is built, each with the command to use
instead): LoRA, the vLLM generation backend, GRPO's KL to a reference (``kl_coef > 0``),
SDPO's ``trust_region`` and ``live`` teachers (they run the student without gradient a
data-dependent number of times), fp16 mixed precision, and accelerate's own FSDP plugin.

When to use DDP, FSDP2 and LoRA
-------------------------------
DDP (the default, ``parallelism: ddp``) keeps a whole copy of the weights, gradients and AdamW
state on every device (about 16 bytes per parameter in fp32) and only all-reduces gradients:
it is the fastest choice whenever that fits one device, e.g. SmolLM2-135M or a 1B model on an
80 GB GPU. FSDP2 (``parallelism: fsdp2``) divides those 16 bytes per parameter by the number
of processes at the price of an all-gather per layer in forward and backward and a
reduce-scatter per layer: use it for full fine-tuning when the weights fit one device but
weights + gradients + optimizer state do not (e.g. 7-8B models on 8 x 80 GB); generation
and teacher scoring still hold one full copy of the weights. LoRA (``lora_r > 0``) trains a
few adapter matrices, so gradients and optimizer state almost vanish and the frozen base
fits with DDP on far smaller devices; choose it when a low-rank update is enough or memory is
tight, and FSDP2 when every weight must move. FSDP2 and LoRA do not combine here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from algorithms.engine.batching import Batch
from algorithms.objective import Scorer
from algorithms.scoring import HiddenStates
from rlrf.errors import ConfigError

__all__ = [
    "FSDP_UNSUPPORTED_ACCELERATE",
    "FSDPScorer",
    "check_launch",
    "frozen_copy",
    "frozen_modules",
    "full_model_state",
    "full_optimizer_state",
    "full_tree",
    "full_value",
    "gathered",
    "generation_weights",
    "grad_norm",
    "is_sharded",
    "load_full_into",
    "load_full_state",
    "max_over_processes",
    "shard_like",
    "shard_model",
]

FSDP_UNSUPPORTED_ACCELERATE = ("FSDP", "DEEPSPEED", "MEGATRON_LM")
"""accelerate distributed types the trainer refuses (it shards with FSDP2 itself)."""

_FROZEN_MARK = "_rlrf_fsdp_frozen"


def check_launch(accelerate_kind: str, num_processes: int, fsdp: bool) -> None:
    """Refuse launch configurations that cannot work, naming the command to use instead.

    Args:
        accelerate_kind: ``accelerator.distributed_type.name``.
        num_processes: processes of the launch.
        fsdp: whether the config asks for ``parallelism: fsdp2``.

    Raises:
        ConfigError: accelerate's own FSDP / DeepSpeed / Megatron plugin, or FSDP2 on one
            process.

    """
    if accelerate_kind in FSDP_UNSUPPORTED_ACCELERATE:
        raise ConfigError(
            f"accelerate is configured for {accelerate_kind}; rlrf shards with FSDP2 itself "
            "(the chunked LM-head losses need its own wrapping). Launch without accelerate's "
            "FSDP/DeepSpeed config and set parallelism: fsdp2, e.g. `torchrun "
            "--nproc-per-node N -m algorithms.sdpo ... --parallelism fsdp2` (or "
            "`accelerate launch --multi_gpu --num_processes N -m algorithms.sdpo ... "
            "--parallelism fsdp2`), or use data parallel (DDP, the default): `accelerate "
            "launch --multi_gpu --num_processes N -m algorithms.sdpo ...`"
        )
    if fsdp and num_processes < 2:
        raise ConfigError(
            "parallelism: fsdp2 shards over processes but this run has one; launch it on "
            "several (`torchrun --nproc-per-node N -m algorithms.sdpo ... --parallelism fsdp2`, "
            "or `accelerate launch --multi_gpu --num_processes N -m algorithms.sdpo ...`), or "
            "set parallelism: ddp for a single process"
        )


def _decoder_layers(lm: nn.Module) -> list[nn.Module]:
    decoder = lm.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ConfigError(
            f"parallelism: fsdp2 wraps each decoder layer, but {type(decoder).__name__} has "
            "no `layers` list; use parallelism: ddp for this model"
        )
    return list(layers)


def _mesh(device: torch.device) -> Any:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_model(lm: nn.Module, pad: int, device: torch.device | str = "cpu") -> HiddenStates:
    """Move ``lm`` to ``device``, shard it with FSDP2 in place, return the root unit.

    Every decoder layer becomes a unit, then the :class:`HiddenStates` around ``lm`` the root
    (embedding, final norm, LM head: one unit, which keeps a tied embedding/head whole). The
    parameters of ``lm`` become DTensors sharded on dim 0 over all processes (``device``:
    this process's, e.g. ``cuda:1``); build the optimizer AFTER this call. Runs one tiny
    forward of the root on every process, so that FSDP knows its root before anything else
    calls a layer (generation does).
    """
    from torch.distributed.fsdp import fully_shard

    device = torch.device(device)
    lm.to(device)
    mesh = _mesh(device)
    for layer in _decoder_layers(lm):
        fully_shard(layer, mesh=mesh)
    root = HiddenStates(lm)
    # the root stays gathered from its forward to its post-backward: the chunked losses call
    # its LM head in between (FSDP2's own default for a root, made explicit)
    fully_shard(root, mesh=mesh, reshard_after_forward=False)
    # a parameter unused by one process's loss still joins the reduce-scatter (zero grad)
    root.set_reduce_scatter_unused_params(True)
    with torch.no_grad():
        root([[pad]], [[]], pad=pad)
    for unit in _units(root):
        unit.reshard()
    return root


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (FSDP2-sharded or a frozen copy)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def _units(root: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def generation_weights(root: nn.Module | None) -> Iterator[None]:
    """All-gather every FSDP unit of ``root`` once, for sampling; reshard on exit.

    Inside, the layers' forward hooks find their weights gathered and make no collective
    call, so each process may generate as many tokens as its own rollouts need. A no-op for
    ``root=None`` (not sharded). Call it on every process.
    """
    if root is None:
        yield
        return
    units = _units(root)
    layers = [u for u in units if u is not root]  # the root never reshards after forward
    for unit in layers:
        unit.set_reshard_after_forward(False, recurse=False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for unit in layers:
            unit.set_reshard_after_forward(True, recurse=False)


def frozen_copy(student: nn.Module) -> nn.Module:
    """A gradient-free copy of an FSDP2-sharded LM: same placements, no FSDP hooks.

    The copy is built on the meta device from the student's class and config (no full
    weights are materialized), then takes a clone of every sharded parameter (a DTensor with
    the student's placements, so elementwise updates such as an EMA are shard-local) and of
    every buffer. A tied embedding/head stays tied. Score with it inside :func:`gathered`.
    """
    with torch.device("meta"):
        copy = type(student)(student.config)
    clones: dict[int, nn.Parameter] = {}
    for name, p in student.named_parameters(remove_duplicate=False):
        if id(p) not in clones:
            clones[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=False)
        owner, _, leaf = name.rpartition(".")
        copy.get_submodule(owner)._parameters[leaf] = clones[id(p)]
    for name, b in student.named_buffers(remove_duplicate=False):
        owner, _, leaf = name.rpartition(".")
        copy.get_submodule(owner)._buffers[leaf] = b.detach().clone()
    # plain tensor attributes (e.g. a rotary embedding's original_inv_freq) left on meta
    for name, m in copy.named_modules():
        src = student.get_submodule(name)
        for key, value in list(vars(m).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                setattr(m, key, getattr(src, key).detach().clone())
    setattr(copy, _FROZEN_MARK, True)
    return copy.eval()


def frozen_modules(obj: Any) -> list[nn.Module]:
    """The :func:`frozen_copy` modules held by ``obj`` or one attribute below it, in order.

    The trainer gathers these around every micro-batch (see :func:`gathered`); the order is
    the attributes' (the same on every process).
    """
    found: list[nn.Module] = []
    for value in _attributes(obj):
        candidates = [value] if isinstance(value, nn.Module) else list(_attributes(value))
        for c in candidates:
            if isinstance(c, nn.Module) and getattr(c, _FROZEN_MARK, False):
                if all(c is not f for f in found):
                    found.append(c)
    return found


def _attributes(obj: Any) -> Iterable[Any]:
    if isinstance(obj, nn.Module) or not hasattr(obj, "__dict__"):
        return ()
    return list(vars(obj).values())


@contextlib.contextmanager
def gathered(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Swap every DTensor parameter of ``modules`` for its full tensor; swap back on exit.

    For frozen copies (no gradient): one all-gather per parameter, in the modules' order,
    on every process; inside, forwards make no collective call. A shared parameter (a tied
    head) is gathered once.
    """
    from torch.distributed.tensor import DTensor

    saved: list[tuple[nn.Module, str, nn.Parameter]] = []
    full: dict[int, nn.Parameter] = {}
    try:
        for module in modules:
            for m in module.modules():
                for key, p in list(m._parameters.items()):
                    if isinstance(p, DTensor):
                        if id(p) not in full:
                            full[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=False)
                        saved.append((m, key, p))
                        m._parameters[key] = full[id(p)]
        yield
    finally:
        for m, key, p in saved:
            m._parameters[key] = p


def full_value(t: Any) -> Any:
    """A DTensor's full value (a collective on every process), anything else unchanged."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of the gradients of (possibly sharded) ``params``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    squares = sum(full_value(g.float().pow(2).sum()) for g in grads)
    return torch.as_tensor(squares).sqrt()


def max_over_processes(value: int, device: torch.device) -> int:
    """The largest ``value`` over all processes (one all-reduce)."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a sharded module on CPU (call on every process).

    Gathered on every process to keep it simple and symmetric; only the main process needs
    it, so the others drop it at once. The keys and values are those of one process's
    ``module.state_dict()``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict with every sharded tensor gathered (call on every process).

    Keyed by parameter index as always, so the file equals the one a single process writes.
    """
    return full_tree(optimizer.state_dict())


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Load a full (one-process) model and optimizer state into sharded ones (every process)."""
    from torch.distributed.tensor import DTensor

    load_full_into(model, model_state)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in optimizer_state["state"].items():
        p = params[int(index)]
        state[index] = {
            k: shard_like(v, p)
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape
            else v
            for k, v in entry.items()
        }
    optimizer.load_state_dict({**optimizer_state, "state": state})


def shard_like(full: torch.Tensor, like: Any) -> torch.Tensor:
    """Cut this process's shard of ``full`` with the placements of the DTensor ``like``.

    No communication: every process holds ``full`` (each reads the checkpoint) and cuts
    its own piece, as ``fully_shard`` cut the parameter.
    """
    from torch.distributed.tensor import distribute_tensor

    full = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def load_full_into(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a full (one-process) state dict into a module whose parameters may be sharded."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        for name, target in module.state_dict(keep_vars=True).items():
            if name not in state:
                raise ConfigError(f"the checkpoint has no {name!r}; was it written by this model?")
            if isinstance(target, DTensor):
                target.to_local().copy_(shard_like(state[name], target).to_local())
            else:
                target.copy_(state[name])


def full_tree(obj: Any) -> Any:
    """``obj`` with every DTensor inside (dicts, lists, tuples) replaced by its full CPU value.

    A collective per DTensor in a fixed order: call on every process with the same structure.
    """
    from torch.distributed.tensor import DTensor

    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, dict):
        return {k: full_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_tree(v) for v in obj)
    return obj


class FSDPScorer(Scorer):
    """The trainer's :class:`~algorithms.objective.Scorer` under FSDP2.

    The student's forward of a micro-batch is ONE call of the root unit (every layer runs
    once, so every process makes the same all-gathers whatever its rows), instead of the
    shared-prefix sub-batches, whose number depends on the data.
    """

    _hidden: torch.Tensor | None = None

    def student_hidden(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Student hidden states ``[B, L, H]`` at the response positions, with gradient."""
        hidden, mask = self.model(batch.prompts, batch.responses, pad=self.pad)
        self._hidden = hidden
        return hidden, mask

    def zero_loss(self) -> torch.Tensor:
        """A zero joined to this micro-batch's student forward (add it to the loss).

        Every process's backward must run through every layer (each reduce-scatters its
        gradient), even where the objective's loss used none of the forward (SDPO rows
        without a teacher) or no forward ran (an empty micro-batch: a one-token one runs).
        """
        hidden = self._hidden
        self._hidden = None
        if hidden is None:
            hidden, _ = self.model([[self.pad]], [[self.pad]], pad=self.pad)
        return hidden.reshape(-1)[:1].float().sum() * 0.0


# --- the seam: what the trainer asks of "several processes", one class per strategy ---------


def zero_touching(*tensors: torch.Tensor) -> torch.Tensor:
    """A float32 zero whose gradient reaches (with zeros) every tensor given.

    One element of each is enough: no copy of a large weight, and no overflowing sum
    (inf * 0 would be NaN) in low precision.
    """
    return sum((t.reshape(-1)[:1].float().sum() * 0.0 for t in tensors), torch.zeros(()))


def zero_missing_grads(params: list[torch.Tensor]) -> None:
    """Give a zero gradient to the parameters the backward did not reach.

    AdamW then decays them and counts the step, as with :func:`zero_touching`'s zero
    gradient on several processes.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


class DataParallel:
    """``parallelism: ddp``: a whole model on each process; accelerate adds DDP on several.

    Every place where the training loop depends on how processes share the model is a method
    here or on :class:`FullySharded`, so the trainer reads the same for both.
    """

    sharded = False
    """Whether each process holds only shards of the weights."""

    scorer_class: type[Scorer] = Scorer
    """The :class:`~algorithms.objective.Scorer` lent to objectives."""

    def __init__(self, accelerator: Any, lm: nn.Module, pad: int) -> None:
        self.accelerator = accelerator
        self.lm = lm
        self.pad = pad

    def prepare(self, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """The training forward (the LM's body, DDP-wrapped on several processes) and optimizer."""
        return self.accelerator.prepare(HiddenStates(self.lm), optimizer)

    def frozen_modules(self, objective: Any) -> list[nn.Module]:
        """The objective's modules to gather around each micro-batch (none: nothing sharded)."""
        return []

    def even_micro_batches(self, micro: list[list[Any]]) -> list[list[Any]]:
        """The micro-batches this process runs (DDP: its own; no collective forward count)."""
        return micro

    def empty_forward(self, model: nn.Module) -> None:
        """A micro-batch with no rows: DDP still needs this process's forward."""
        model([[self.pad]], [[]], pad=self.pad)

    def touch_every_parameter(
        self, loss: torch.Tensor, scorer: Scorer, trainable: list[torch.Tensor]
    ) -> torch.Tensor:
        """DDP wants a gradient, even zero, for every parameter in every backward.

        Not on one process: autograd would hold each parameter's zero gradient from the
        start of the backward until its real one arrives, as much memory as all the
        gradients (0.54 GB at 135M); :meth:`fill_missing_grads` zeroes them after instead.
        """
        if self.accelerator.num_processes > 1:
            return loss + zero_touching(*trainable)
        return loss

    def fill_missing_grads(self, trainable: list[torch.Tensor]) -> None:
        """One process: the zero gradient :meth:`touch_every_parameter` would have given."""
        if self.accelerator.num_processes == 1:
            zero_missing_grads(trainable)

    def grad_norm(self, trainable: list[torch.Tensor]) -> torch.Tensor:
        """The whole gradient's norm (without clipping)."""
        grads = [p.grad.norm() for p in trainable if p.grad is not None]
        return torch.stack(grads).norm() if grads else torch.zeros(())

    def holds_shards(self) -> bool:
        """Whether per-process sums over parameters must be summed over processes."""
        return False

    def generation_weights(self) -> contextlib.AbstractContextManager[None]:
        """The full weights for sampling (DDP: they are already whole)."""
        return contextlib.nullcontext()

    def evaluates_without_tasks(self) -> bool:
        """Whether a process with no evaluation task must still take part (FSDP2 gathers)."""
        return False

    def gathered_states(self, optimizer: Any, objective: Any) -> tuple[Any, Any, Any] | None:
        """Model, optimizer and objective states gathered on every process (collective).

        None for data parallel: the main process reads its own, whole copies.
        """
        return None

    def local_states(self, optimizer: Any, objective: Any) -> tuple[Any, Any, Any]:
        """Model, optimizer and objective states as this process holds them."""
        return self.lm.state_dict(), optimizer.state_dict(), objective.state_dict()

    def load_states(self, optimizer: Any, model_state: Any, optimizer_state: Any) -> None:
        """Restore the model's and the optimizer's state from a checkpoint's full states."""
        self.lm.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """The full weights for ``final/``, gathered on every process (None: the main has them)."""
        return None


class FullySharded(DataParallel):
    """``parallelism: fsdp2``: weights, gradients and AdamW state sharded over the processes."""

    sharded = True
    scorer_class = FSDPScorer

    def __init__(self, accelerator: Any, lm: nn.Module, pad: int) -> None:
        super().__init__(accelerator, lm, pad)
        # the LM's parameters become shards before the optimizer takes them
        self.root = shard_model(lm, pad, accelerator.device)

    def prepare(self, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
        """FSDP2 wraps the model itself: accelerate must not add DDP."""
        return self.root, self.accelerator.prepare(optimizer)

    def frozen_modules(self, objective: Any) -> list[nn.Module]:
        """The objective's sharded frozen copies (a teacher, a reference)."""
        return frozen_modules(objective)

    def even_micro_batches(self, micro: list[list[Any]]) -> list[list[Any]]:
        """Every process runs as many FSDP forwards (empty ones where it has fewer rows)."""
        most = max_over_processes(len(micro), self.accelerator.device)
        return micro + [[] for _ in range(most - len(micro))]

    def empty_forward(self, model: nn.Module) -> None:
        """Nothing: :meth:`touch_every_parameter` runs the sharded forward."""

    def touch_every_parameter(
        self, loss: torch.Tensor, scorer: Scorer, trainable: list[torch.Tensor]
    ) -> torch.Tensor:
        """Every process's backward must run through every layer."""
        return loss + scorer.zero_loss()  # type: ignore[attr-defined]

    def fill_missing_grads(self, trainable: list[torch.Tensor]) -> None:
        """Nothing: every layer's backward ran."""

    def grad_norm(self, trainable: list[torch.Tensor]) -> torch.Tensor:
        """The norm over every process's shards."""
        return grad_norm(trainable)

    def holds_shards(self) -> bool:
        """Each process holds its shards."""
        return True

    def generation_weights(self) -> contextlib.AbstractContextManager[None]:
        """Gather the full weights on every process while sampling."""
        return generation_weights(self.root)

    def evaluates_without_tasks(self) -> bool:
        """Every process gathers the weights, with tasks or without."""
        return True

    def gathered_states(self, optimizer: Any, objective: Any) -> tuple[Any, Any, Any] | None:
        """The one-process files' states, gathered on every process."""
        return (
            full_model_state(self.lm),
            full_optimizer_state(optimizer),
            full_tree(objective.state_dict()),
        )

    def load_states(self, optimizer: Any, model_state: Any, optimizer_state: Any) -> None:
        """Every process cuts its shards of the full state."""
        load_full_state(self.lm, optimizer, model_state, optimizer_state)

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """The full weights, gathered on every process."""
        return full_model_state(self.lm)


def make_parallel(kind: str, accelerator: Any, lm: nn.Module, pad: int) -> DataParallel:
    """The strategy of ``parallelism`` (``"ddp"`` or ``"fsdp2"``) for this run."""
    return (FullySharded if kind == "fsdp2" else DataParallel)(accelerator, lm, pad)
