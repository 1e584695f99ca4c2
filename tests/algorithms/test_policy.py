"""The HF policy: sampling log-probs agree with scoring; chunked scoring is exact."""

from __future__ import annotations

import functools

import pytest
import torch

from algorithms.policy import (
    ChatTemplateError,
    HFPolicy,
    SamplingBackend,
    SamplingParams,
    encode_chat,
    token_logprobs,
)
from algorithms.testing import tiny_model, tiny_tokenizer

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
    from algorithms import policy as policy_module

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
    monkeypatch.setattr(policy_module, "_select_rows", lambda cache, index: None)
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
