r"""The policy: a causal LM behind a small sampling interface, plus chunked scoring.

Two pieces:

* :class:`HFPolicy`: the :class:`rlrf.sampling.SamplingBackend` of a Hugging Face model,
  sampled with its own KV-cached loop (G samples per chat prompt with their token ids and
  per-token log-probs). The interface itself is torch-free and lives in :mod:`rlrf.sampling`,
  beside :class:`rlrf.sampling.OpenAIBackend`; it is re-exported here.
* Scoring: :func:`token_logprobs` and :func:`response_hidden_states` compute log-probs of
  given response tokens under any prompt (for example a teacher context). The LM head runs
  over chunks of positions, so peak memory grows with ``batch x chunk x vocab`` rather than
  ``batch x length x vocab`` (SmolLM2's vocabulary is 49k); with gradients, each chunk is
  recomputed in the backward pass (``torch.utils.checkpoint``) instead of being stored.
  :func:`shared_prefix_hidden_states` gives the same hidden states (with or without
  gradient) for rows whose prompts share a prefix per group (a rollout group's prompts and
  teacher prompts), running each shared prefix once and reusing its KV cache; sampling
  likewise prefills each distinct prompt once for its n samples.

Which distribution the log-probs belong to: the sampler returns log-probs of the
temperature-scaled softmax over the FULL vocabulary, ``log_softmax(logits / temperature)``,
evaluated at the sampled token. Top-p truncation changes which tokens can be drawn but is not
renormalized into the returned log-probs, which is the convention of PPO-style trainers
(verl, OpenRLHF): the trainer recomputes ``log_softmax(logits / temperature)`` for the ratio,
so both sides measure the same distribution. With ``top_p=1`` (the default) the returned
log-probs are exactly those of the distribution that was sampled. With ``temperature=0``
(greedy) they are those of ``temperature=1``.

Chat templates: prompts go through ``tokenizer.apply_chat_template`` with
``add_generation_prompt=True`` (and ``enable_thinking=False``, which templates without a
thinking switch ignore). A tokenizer without a chat template raises
:class:`ChatTemplateError`, unless ``HFPolicy(..., chat_template="chatml")`` opts into the
ChatML fallback (``<|im_start|>role\\ncontent<|im_end|>``), which only makes sense for models
trained on it.

This module imports torch; it lives with its users, the trainer and the benchmarks.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from rlrf.errors import ConfigError, RLRFError
from rlrf.sampling import FinishReason, Sample, SamplingBackend, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlrf.env import Message

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplateError",
    "HFPolicy",
    "HiddenStates",
    "Sample",
    "SamplingBackend",
    "SamplingParams",
    "chunked_logprobs_from_hidden",
    "encode_chat",
    "lm_head_logits",
    "response_hidden_states",
    "shared_prefix_hidden_states",
    "token_logprobs",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The ChatML fallback template used with ``chat_template="chatml"``."""


class ChatTemplateError(RLRFError, ValueError):
    """The tokenizer has no chat template and no fallback was chosen."""


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    *,
    chat_template: str | None = None,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Tokenize chat messages through the tokenizer's chat template.

    Args:
        tokenizer: A Hugging Face tokenizer.
        messages: The chat so far.
        chat_template: Template overriding the tokenizer's (``"chatml"`` for the fallback).
        add_generation_prompt: Append the assistant header.

    Raises:
        ChatTemplateError: the tokenizer has no chat template and none was given.

    """
    template = CHATML_TEMPLATE if chat_template == "chatml" else chat_template
    if template is None and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"tokenizer {name!r} has no chat template; use an instruction-tuned model, set "
            f"tokenizer.chat_template, or pass chat_template='chatml' to HFPolicy for the "
            f"ChatML fallback"
        )
    text = tokenizer.apply_chat_template(
        list(messages),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=False,
    )
    # the template already holds the special tokens (BOS included where the model wants it)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    if not ids:
        raise ChatTemplateError("the tokenizer has no EOS token; set tokenizer.eos_token")
    return sorted(ids)


def _cache_kwarg(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument: ``cache`` in transformers >= 5.2x, else the old one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


class HiddenStates(torch.nn.Module):
    """A causal LM's body as a module that returns response-aligned final hidden states.

    The training losses need the final hidden states at the response positions (the LM head
    runs per chunk of positions afterwards), not the logits of every position. Calling
    ``model.get_decoder()`` directly would bypass a DDP / accelerate wrapper and with it the
    gradient synchronization, so the trainer wraps THIS module instead: its forward is the
    whole forward of a batch of rows, and every parameter of the LM (the head included) is a
    parameter of it. :func:`response_hidden_states` and :func:`shared_prefix_hidden_states`
    accept it, wrapped or not, in place of the LM.

    Args:
        model: A causal LM whose ``get_decoder()`` returns the transformer body.

    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        groups: Sequence[Hashable] | None = None,
        pad: int = 0,
        max_batch_size: int = 64,
        min_shared: int = 16,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden[B, L, H], mask[B, L])`` of :func:`response_hidden_states`.

        With ``groups``, rows of a group run their common prompt prefix once
        (:func:`shared_prefix_hidden_states`, gradient included).
        """
        if groups is None:
            return response_hidden_states(self.model, prompt_ids, response_ids, pad=pad)
        return shared_prefix_hidden_states(
            self.model,
            prompt_ids,
            response_ids,
            groups=groups,
            pad=pad,
            max_batch_size=max_batch_size,
            min_shared=min_shared,
        )


def _as_hidden_states(model: Any) -> bool:
    """Whether ``model`` is a :class:`HiddenStates`, possibly inside a DDP-style wrapper."""
    return isinstance(getattr(model, "module", model), HiddenStates)


def _decoder_hidden(model: Any, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    return _last_hidden(model.get_decoder()(input_ids=ids, attention_mask=attn, use_cache=False))


def _last_hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def _plain_layers(cache: Any) -> list[Any] | None:
    """The per-layer key/value tensors of a plain dynamic cache, or None for other caches."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # older transformers: no per-layer cache objects
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None  # sliding-window, linear-attention, quantized ...: not copied row-wise
    if any(getattr(layer, "keys", None) is None or layer.keys.numel() == 0 for layer in layers):
        return None  # a cache the model did not fill (some versions drop it under checkpointing)
    return list(layers)


def _select_rows(cache: Any, index: torch.Tensor) -> Any:
    """A new cache whose row i is row ``index[i]`` of ``cache`` (None if not supported)."""
    from transformers.cache_utils import DynamicCache

    layers = _plain_layers(cache)
    if layers is None:
        return None
    out = DynamicCache()
    for n, layer in enumerate(layers):
        out.update(layer.keys[index], layer.values[index], n)
    return out


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set logits outside the smallest set with mass >= top_p to -inf (keeps at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _next_token(
    last: torch.Tensor, params: SamplingParams, draws: _ExponentialDraws | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of every row and the log-probs it is scored with (``[B]``, ``[B, V]``).

    The log-probs are ``log_softmax(logits / temperature)`` over the full vocabulary (see the
    module docstring); a fused ``log_softmax`` is cheaper here than a separate logsumexp.
    """
    logits = last.float()
    if params.temperature == 0:
        return logits.argmax(-1), logits.log_softmax(-1)
    # x / 1.0 == x exactly: skip the pass over the vocabulary
    scaled = logits if params.temperature == 1 else logits / params.temperature
    pick = _top_p_filter(scaled, params.top_p) if params.top_p < 1 else scaled
    probs = pick.softmax(-1)
    assert draws is not None
    # torch.multinomial(probs, 1) draws q ~ Exp(1) per entry and takes argmax(probs / q)
    # (the Gumbel-max trick): the same computation, without its validity checks
    q = draws.like(probs)
    token = torch.div(probs, q, out=q).argmax(-1)
    return token, scaled.log_softmax(-1)


_STATE_BYTES = 5056  # torch's CPU generator state: mt19937 (seed, left, seeded, next, 624 words)


class _ExponentialDraws:
    """Exp(1) draws equal to ``torch.empty_like(x).exponential_(1, generator=g)``, faster.

    ``torch.multinomial`` spends most of its time (and most of a sampling step's time outside
    the model) drawing one exponential per vocabulary entry, one at a time. On a CPU
    generator the same numbers come from numpy's MT19937 started from the torch
    generator's state (torch draws a 53-bit uniform ``u`` from two 32-bit words, high word
    first, and returns ``-log1p(-u)`` rounded to float32), vectorized; the generator's
    state is written back by :meth:`close`, so the stream continues exactly as after
    ``torch.multinomial``. Used only where :func:`_numpy_draws_match` found the numbers
    equal in this process; CUDA generators and any mismatch use torch's own draws.
    """

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator = generator
        self.bits: Any = None
        if device.type != "cpu" or not _numpy_draws_match():
            return
        self.generator = generator if generator is not None else torch.default_generator
        self.bits = _mt19937_from_torch(self.generator)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """A float32 tensor of ``x``'s shape filled with Exp(1) draws."""
        if self.bits is None or x.dtype != torch.float32:
            return torch.empty_like(x).exponential_(1, generator=self.generator)
        return _numpy_exponential(self.bits, x.numel()).view(x.shape)

    def close(self) -> None:
        """Write the draws' position back into the torch generator."""
        if self.bits is not None:
            _mt19937_to_torch(self.bits, self.generator)
            self.bits = None


def _mt19937_from_torch(generator: torch.Generator) -> Any:
    import numpy as np

    state = generator.get_state().numpy().tobytes()
    if len(state) != _STATE_BYTES:
        raise ValueError(f"unexpected torch generator state of {len(state)} bytes")
    left = int(np.frombuffer(state, np.int32, 1, 8)[0])
    nxt = int(np.frombuffer(state, np.uint32, 1, 16)[0])
    key = np.frombuffer(state, np.uint64, 624, 24).astype(np.uint32)
    bits = np.random.MT19937()
    # torch regenerates the 624 words when ``left`` reaches 0 on a draw; numpy at pos 624
    bits.state = {
        "bit_generator": "MT19937",
        "state": {"key": key, "pos": 624 if left == 1 else nxt},
    }
    return bits


def _mt19937_to_torch(bits: Any, generator: torch.Generator) -> None:
    import numpy as np

    state = bytearray(generator.get_state().numpy().tobytes())
    pos = int(bits.state["state"]["pos"])
    state[8:12] = np.int32(625 - pos).tobytes()
    state[16:20] = np.uint32(pos).tobytes()
    state[24 : 24 + 8 * 624] = bits.state["state"]["key"].astype(np.uint64).tobytes()
    generator.set_state(torch.frombuffer(state, dtype=torch.uint8).clone())


def _numpy_exponential(bits: Any, n: int) -> torch.Tensor:
    import numpy as np

    words = bits.random_raw(2 * n).reshape(n, 2)  # 32-bit words in uint64
    r = (words[:, 0] << np.uint64(32)) | words[:, 1]
    r &= np.uint64((1 << 53) - 1)
    u = r.astype(np.float64)
    u *= -(2.0**-53)
    np.log1p(u, out=u)
    np.negative(u, out=u)
    return torch.from_numpy(u.astype(np.float32))


@functools.cache
def _numpy_draws_match() -> bool:
    """Whether :class:`_ExponentialDraws` reproduces this torch's draws (checked once)."""
    sizes = (5, 1500, 700)
    try:
        ours, theirs = (torch.Generator().manual_seed(20240611) for _ in range(2))
        for g in (ours, theirs):
            torch.rand(7, generator=g)  # start part-way through the 624 words
        bits = _mt19937_from_torch(ours)
        got = [_numpy_exponential(bits, n) for n in sizes]
        _mt19937_to_torch(bits, ours)
        want = [torch.empty(n).exponential_(1, generator=theirs) for n in sizes]
        same = all(torch.equal(x, y) for x, y in zip(got, want, strict=True))
        return same and torch.equal(torch.rand(9, generator=ours), torch.rand(9, generator=theirs))
    except Exception:  # any surprise (another state layout, numpy missing): torch's own draws
        return False


def _preallocate(cache: Any, capacity: int) -> bool:
    """Give a plain dynamic cache buffers for ``capacity`` positions, written in place.

    transformers' ``DynamicLayer`` concatenates each step's key/value to the cache, copying
    the whole cache every step; these layers write into a buffer allocated once and return
    views of the filled part (the same values, so attention gives the same result). Returns
    False, leaving the cache as it is, for caches that are not plain per-layer caches.
    """
    layers = _plain_layers(cache)
    if layers is None or capacity <= layers[0].keys.shape[-2]:
        return False
    cache.layers = [_grow_layer_class()(layer.keys, layer.values, capacity) for layer in layers]
    return True


@functools.cache
def _grow_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A dynamic cache layer over a buffer sized for the whole generation."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int) -> None:
            super().__init__()
            b, h, n, d = keys.shape
            self.key_buffer = keys.new_empty((b, h, capacity, d))
            self.value_buffer = values.new_empty((b, h, capacity, values.shape[-1]))
            self.key_buffer[:, :, :n] = keys
            self.value_buffer[:, :, :n] = values
            self.length = n
            self.keys, self.values = self.key_buffer[:, :, :n], self.value_buffer[:, :, :n]
            self.device, self.is_initialized = keys.device, True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            end = self.length + key_states.shape[-2]
            if end > self.key_buffer.shape[-2]:  # longer than planned: grow like DynamicLayer
                self.key_buffer = torch.cat([self.keys, key_states], dim=-2)
                self.value_buffer = torch.cat([self.values, value_states], dim=-2)
            else:
                self.key_buffer[:, :, self.length : end] = key_states
                self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self.keys = self.key_buffer[:, :, :end]
            self.values = self.value_buffer[:, :, :end]
            return self.keys, self.values

    return PreallocatedLayer


class HFPolicy:
    """A Hugging Face causal LM with its tokenizer: sampling and scoring.

    Args:
        model: The causal LM (possibly wrapped by ``peft``).
        tokenizer: Its tokenizer; the pad token defaults to EOS.
        chat_template: None to use the tokenizer's, ``"chatml"`` for the ChatML fallback, or
            a Jinja template string.
        max_batch_size: Rows (prompt x sample) generated at once.

    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chat_template: str | None = None,
        max_batch_size: int = 64,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.chat_template = chat_template
        self.max_batch_size = max_batch_size
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self._copy_cache_rows = True  # False once the model's cache proved not copyable
        self._generation_dtype: torch.dtype | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "smollm2-135m",
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> HFPolicy:
        """Load through :func:`algorithms.models.load_model` (the embedded model by default)."""
        from algorithms.models import load_model

        model, tokenizer = load_model(name_or_path, dtype=dtype, device=device)
        return cls(model, tokenizer, **kwargs)

    @property
    def generation_dtype(self) -> torch.dtype | None:
        """Opt-in lower precision for sampling: ``torch.bfloat16`` (or ``float16`` on CUDA).

        None (the default) samples with the model's own weights. With ``torch.bfloat16`` the
        sampling forwards run under ``torch.autocast`` (each weight cast once per call where
        it requires grad, every forward otherwise): about 1.5x the tokens/s of fp32 measured
        on a 2-core AVX-512-BF16 CPU, but DIFFERENT samples, and log-probs that are the bf16
        model's, up to ~0.25 nats away from the fp32 model's on SmolLM2-135M, which a
        trainer using them as the old policy's log-probs sees as off-policy noise.
        """
        return self._generation_dtype

    @generation_dtype.setter
    def generation_dtype(self, dtype: torch.dtype | None) -> None:
        allowed = {None, torch.bfloat16} | (
            {torch.float16} if self.device.type == "cuda" else set()
        )
        if dtype not in allowed:
            names = ", ".join(sorted(str(d) for d in allowed))
            raise ConfigError(
                f"generation_dtype {dtype} is not supported on {self.device.type}; use one of "
                f"{names}"
            )
        self._generation_dtype = dtype

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Tokenize a chat prompt with the assistant header appended."""
        return encode_chat(self.tokenizer, messages, chat_template=self.chat_template)

    def decode(self, token_ids: Sequence[int]) -> str:
        """Decode response tokens, dropping EOS and other special tokens."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def sample(
        self, prompts: Sequence[Sequence[Message]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """Sample ``n`` responses per chat prompt (see :class:`SamplingBackend`)."""
        encoded = [self.encode(p) for p in prompts]
        return self.sample_ids(encoded, n, params)

    def sample_ids(
        self, prompt_ids: Sequence[Sequence[int]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """Sample ``n`` responses per tokenized prompt."""
        rows = [list(p) for p in prompt_ids for _ in range(n)]
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        flat: list[Sample] = []
        for start in range(0, len(rows), self.max_batch_size):
            flat.extend(
                self._generate(rows[start : start + self.max_batch_size], params, generator)
            )
        return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    @torch.no_grad()
    def _generate(
        self,
        rows: list[list[int]],
        params: SamplingParams,
        generator: torch.Generator | None,
    ) -> list[Sample]:
        """Sample one response per row (left-padded batch, KV-cached decoding).

        Where the time goes on a CPU, besides the model's own matrix products: the
        ``batch x vocab`` exponential draws of ``torch.multinomial`` and the KV cache growing
        by concatenation (every step copied the whole cache). Both are done differently here
        with the same result: the draws come from :class:`_ExponentialDraws` (the same
        numbers from the same generator state, about twice as fast), the cache and the
        attention mask are allocated once for the whole generation and written in place.
        Same seed, same tokens and log-probs as the plain loop (tests/algorithms/
        test_policy.py keeps a copy of it).
        """
        model, device = self.model, self.device
        was_training = model.training
        model.eval()
        pad = int(self.tokenizer.pad_token_id)
        steps = params.max_new_tokens
        # left padding so every row's next token is at the last column
        width = max(len(r) for r in rows)
        ids, attn = _left_padded(rows, width, pad, device)
        positions = _left_positions(attn)
        # the mask of every step is a prefix of this one (no per-step concatenation)
        mask = torch.ones((len(rows), width + steps), dtype=attn.dtype, device=device)
        mask[:, :width] = attn
        eos = torch.tensor(self.eos_token_ids, device=device)
        cache_kw = _cache_kwarg(model)
        finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
        tokens = torch.full((len(rows), steps), pad, dtype=torch.long, device=device)
        logps = torch.zeros((len(rows), steps), dtype=torch.float32, device=device)
        draws = _ExponentialDraws(generator, device) if params.temperature > 0 else None
        done = 0
        low = self._generation_dtype
        precision = (
            torch.autocast(device.type, dtype=low) if low is not None else contextlib.nullcontext()
        )
        try:
            with precision:
                last, cache = self._prefill(rows, ids, attn, positions)
                _preallocate(cache, width + steps)
                for step in range(steps):
                    token, logp = _next_token(last, params, draws)
                    token.masked_fill_(finished, pad)
                    tokens[:, step] = token
                    logps[:, step] = logp.gather(-1, token[:, None])[:, 0]
                    done = step + 1
                    finished |= torch.isin(token, eos)
                    if bool(finished.all()):
                        break
                    positions = positions[:, -1:] + 1
                    out = model(
                        input_ids=token[:, None], attention_mask=mask[:, : width + done],
                        position_ids=positions, use_cache=True, **{cache_kw: cache},
                    )  # fmt: skip
                    last, cache = out.logits[:, -1], _output_cache(out)
        finally:
            if draws is not None:
                draws.close()
            model.train(was_training)
        if params.temperature > 0 and bool(logps[:, :done].isnan().any()):
            # torch.multinomial used to refuse such a distribution; say so, and why
            raise RLRFError(
                "the model's logits contain NaN, so no token can be sampled; check the "
                "weights (a diverged update?) and the dtype (fp16 overflow?)"
            )
        tok = tokens[:, :done].tolist()
        lp = logps[:, :done].tolist()
        eos_set = set(self.eos_token_ids)
        samples = []
        for i, row in enumerate(rows):
            length = len(tok[i])
            reason: FinishReason = "length"
            for t, token_id in enumerate(tok[i]):
                if token_id in eos_set:
                    length, reason = t + 1, "stop"
                    break
            ids_i = tok[i][:length]
            samples.append(
                Sample(
                    text=self.decode(ids_i),
                    token_ids=ids_i,
                    logprobs=lp[i][:length],
                    finish_reason=reason,
                    prompt_token_ids=row,
                )
            )
        return samples

    def _prefill(
        self,
        rows: list[list[int]],
        ids: torch.Tensor,
        attn: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, Any]:
        """Run the prompts; return the last position's logits and the KV cache of every row.

        The n samples of a prompt are n identical rows: each distinct prompt runs once and
        its keys/values are copied to its rows (the plain batched prefill where the model's
        cache is not a plain per-layer key/value cache).
        """
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(r), len(distinct)) for r in rows]
        if len(distinct) < len(rows) and self._copy_cache_rows:
            first = torch.tensor([owner.index(j) for j in range(len(distinct))], device=ids.device)
            out = self.model(
                input_ids=ids[first], attention_mask=attn[first], position_ids=positions[first],
                use_cache=True, logits_to_keep=1,
            )  # fmt: skip
            index = torch.tensor(owner, device=ids.device)
            cache = _select_rows(_output_cache(out), index)
            if cache is not None:
                return out.logits[index, -1], cache
            self._copy_cache_rows = False  # do not pay for the distinct prefill again
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        return out.logits[:, -1], _output_cache(out)

    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        chunk_size: int = 256,
    ) -> list[list[float]]:
        """Log-probs of each response's tokens after its prompt (no gradient).

        Args:
            prompt_ids: Tokenized prompts (for example teacher contexts).
            response_ids: The response tokens to score, one list per prompt.
            temperature: Logits are divided by it before the softmax (as when sampling).
            chunk_size: Positions per LM-head chunk.

        """
        with torch.no_grad():
            lp, _ = token_logprobs(
                self.model, prompt_ids, response_ids, temperature=temperature, chunk_size=chunk_size
            )
        return [lp[i, : len(r)].tolist() for i, r in enumerate(response_ids)]


def _pad_targets(response_ids: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    width = max(1, max(len(r) for r in response_ids))
    out = torch.zeros((len(response_ids), width), dtype=torch.long, device=device)
    for i, r in enumerate(response_ids):
        out[i, : len(r)] = torch.tensor(list(r), dtype=torch.long, device=device)
    return out


def response_hidden_states(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    pad: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the final hidden states at the positions that predict each response token.

    Each row is ``prompt + response``, right-padded; one forward pass through the decoder
    (without the LM head) gives the hidden states, and the ones that predict response token
    ``t`` (at position ``len(prompt) + t - 1``) are gathered into a response-aligned tensor,
    so student and teacher rows with different prompt lengths line up token by token.

    Args:
        model: A causal LM whose ``get_decoder()`` returns the transformer body, or a
            :class:`HiddenStates` module (possibly wrapped by DDP / accelerate).
        prompt_ids: One tokenized prompt per row (non-empty).
        response_ids: One list of response tokens per row.
        pad: Token id used for padding (masked out by the attention mask).

    Returns:
        ``(hidden[B, L, H], mask[B, L])`` with ``L`` the longest response.

    """
    if _as_hidden_states(model):  # its forward (through DDP's) calls this with the LM
        return model(prompt_ids, response_ids, pad=pad)
    device = next(model.parameters()).device
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every row needs a non-empty prompt to predict its first token from")
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    ids, attn = _right_padded(rows, max(lengths), pad, device)
    hidden = _decoder_hidden(model, ids, attn)
    return _at_responses(hidden, [len(p) for p in prompt_ids], response_ids)


def shared_prefix_hidden_states(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    groups: Sequence[Hashable],
    pad: int = 0,
    max_batch_size: int = 64,
    min_shared: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_hidden_states` for rows whose prompts share a prefix per group.

    The G rows of one rollout group have prompts with a long common token prefix (the same
    student prompt; teacher prompts share template, system prompt, question and often a
    sibling's solution), so each group's prefix goes through the decoder ONCE, its KV
    cache is copied to the group's rows, and only the rest of each prompt plus the response
    is run on top of it. Steps:

    1. Per group (rows with equal ``groups[i]``), the longest common token prefix of the
       prompts, leaving at least one prompt token of every row outside it; the group is
       split into clusters with longer prefixes where that saves more tokens (the rows
       given one sibling's solution share it too). A row alone, or a prefix shorter than
       ``min_shared`` tokens, is not shared.
    2. The distinct prefixes run left-padded (explicit ``position_ids``), at most
       ``max_batch_size`` at a time, with ``use_cache=True``.
    3. Rows are sorted by suffix length (rest of the prompt + response) and cut into
       sub-batches of at most ``max_batch_size`` rows where that saves padding (a fixed
       cost per forward pass keeps GPU batches large), right-padded, over the cache of their
       prefixes (2-D attention mask over cache + suffix, positions continuing after the
       prefix). A sub-batch with no shared row is a plain :func:`response_hidden_states`.

    The result equals :func:`response_hidden_states` up to floating-point rounding. A model
    whose cache is not a plain per-layer key/value cache (sliding-window or linear-attention
    layers, transformers older than 5) gets the plain computation, in the same sub-batches.
    Without gradient, peak memory holds the expanded keys/values of one sub-batch; with
    gradient (the student), every sub-batch's are kept for the backward pass, as activations
    are. Under activation checkpointing in training the model returns no cache, so the
    plain computation runs.

    Args:
        model: A causal LM whose ``get_decoder()`` returns the transformer body (possibly a
            ``peft`` model), or a :class:`HiddenStates` module.
        prompt_ids: One tokenized prompt per row (non-empty).
        response_ids: One list of response tokens per row.
        groups: One hashable key per row; only rows with the same key share a prefix.
        pad: Token id used for padding (masked out by the attention mask).
        max_batch_size: Most rows (and most prefixes) per forward pass.
        min_shared: Shortest common prefix, in tokens, worth sharing.

    Returns:
        ``(hidden[B, L, H], mask[B, L])`` with ``L`` the longest response, rows in the
        given order; hidden states outside the mask are zero.

    """
    prompts = [list(p) for p in prompt_ids]
    responses = [list(r) for r in response_ids]
    if not len(prompts) == len(responses) == len(groups):
        raise ValueError("prompt_ids, response_ids and groups need one entry per row")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every row needs a non-empty prompt to predict its first token from")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if _as_hidden_states(model):  # its forward (through DDP's) calls this with the LM
        return model(
            prompts,
            responses,
            groups=groups,
            pad=pad,
            max_batch_size=max_batch_size,
            min_shared=min_shared,
        )
    device = next(model.parameters()).device
    prefixes, owner = _group_prefixes(prompts, groups, min_shared)
    share = bool(prefixes) and not _drops_cache(model)
    cache = _PrefixCache.build(model, prefixes, pad, max_batch_size) if share else None
    if cache is None:
        owner = [-1] * len(prompts)
    shared = [len(prefixes[j]) if j >= 0 else 0 for j in owner]

    width = max(1, max(len(r) for r in responses))
    hidden = mask = None
    order = sorted(
        range(len(prompts)), key=lambda i: len(prompts[i]) - shared[i] + len(responses[i])
    )
    cost = [len(prompts[i]) - shared[i] + len(responses[i]) for i in order]
    overhead = 32 if device.type == "cpu" else 1024
    start = 0
    for end in _length_buckets(cost, max_batch_size, overhead):
        rows, start = order[start:end], end
        if cache is None or all(owner[i] < 0 for i in rows):
            h, m = response_hidden_states(
                model, [prompts[i] for i in rows], [responses[i] for i in rows], pad=pad
            )
        else:
            h, m = cache.response_hidden_states(
                [prompts[i][shared[i] :] for i in rows],
                [responses[i] for i in rows],
                [owner[i] for i in rows],
                pad,
            )
        if hidden is None:
            hidden = h.new_zeros((len(prompts), width, h.shape[-1]))
            mask = torch.zeros((len(prompts), width), dtype=torch.bool, device=device)
        index = torch.tensor(rows, device=device)
        hidden[index, : h.shape[1]] = h * m[..., None]
        mask[index, : m.shape[1]] = m
    assert hidden is not None and mask is not None
    return hidden, mask


def _drops_cache(model: Any) -> bool:
    """Whether the model returns no cache here: activation checkpointing while training."""
    if not (torch.is_grad_enabled() and model.training):
        return False
    flag = getattr(model, "is_activation_checkpointing", None)
    if flag is None:  # transformers < 5
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


def _group_prefixes(
    prompts: list[list[int]], groups: Sequence[Hashable], min_shared: int
) -> tuple[list[list[int]], list[int]]:
    """The prompt prefixes worth running once, and each row's prefix index (or -1).

    Within a group the rows are split further where that saves more tokens: the rows that
    use one sibling's solution share the question AND that solution, the others only the
    question, so one group may give several prefixes (see :func:`_best_clusters`).
    """
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    prefixes: list[list[int]] = []
    owner = [-1] * len(prompts)
    for rows in members.values():
        _, clusters = _best_clusters(prompts, rows, max(1, min_shared))
        for cluster, n in clusters:
            for i in cluster:
                owner[i] = len(prefixes)
            prefixes.append(prompts[cluster[0]][:n])
    return prefixes, owner


def _common_prefix(prompts: list[list[int]], rows: list[int]) -> int:
    """Longest common prefix of the rows' prompts, leaving every row a non-empty suffix."""
    first = prompts[rows[0]]
    n = min(len(prompts[i]) for i in rows) - 1
    for i in rows[1:]:
        n = next((k for k in range(n) if prompts[i][k] != first[k]), n)
    return n


def _best_clusters(
    prompts: list[list[int]], rows: list[int], min_shared: int
) -> tuple[int, list[tuple[list[int], int]]]:
    """Split ``rows`` into clusters with one shared prefix each, saving the most tokens.

    A cluster of ``c`` rows sharing ``n`` tokens saves ``(c - 1) * n``. Either the rows
    share their common prefix, or they are split by their first token after it and each
    part is solved the same way; the better of the two wins. Returns (tokens saved,
    [(rows, prefix length), ...]); rows left out share nothing.
    """
    if len(rows) < 2:
        return 0, []
    n = _common_prefix(prompts, rows)
    whole = (len(rows) - 1) * n if n >= min_shared else 0
    parts: dict[int, list[int]] = {}
    for i in rows:
        # a row whose prompt ends right after the common prefix stays alone
        key = prompts[i][n] if len(prompts[i]) > n + 1 else -1 - i
        parts.setdefault(key, []).append(i)
    if len(parts) == 1:  # cannot happen (the prefix would be longer); guards the recursion
        return whole, [(rows, n)] if whole else []
    split_saved, split = 0, []
    for part in parts.values():
        saved, clusters = _best_clusters(prompts, part, min_shared)
        split_saved += saved
        split += clusters
    if split_saved > whole:
        return split_saved, split
    return whole, [(rows, n)] if whole else []


def _length_buckets(lengths: list[int], max_rows: int, overhead: int) -> list[int]:
    """Where to cut rows sorted by length into sub-batches, fewest padded tokens first.

    A sub-batch costs its rows times its longest row, plus ``overhead`` tokens per forward
    pass (a GPU wants big batches, a CPU does not care): dynamic programming over the cut
    points. Returns the end index of each sub-batch.
    """
    best = [0] + [math.inf] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for j in range(1, len(lengths) + 1):
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + (j - i) * lengths[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    ends, j = [], len(lengths)
    while j > 0:
        ends.append(j)
        j = cut[j]
    return ends[::-1]


class _PrefixCache:
    """Keys/values of distinct prompt prefixes, left-padded to one width, per decoder layer."""

    def __init__(self, decoder: Any, cache_kw: str, layers: list, attn: torch.Tensor) -> None:
        self.decoder = decoder
        self.cache_kw = cache_kw
        self.layers = layers  # [(keys[P, heads, W, d], values[P, heads, W, d]), ...]
        self.attn = attn  # [P, W], zeros on the left padding
        self.lengths = attn.sum(-1)

    @classmethod
    def build(
        cls, model: Any, prefixes: list[list[int]], pad: int, max_batch_size: int
    ) -> _PrefixCache | None:
        """Run the prefixes; None where the model's cache can't be reused this way."""
        decoder, cache_kw = model.get_decoder(), _cache_kwarg(model)
        device = next(model.parameters()).device
        width = max(len(p) for p in prefixes)
        chunks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        masks = []
        for start in range(0, len(prefixes), max_batch_size):
            part = prefixes[start : start + max_batch_size]
            ids, attn = _left_padded(part, width, pad, device)
            masks.append(attn)
            positions = _left_positions(attn)
            out = decoder(
                input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True
            )
            layers = _plain_layers(_output_cache(out))
            if layers is None:
                return None
            chunks.append([(layer.keys, layer.values) for layer in layers])
        layers = [
            tuple(torch.cat([c[n][kv] for c in chunks]) for kv in (0, 1))
            for n in range(len(chunks[0]))
        ]
        return cls(decoder, cache_kw, layers, torch.cat(masks))

    def response_hidden_states(
        self,
        suffixes: list[list[int]],
        responses: list[list[int]],
        owner: list[int],
        pad: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states of ``suffix + response`` rows over their prefixes (owner -1: none)."""
        from transformers.cache_utils import DynamicCache

        device = self.attn.device
        has = torch.tensor([j >= 0 for j in owner], device=device)
        index = torch.tensor([max(j, 0) for j in owner], device=device)
        width = self.attn.shape[1]
        keep = int(self.lengths[index][has].max())  # cache columns any row needs
        cols = slice(width - keep, width)
        cache = DynamicCache()
        for n, (k, v) in enumerate(self.layers):
            cache.update(k[index, :, cols], v[index, :, cols], n)
        past = self.attn[index, cols] * has[:, None]
        offset = torch.where(has, self.lengths[index], 0)

        rows = [s + r for s, r in zip(suffixes, responses, strict=True)]
        ids, attn = _right_padded(rows, max(len(r) for r in rows), pad, device)
        positions = offset[:, None] + torch.arange(ids.shape[1], device=device)[None, :]
        out = self.decoder(
            input_ids=ids,
            attention_mask=torch.cat([past, attn], dim=1),
            position_ids=positions,
            use_cache=True,
            **{self.cache_kw: cache},
        )
        return _at_responses(_last_hidden(out), [len(s) for s in suffixes], responses)


def _padded(
    rows: Sequence[Sequence[int]], width: int, pad: int, device: torch.device, *, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of rows padded to ``width`` on the left or the right."""
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    attn = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        cols = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, cols] = torch.tensor(list(r), dtype=torch.long, device=device)
        attn[i, cols] = 1
    return ids, attn


def _left_padded(
    rows: Sequence[Sequence[int]], width: int, pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return _padded(rows, width, pad, device, left=True)


def _right_padded(
    rows: Sequence[Sequence[int]], width: int, pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return _padded(rows, width, pad, device, left=False)


def _left_positions(attn: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows (0 at each row's first real token)."""
    return (attn.cumsum(-1) - 1).clamp_(min=0)


def _at_responses(
    hidden: torch.Tensor, starts: Sequence[int], response_ids: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the hidden states that predict each response token into ``[B, L, H]``.

    Row i's response token t is predicted at position ``starts[i] - 1 + t`` (``starts[i]``
    is where its response begins in ``hidden``); returns the gathered states and the mask.
    """
    device = hidden.device
    resp_len = torch.tensor([len(r) for r in response_ids], device=device)
    offsets = torch.arange(max(1, int(resp_len.max())), device=device)
    start = torch.tensor([s - 1 for s in starts], device=device)
    index = (start[:, None] + offsets[None, :]).clamp_(max=hidden.shape[1] - 1)
    gathered = hidden.gather(1, index[:, :, None].expand(-1, -1, hidden.shape[-1]))
    return gathered, offsets[None, :] < resp_len[:, None]


def lm_head_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the model's LM head (and final logit soft-capping where the config has it)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _chunk_logprobs(
    model: PreTrainedModel, hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = lm_head_logits(model, hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]


def chunked_logprobs_from_hidden(
    model: PreTrainedModel,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    checkpoint_chunks: bool | None = None,
) -> torch.Tensor:
    """Per-token log-probs of ``targets`` from hidden states, the LM head run per chunk.

    Args:
        model: The causal LM (for its LM head).
        hidden: ``[B, L, H]`` hidden states (see :func:`response_hidden_states`).
        targets: ``[B, L]`` token ids.
        temperature: Logits are divided by it before the log-softmax.
        chunk_size: Positions per chunk; peak memory is ``B x chunk_size x vocab`` floats.
        checkpoint_chunks: Recompute each chunk's logits in the backward pass instead of
            storing them; defaults to "when gradients are enabled".

    Returns:
        ``[B, L]`` float32 log-probs.

    """
    if checkpoint_chunks is None:
        checkpoint_chunks = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for start in range(0, hidden.shape[1], chunk_size):
        h = hidden[:, start : start + chunk_size]
        t = targets[:, start : start + chunk_size]
        if checkpoint_chunks:
            pieces.append(
                checkpoint(_chunk_logprobs, model, h, t, temperature, use_reentrant=False)
            )
        else:
            pieces.append(_chunk_logprobs(model, h, t, temperature))
    return torch.cat(pieces, dim=1)


def token_logprobs(
    model: PreTrainedModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    pad: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of response tokens under their prompts, with gradient if enabled.

    Returns:
        ``(logprobs[B, L], mask[B, L])``, response-aligned, zero where masked.

    """
    hidden, mask = response_hidden_states(model, prompt_ids, response_ids, pad=pad)
    targets = _pad_targets(response_ids, hidden.device)
    lp = chunked_logprobs_from_hidden(
        model, hidden, targets, temperature=temperature, chunk_size=chunk_size
    )
    return lp * mask, mask
