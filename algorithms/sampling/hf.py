r"""HFPolicy: a Hugging Face causal LM as a :class:`rlrf.sampling.SamplingBackend`.

It samples with the model's own KV-cached loop: G samples per chat prompt with their token
ids and per-token log-probs, each distinct prompt prefilled once for its n samples. The
interface itself is torch-free and lives in :mod:`rlrf.sampling`, beside
:class:`rlrf.sampling.OpenAIBackend`; it is re-exported here. The gradient path's scoring
(chunked LM-head log-probs, shared prompt prefixes) is :mod:`algorithms.scoring`.

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
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from algorithms.scoring import (
    cache_kwarg,
    left_padded,
    left_positions,
    output_cache,
    plain_layers,
    select_rows,
    token_logprobs,
)
from rlrf.errors import ConfigError, RLRFError
from rlrf.sampling import FinishReason, Sample, SamplingBackend, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from rlrf.env import Message

__all__ = [
    "CHATML_TEMPLATE",
    "ChatTemplateError",
    "HFPolicy",
    "Sample",
    "SamplingBackend",
    "SamplingParams",
    "encode_chat",
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
    layers = plain_layers(cache)
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
        ids, attn = left_padded(rows, width, pad, device)
        positions = left_positions(attn)
        # the mask of every step is a prefix of this one (no per-step concatenation)
        mask = torch.ones((len(rows), width + steps), dtype=attn.dtype, device=device)
        mask[:, :width] = attn
        eos = torch.tensor(self.eos_token_ids, device=device)
        cache_kw = cache_kwarg(model)
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
                    last, cache = out.logits[:, -1], output_cache(out)
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
            cache = select_rows(output_cache(out), index)
            if cache is not None:
                return out.logits[index, -1], cache
            self._copy_cache_rows = False  # do not pay for the distinct prefill again
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        return out.logits[:, -1], output_cache(out)

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


