"""The HF policy: sampling log-probs agree with scoring; chunked scoring is exact."""

from __future__ import annotations

import functools

import pytest
import torch

from algorithms.sampling.hf import (
    ChatTemplateError,
    HFPolicy,
    SamplingBackend,
    SamplingParams,
    encode_chat,
)
from algorithms.scoring import token_logprobs
from algorithms.testing import tiny_model, tiny_tokenizer
from rlrf.errors import ConfigError

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a longer prompt"}],
]


@pytest.fixture(scope="module")
def policy():
    return HFPolicy(tiny_model(seed=1), tiny_tokenizer(), max_batch_size=4)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9)])
def test_sample_logprobs_match_scoring(policy, temperature, top_p):
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3)
    groups = policy.sample(PROMPTS, 3, params)
    assert isinstance(policy, SamplingBackend)
    assert [len(g) for g in groups] == [3, 3]
    samples = [s for g in groups for s in g]
    for s in samples:
        assert len(s.token_ids) == len(s.logprobs) <= 12
        assert s.finish_reason in ("stop", "length")
        if s.finish_reason == "stop":
            assert s.token_ids[-1] == policy.tokenizer.eos_token_id
        else:
            assert len(s.token_ids) == 12
        assert s.text == policy.decode(s.token_ids)
    scored = policy.score(
        [s.prompt_token_ids for s in samples],
        [s.token_ids for s in samples],
        temperature=temperature,
        chunk_size=5,
    )
    for s, lp in zip(samples, scored, strict=True):
        torch.testing.assert_close(torch.tensor(lp), torch.tensor(s.logprobs), atol=1e-4, rtol=0)


def test_same_seed_same_samples(policy):
    params = SamplingParams(max_new_tokens=8, seed=11)
    a = policy.sample(PROMPTS, 2, params)
    b = policy.sample(PROMPTS, 2, params)
    assert [[s.token_ids for s in g] for g in a] == [[s.token_ids for s in g] for g in b]


def test_greedy_is_argmax(policy):
    (sample,), _ = policy.sample(PROMPTS, 1, SamplingParams(temperature=0, max_new_tokens=5))
    ids = sample.prompt_token_ids + sample.token_ids
    with torch.no_grad():
        logits = policy.model(torch.tensor([ids])).logits[0]
    start = len(sample.prompt_token_ids) - 1
    expected = logits[start : start + len(sample.token_ids)].argmax(-1).tolist()
    assert sample.token_ids == expected


def test_chunked_scoring_equals_unchunked_with_gradients():
    model = tiny_model(seed=2)
    prompts = [[1, 5, 6, 7], [1, 9]]
    responses = [[10, 11, 12, 13, 14, 2], [20, 21]]
    results = []
    for chunk in (1, 3, 1000):
        model.zero_grad()
        lp, mask = token_logprobs(model, prompts, responses, chunk_size=chunk)
        lp.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((lp.detach(), mask, grads))
    with torch.no_grad():
        full = model(torch.tensor([prompts[0] + responses[0]])).logits[0].log_softmax(-1)
    direct = full[3:9].gather(-1, torch.tensor(responses[0])[:, None])[:, 0]
    torch.testing.assert_close(results[0][0][0], direct, atol=1e-5, rtol=0)
    for lp, mask, grads in results[1:]:
        torch.testing.assert_close(lp, results[0][0], atol=1e-6, rtol=0)
        assert torch.equal(mask, results[0][1])
        for g, g0 in zip(grads, results[0][2], strict=True):
            torch.testing.assert_close(g, g0, atol=1e-6, rtol=1e-5)
    assert results[0][1].tolist() == [[True] * 6, [True, True, False, False, False, False]]
    assert results[0][0][1, 2:].abs().sum() == 0


def test_no_chat_template_is_a_clear_error():
    tok = tiny_tokenizer(chat_template=None)
    with pytest.raises(ChatTemplateError, match="chat_template='chatml'"):
        encode_chat(tok, PROMPTS[0])
    policy = HFPolicy(tiny_model(), tok, chat_template="chatml")
    ids = policy.encode(PROMPTS[0])
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


def test_each_prompt_is_prefilled_once_with_the_same_samples(monkeypatch):
    from algorithms.sampling import hf as policy_module

    pol = HFPolicy(tiny_model(seed=2), tiny_tokenizer(), max_batch_size=5)
    plain_pol = HFPolicy(pol.model, pol.tokenizer, max_batch_size=5)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=3)
    prefill_rows = []
    forward = pol.model.forward

    @functools.wraps(forward)  # keeps the signature the policy inspects
    def counting(*args, **kwargs):
        if kwargs.get("logits_to_keep") == 1:  # the prefill call
            prefill_rows.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(pol.model, "forward", counting)
    shared = pol.sample(PROMPTS, 4, params)  # 8 rows in chunks of 5 + 3
    assert prefill_rows == [2, 1]  # distinct prompts per chunk, not rows
    monkeypatch.setattr(policy_module, "select_rows", lambda cache, index: None)
    prefill_rows.clear()
    plain = plain_pol.sample(PROMPTS, 4, params)
    # the first chunk finds the cache not copyable and prefills plainly; later chunks no
    # longer try
    assert prefill_rows == [2, 5, 3]
    flat = [
        (a, b) for ga, gb in zip(shared, plain, strict=True) for a, b in zip(ga, gb, strict=True)
    ]
    for a, b in flat:
        assert a.token_ids == b.token_ids
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


# --- the sampling loop as it was before the speed work (issue 15), kept as the reference ----
# The optimized loop must sample exactly the same token ids (same seed, same random stream)
# and return the same log-probs (within 1e-6); these functions are a frozen copy of it.


def _reference_top_p_filter(logits, top_p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _reference_select_rows(cache, index):
    from transformers.cache_utils import DynamicCache

    from algorithms.scoring import plain_layers

    layers = plain_layers(cache)
    if layers is None:
        return None
    out = DynamicCache()
    for n, layer in enumerate(layers):
        out.update(layer.keys[index], layer.values[index], n)
    return out


def _reference_prefill(pol, rows, ids, attn, positions, copy_rows):
    from algorithms.scoring import output_cache

    distinct: dict[tuple[int, ...], int] = {}
    owner = [distinct.setdefault(tuple(r), len(distinct)) for r in rows]
    if len(distinct) < len(rows) and copy_rows:
        first = torch.tensor([owner.index(j) for j in range(len(distinct))])
        out = pol.model(
            input_ids=ids[first], attention_mask=attn[first], position_ids=positions[first],
            use_cache=True, logits_to_keep=1,
        )  # fmt: skip
        index = torch.tensor(owner)
        cache = _reference_select_rows(output_cache(out), index)
        if cache is not None:
            return out.logits[index, -1], cache
    out = pol.model(
        input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True,
        logits_to_keep=1,
    )  # fmt: skip
    return out.logits[:, -1], output_cache(out)


@torch.no_grad()
def _reference_generate(pol, rows, params, generator, copy_rows=True):
    """``(token ids, log-probs)`` per row, cut after the first EOS, as the old loop gave."""
    from algorithms.scoring import cache_kwarg, left_padded, left_positions, output_cache

    model = pol.model
    pad = int(pol.tokenizer.pad_token_id)
    ids, attn = left_padded(rows, max(len(r) for r in rows), pad, torch.device("cpu"))
    positions = left_positions(attn)
    eos = torch.tensor(pol.eos_token_ids)
    cache_kw = cache_kwarg(model)
    finished = torch.zeros(len(rows), dtype=torch.bool)
    tokens, logps = [], []
    last, cache = _reference_prefill(pol, rows, ids, attn, positions, copy_rows)
    for _ in range(params.max_new_tokens):
        logits = last.float()
        scaled = logits / params.temperature if params.temperature > 0 else logits
        logp = scaled.log_softmax(-1)
        if params.temperature == 0:
            token = logits.argmax(-1)
        else:
            pick = _reference_top_p_filter(scaled, params.top_p) if params.top_p < 1 else scaled
            token = torch.multinomial(pick.softmax(-1), 1, generator=generator)[:, 0]
        token = torch.where(finished, torch.full_like(token, pad), token)
        tokens.append(token)
        logps.append(logp.gather(-1, token[:, None])[:, 0])
        finished |= torch.isin(token, eos)
        if bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=token[:, None], attention_mask=attn, position_ids=positions,
            use_cache=True, **{cache_kw: cache},
        )  # fmt: skip
        last, cache = out.logits[:, -1], output_cache(out)
    tok = torch.stack(tokens, 1).tolist()
    lp = torch.stack(logps, 1).tolist()
    result = []
    for i in range(len(rows)):
        stop = [t for t, token_id in enumerate(tok[i]) if token_id in pol.eos_token_ids]
        length = stop[0] + 1 if stop else len(tok[i])
        result.append((tok[i][:length], lp[i][:length]))
    return result


def _reference_sample_ids(pol, prompt_ids, n, params, copy_rows=True):
    rows = [list(p) for p in prompt_ids for _ in range(n)]
    generator = None if params.seed is None else torch.Generator().manual_seed(params.seed)
    flat = []
    for start in range(0, len(rows), pol.max_batch_size):
        chunk = rows[start : start + pol.max_batch_size]
        flat.extend(_reference_generate(pol, chunk, params, generator, copy_rows))
    return flat


@pytest.fixture(scope="module")
def eos_prone_policy():
    """A tiny policy whose EOS is likely enough that rows stop at different steps."""
    model = tiny_model(seed=5)
    tok = tiny_tokenizer()
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] *= 4
    return HFPolicy(model, tok, max_batch_size=6)


SAME_SAMPLES_PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a longer prompt"}],
    [{"role": "user", "content": "a third, somewhat longer question?"}],
]


@pytest.mark.parametrize(
    "temperature,top_p,seed",
    [
        (1.0, 1.0, 0),
        (1.3, 0.9, 2),
        (0.0, 1.0, None),
        pytest.param(1.0, 1.0, 7, marks=pytest.mark.slow),
        pytest.param(0.7, 1.0, 1, marks=pytest.mark.slow),
        pytest.param(1.0, 0.5, 3, marks=pytest.mark.slow),
    ],
)
def test_sampling_equals_the_reference_loop(eos_prone_policy, temperature, top_p, seed):
    pol = eos_prone_policy
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=40, seed=seed)
    prompt_ids = [pol.encode(p) for p in SAME_SAMPLES_PROMPTS]
    expected = _reference_sample_ids(pol, prompt_ids, 4, params)  # 12 rows: chunks of 6
    got = [s for g in pol.sample_ids(prompt_ids, 4, params) for s in g]
    assert [s.token_ids for s in got] == [t for t, _ in expected]
    for s, (_, lp) in zip(got, expected, strict=True):
        torch.testing.assert_close(
            torch.tensor(s.logprobs, dtype=torch.float64),
            torch.tensor(lp, dtype=torch.float64),
            atol=1e-6,
            rtol=0,
        )
    # the comparison covers rows that stopped early and rows cut at the length limit
    reasons = {s.finish_reason for s in got}
    assert reasons == {"stop", "length"} or temperature == 0


def test_sampling_continues_the_random_stream_like_the_reference(eos_prone_policy):
    """Samples drawn with the global RNG (no seed) consume it exactly as the old loop did."""
    pol = eos_prone_policy
    params = SamplingParams(max_new_tokens=20)
    prompt_ids = [pol.encode(p) for p in SAME_SAMPLES_PROMPTS[:2]]
    torch.manual_seed(123)
    expected = _reference_sample_ids(pol, prompt_ids, 3, params)
    after_reference = torch.rand(4)
    torch.manual_seed(123)
    got = [s for g in pol.sample_ids(prompt_ids, 3, params) for s in g]
    assert [s.token_ids for s in got] == [t for t, _ in expected]
    assert torch.equal(torch.rand(4), after_reference)


def test_plain_prefill_samples_equal_the_reference(monkeypatch, eos_prone_policy):
    """Where the cache cannot be copied row-wise, the batched prefill gives the same samples."""
    from algorithms.sampling import hf as policy_module

    pol = HFPolicy(eos_prone_policy.model, eos_prone_policy.tokenizer, max_batch_size=6)
    monkeypatch.setattr(policy_module, "select_rows", lambda cache, index: None)
    params = SamplingParams(max_new_tokens=30, seed=4)
    prompt_ids = [pol.encode(p) for p in SAME_SAMPLES_PROMPTS]
    expected = _reference_sample_ids(pol, prompt_ids, 2, params, copy_rows=False)
    got = [s for g in pol.sample_ids(prompt_ids, 2, params) for s in g]
    assert [s.token_ids for s in got] == [t for t, _ in expected]
    for s, (_, lp) in zip(got, expected, strict=True):
        assert s.logprobs == pytest.approx(lp, abs=1e-6)


def test_bf16_generation_is_opt_in_and_close_to_fp32(eos_prone_policy):
    pol = HFPolicy(eos_prone_policy.model, eos_prone_policy.tokenizer, max_batch_size=6)
    assert pol.generation_dtype is None
    with pytest.raises(ConfigError, match="torch.float16 is not supported on cpu"):
        pol.generation_dtype = torch.float16
    pol.generation_dtype = torch.bfloat16
    params = SamplingParams(max_new_tokens=16, seed=0)
    samples = [s for g in pol.sample(SAME_SAMPLES_PROMPTS, 2, params) for s in g]
    assert all(len(s.token_ids) == len(s.logprobs) > 0 for s in samples)
    scored = pol.score([s.prompt_token_ids for s in samples], [s.token_ids for s in samples])
    for s, lp in zip(samples, scored, strict=True):
        # the bf16 model's log-probs: near the fp32 model's, not equal
        torch.testing.assert_close(torch.tensor(s.logprobs), torch.tensor(lp), atol=0.1, rtol=0)
    assert pol.model.dtype == torch.float32  # the weights themselves stay fp32
