"""shared_prefix_hidden_states equals response_hidden_states, with and without sharing."""

import random

import pytest
import torch

from algorithms import scoring as policy
from algorithms.scoring import response_hidden_states, shared_prefix_hidden_states
from algorithms.testing import recording_build, tiny_model

PAD = 2


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, layers=2)


def _tokens(rng, n, vocab):
    return [rng.randrange(3, vocab) for _ in range(n)]


def _group_rows(rng, vocab, prefix_len, n_rows, suffix=(1, 12), response=(0, 10)):
    base = _tokens(rng, prefix_len, vocab)
    prompts = [base + _tokens(rng, rng.randint(*suffix), vocab) for _ in range(n_rows)]
    responses = [_tokens(rng, rng.randint(*response), vocab) for _ in range(n_rows)]
    return prompts, responses


def _assert_same(model, prompts, responses, groups, **kwargs):
    with torch.no_grad():
        ref, ref_mask = response_hidden_states(model, prompts, responses, pad=PAD)
        hidden, mask = shared_prefix_hidden_states(
            model, prompts, responses, groups=groups, pad=PAD, **kwargs
        )
    assert hidden.shape == ref.shape
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(hidden[mask], ref[ref_mask], atol=1e-5, rtol=1e-5)
    assert not hidden[~mask].any()  # zero outside the mask
    return hidden


def _count_prefix_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(policy._PrefixCache, "build", recording_build(lengths=calls))
    return calls


def test_groups_sharing_a_long_prefix(model, monkeypatch):
    rng = random.Random(0)
    prompts, responses = _group_rows(rng, model.config.vocab_size, 40, 5)
    calls = _count_prefix_runs(monkeypatch)
    _assert_same(model, prompts, responses, [7] * 5)
    assert len(calls) == 1 and calls[0][0] >= 40  # one prefix, run once


def test_several_groups_with_different_prefix_lengths(model, monkeypatch):
    rng = random.Random(1)
    prompts, responses, groups = [], [], []
    for g, prefix_len in enumerate([20, 65, 33, 16]):
        p, r = _group_rows(rng, model.config.vocab_size, prefix_len, 3 + g % 2)
        prompts += p
        responses += r
        groups += [f"group-{g}"] * len(p)
    order = list(range(len(prompts)))
    rng.shuffle(order)  # group members need not be adjacent
    prompts = [prompts[i] for i in order]
    responses = [responses[i] for i in order]
    groups = [groups[i] for i in order]
    calls = _count_prefix_runs(monkeypatch)
    _assert_same(model, prompts, responses, groups)
    assert len(calls) == 1 and len(calls[0]) == 4


@pytest.mark.parametrize("max_batch_size", [1, 2, 5])
def test_max_batch_size_smaller_than_rows(model, max_batch_size):
    rng = random.Random(2)
    vocab = model.config.vocab_size
    prompts, responses, groups = [], [], []
    for g, prefix_len in enumerate([30, 50, 18]):
        p, r = _group_rows(rng, vocab, prefix_len, 4)
        prompts += p
        responses += r
        groups += [g] * 4
    prompts.append(_tokens(rng, 25, vocab))  # an unshared row mixed in
    responses.append(_tokens(rng, 6, vocab))
    groups.append(99)
    _assert_same(model, prompts, responses, groups, max_batch_size=max_batch_size)


def test_rows_without_a_shared_prefix(model, monkeypatch):
    rng = random.Random(3)
    vocab = model.config.vocab_size
    prompts = [[5, *_tokens(rng, 30, vocab)], [6, *_tokens(rng, 30, vocab)]]
    prompts.append([*prompts[0][:10], *_tokens(rng, 20, vocab)])  # shares 10 < min_shared
    responses = [_tokens(rng, n, vocab) for n in (4, 9, 7)]
    calls = _count_prefix_runs(monkeypatch)
    _assert_same(model, prompts, responses, [0, 0, 0])
    _assert_same(model, prompts[:2], responses[:2], [0, 1])
    assert calls == []  # nothing worth sharing: the plain path


def test_a_group_of_one_row(model, monkeypatch):
    rng = random.Random(4)
    vocab = model.config.vocab_size
    prompts, responses = _group_rows(rng, vocab, 40, 3)
    prompts.append(_tokens(rng, 45, vocab))
    responses.append(_tokens(rng, 8, vocab))
    calls = _count_prefix_runs(monkeypatch)
    _assert_same(model, prompts, responses, [0, 0, 0, 1])
    assert len(calls) == 1 and len(calls[0]) == 1
    _assert_same(model, prompts[3:], responses[3:], [1])


def test_identical_prompts_keep_one_token_out_of_the_prefix(model, monkeypatch):
    rng = random.Random(5)
    vocab = model.config.vocab_size
    prompt = _tokens(rng, 30, vocab)
    prompts = [prompt, list(prompt), [*prompt, *_tokens(rng, 5, vocab)]]
    responses = [_tokens(rng, n, vocab) for n in (3, 6, 2)]
    calls = _count_prefix_runs(monkeypatch)
    _assert_same(model, prompts, responses, ["q"] * 3)
    assert calls == [[29]]  # the 30-token prompt shares 29 tokens: each row keeps one


@pytest.mark.parametrize("lengths", [(0, 1, 5), (1, 1, 1), (0, 0, 0)])
def test_empty_and_single_token_responses(model, lengths):
    rng = random.Random(6)
    prompts, _ = _group_rows(rng, model.config.vocab_size, 24, 3)
    responses = [_tokens(rng, n, model.config.vocab_size) for n in lengths]
    hidden = _assert_same(model, prompts, responses, [0, 0, 0])
    assert hidden.shape[1] == max(1, *lengths)


def test_peft_teacher(model):
    import peft

    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    wrapped = peft.get_peft_model(tiny_model(seed=1), lora).eval()
    for name, param in wrapped.named_parameters():
        if "lora_B" in name:  # non-zero adapters, so they change the result
            torch.nn.init.normal_(param, std=0.5)
    rng = random.Random(7)
    prompts, responses = _group_rows(rng, model.config.vocab_size, 40, 4)
    _assert_same(wrapped, prompts, responses, [0] * 4)


def test_unsupported_cache_falls_back(model, monkeypatch):
    monkeypatch.setattr(policy._PrefixCache, "build", classmethod(lambda cls, *a: None))
    rng = random.Random(8)
    prompts, responses = _group_rows(rng, model.config.vocab_size, 40, 4)
    _assert_same(model, prompts, responses, [0] * 4, max_batch_size=3)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="one entry per row"):
        shared_prefix_hidden_states(model, [[3, 4]], [[5]], groups=[0, 1])
    with pytest.raises(ValueError, match="non-empty prompt"):
        shared_prefix_hidden_states(model, [[]], [[5]], groups=[0])


def test_a_group_splits_where_rows_share_a_longer_prefix(model, monkeypatch):
    # The teacher-prompt shape: question, then one of two solutions, then per-row feedback.
    rng = random.Random(5)
    vocab = model.config.vocab_size
    question = _tokens(rng, 20, vocab)
    solutions = [_tokens(rng, 30, vocab), _tokens(rng, 30, vocab)]
    which = [0, 0, 0, 1, 0, 1, 0]
    prompts = [question + solutions[w] + _tokens(rng, rng.randint(1, 8), vocab) for w in which]
    responses = [_tokens(rng, rng.randint(1, 9), vocab) for _ in which]
    calls = _count_prefix_runs(monkeypatch)
    _assert_same(model, prompts, responses, ["g"] * len(which))
    # two clusters (5 rows + 2 rows) sharing question + solution beat one sharing the question
    assert len(calls) == 1 and sorted(calls[0]) == [50, 50]


def test_clusters_only_where_they_save_tokens():
    prompts = [[1] * 20 + [2, 9], [1] * 20 + [3, 9], [1] * 20 + [4, 9]]  # share 20, then differ
    saved, clusters = policy._best_clusters(prompts, [0, 1, 2], min_shared=16)
    assert saved == 40 and clusters == [([0, 1, 2], 20)]
    saved, clusters = policy._best_clusters(prompts, [0, 1, 2], min_shared=21)
    assert saved == 0 and clusters == []


@pytest.mark.parametrize(
    ("lengths", "overhead", "expected"),
    [
        ([5, 6, 7, 40, 41], 0, [1, 2, 3, 4, 5]),  # no cost per pass: every row alone
        ([5, 6, 7, 40, 41], 10, [3, 5]),  # short rows together, long rows together
        ([5, 6, 7, 40, 41], 10_000, [5]),  # a pass costs more than any padding
    ],
)
def test_length_buckets_minimise_padded_tokens(lengths, overhead, expected):
    assert policy._length_buckets(lengths, 8, overhead) == expected


def test_length_buckets_respect_max_rows():
    ends = policy._length_buckets([3] * 7, 3, 10_000)
    assert len(ends) == 3 and all(b - a <= 3 for a, b in zip([0, *ends], ends, strict=False))
