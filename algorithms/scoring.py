r"""Scoring on the gradient path: log-probs of given response tokens under given prompts.

:func:`token_logprobs` and :func:`response_hidden_states` compute log-probs of given
response tokens under any prompt (for example a teacher context). The LM head runs over
chunks of positions, so peak memory grows with ``batch x chunk x vocab`` rather than
``batch x length x vocab`` (SmolLM2's vocabulary is 49k); with gradients, each chunk is
recomputed in the backward pass (``torch.utils.checkpoint``) instead of being stored.
:func:`shared_prefix_hidden_states` gives the same hidden states (with or without gradient)
for rows whose prompts share a prefix per group (a rollout group's prompts and teacher
prompts), running each shared prefix once and reusing its KV cache.

No sampling code lives here (that is :mod:`algorithms.sampling`); the padding and KV-cache
helpers at the top are shared with the HF sampler.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "HiddenStates",
    "cache_kwarg",
    "chunked_logprobs_from_hidden",
    "left_padded",
    "left_positions",
    "lm_head_logits",
    "output_cache",
    "plain_layers",
    "response_hidden_states",
    "select_rows",
    "shared_prefix_hidden_states",
    "token_logprobs",
]

def cache_kwarg(model: PreTrainedModel) -> str:
    """Name of the KV-cache argument: ``cache`` in transformers >= 5.2x, else the old one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache of a forward's output (``cache`` or ``past_key_values``)."""
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


def plain_layers(cache: Any) -> list[Any] | None:
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


def select_rows(cache: Any, index: torch.Tensor) -> Any:
    """A new cache whose row i is row ``index[i]`` of ``cache`` (None if not supported)."""
    from transformers.cache_utils import DynamicCache

    layers = plain_layers(cache)
    if layers is None:
        return None
    out = DynamicCache()
    for n, layer in enumerate(layers):
        out.update(layer.keys[index], layer.values[index], n)
    return out


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
        decoder, cache_kw = model.get_decoder(), cache_kwarg(model)
        device = next(model.parameters()).device
        width = max(len(p) for p in prefixes)
        chunks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        masks = []
        for start in range(0, len(prefixes), max_batch_size):
            part = prefixes[start : start + max_batch_size]
            ids, attn = left_padded(part, width, pad, device)
            masks.append(attn)
            positions = left_positions(attn)
            out = decoder(
                input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True
            )
            layers = plain_layers(output_cache(out))
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


def left_padded(
    rows: Sequence[Sequence[int]], width: int, pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows to ``width``: (ids, attention mask) on ``device``."""
    return _padded(rows, width, pad, device, left=True)


def _right_padded(
    rows: Sequence[Sequence[int]], width: int, pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return _padded(rows, width, pad, device, left=False)


def left_positions(attn: torch.Tensor) -> torch.Tensor:
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
