"""The training loop: exact gradient accumulation, run-folder outputs, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from algorithms import grpo, sdpo
from algorithms.config import config_from_dict
from algorithms.engine.trainer import Trainer, TrainingError, train
from algorithms.grpo.config import GRPOTrainConfig
from algorithms.sdpo.config import SDPOTrainConfig
from algorithms.sdpo.objective import SDPORow, has_teacher
from algorithms.testing import TargetCharEnv, recording_build, tiny_model, tiny_tokenizer
from rlrf import Outcome, RLRFEnv
from rlrf.errors import ConfigError

SMALL = dict(
    steps=1,
    questions_per_step=2,
    rollouts_per_question=4,
    max_new_tokens=10,
    eval_every=0,
    checkpoint_every=0,
    progress=False,
    lr=1e-3,
    max_grad_norm=0.0,
)


def _step(config, seed=0, grads=None):
    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(seed), tokenizer=tiny_tokenizer()
    )
    trainer._trajectory_writer = None
    if grads is not None:
        # capture the accumulated gradients the optimizer is about to apply
        def hook(optimizer, args, kwargs):
            grads.append([p.grad.detach().clone() for p in trainer.unwrapped.parameters()])

        trainer.optimizer.optimizer.register_step_pre_hook(hook)
    metrics = trainer.train_step()
    return trainer, metrics


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: GRPOTrainConfig(**kw),
        lambda **kw: GRPOTrainConfig(grpo=grpo.GRPOConfig(aggregation="seq_mean_token_mean"), **kw),
        lambda **kw: GRPOTrainConfig(
            grpo=grpo.GRPOConfig(aggregation="seq_mean_token_sum_norm"), **kw
        ),
        lambda **kw: SDPOTrainConfig(**kw),
        lambda **kw: SDPOTrainConfig(sdpo=sdpo.SDPOConfig(loss_level="token"), **kw),
        lambda **kw: SDPOTrainConfig(sdpo=sdpo.SDPOConfig(grpo_mix=0.5, alpha=0.5), **kw),
    ],
    ids=[
        "grpo-token_mean",
        "grpo-seq_mean",
        "grpo-sum_norm",
        "sdpo-logit",
        "sdpo-token",
        "sdpo-mix",
    ],
)
def test_gradient_accumulation_is_exact(make, tmp_path):
    results = []
    for micro, chunk in ((8, 1000), (1, 4)):
        cfg = make(
            output_dir=str(tmp_path / f"m{micro}"),
            micro_batch_size=micro,
            logit_chunk_size=chunk,
            **SMALL,
        )
        grads = []
        _, metrics = _step(cfg, grads=grads)
        results.append((metrics, grads[0]))
    base_metrics, base_params = results[0]
    assert base_metrics["rollout/trained_rows"] > 0
    assert base_metrics["train/grad_norm"] > 0
    for metrics, params in results[1:]:
        assert metrics["rollout/reward_mean"] == base_metrics["rollout/reward_mean"]
        assert math.isclose(
            metrics["train/grad_norm"], base_metrics["train/grad_norm"], rel_tol=1e-4
        )
        assert math.isclose(
            metrics["train/loss"], base_metrics["train/loss"], rel_tol=1e-4, abs_tol=1e-7
        )
        for g, g0 in zip(params, base_params, strict=True):
            scale = float(g0.abs().max()) + 1e-12
            torch.testing.assert_close(g, g0, atol=1e-4 * scale, rtol=1e-4)


def test_run_folder_outputs(tmp_path):
    out = tmp_path / "run"
    result = train(
        TargetCharEnv(),
        tiny_model(),
        None,
        tokenizer=tiny_tokenizer(),
        algorithm="sdpo",
        **{**SMALL, "steps": 2, "eval_every": 2, "eval_tasks": 2, "eval_k": 2},
        output_dir=str(out),
    )
    assert result.steps == 2 and result.generations == 16
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2]
    keys = set(lines[-1])
    for key in (
        "train/divergence",
        "train/grad_norm",
        "rollout/teacher_signal_frac",
        "rollout/missing_rewards",
        "timing/generation",
        "timing/teacher",
        "timing/update",
        "eval/avg@2",
        "eval/response_tokens_mean",
    ):
        assert key in keys, key
    assert all(
        k == "step" or k.split("/")[0] in {"train", "rollout", "eval", "timing"} for k in keys
    )
    import rlrf

    groups = list(rlrf.read_trajectories(out / "trajectories.jsonl"))
    assert len(groups) == 4
    ctx = groups[0].trajectories[0].info["teacher_context"]
    assert "Feedback from your unsuccessful earlier attempt" in ctx[-1]["content"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["algorithm"] == "sdpo" and config["sdpo"]["top_k"] == 20
    assert (result.final_model_dir / "config.json").exists()
    assert not (out / "checkpoints").exists()  # checkpoint_every: 0 keeps no resume state


class Silent(RLRFEnv):
    """Pass/fail without any feedback: SDPO must fall back on successful siblings."""

    def task_ids(self, split="train"):
        return ["0", "1"]

    def prompt(self, task_id):
        return [{"role": "user", "content": "go"}]

    def evaluate(self, task_id, response, history=()):
        return Outcome(reward=float(len(response) % 2 == 0))


def test_sdpo_without_feedback_counts_rollouts_without_teacher(tmp_path):
    cfg = SDPOTrainConfig(output_dir=str(tmp_path), **SMALL)
    trainer = Trainer(cfg, env=Silent(), model=tiny_model(), tokenizer=tiny_tokenizer())
    trainer._trajectory_writer = None
    metrics = trainer.train_step()
    n = metrics["rollout/no_teacher_signal"]
    frac = metrics["rollout/teacher_signal_frac"]
    assert math.isclose(frac * 8 + n, 8)
    assert metrics["rollout/trained_rows"] == round(frac * 8)
    # a rollout has a teacher exactly when ANOTHER rollout of its group succeeded
    expected = sum(
        sum(t.success for t in g.trajectories) - t.success > 0
        for g in trainer.last_groups
        for t in g.trajectories
    )
    assert expected > 0, "pick a seed where some group has a success"
    assert metrics["rollout/teacher_signal_frac"] * 8 == pytest.approx(expected)
    assert all(
        (t.info["teacher_context"] is not None)
        == (sum(x.success for x in g.trajectories) > t.success)
        for g in trainer.last_groups
        for t in g.trajectories
    )


class NaNBackend:
    def __init__(self, policy):
        self.policy = policy

    def sample(self, prompts, n, params):
        groups = self.policy.sample(prompts, n, params)
        for g in groups:
            for s in g:
                s.logprobs = [float("nan")] * len(s.logprobs)
        return groups

    def encode(self, messages):
        return self.policy.encode(messages)


def test_nan_loss_stops_with_step_and_batch(tmp_path):
    cfg = GRPOTrainConfig(output_dir=str(tmp_path), **SMALL)
    trainer = Trainer(
        cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(), tokenizer=tiny_tokenizer()
    )
    trainer._trajectory_writer = None
    trainer.policy = NaNBackend(trainer.policy)
    before = [p.detach().clone() for p in trainer.unwrapped.parameters()]
    with pytest.raises(TrainingError, match=r"non-finite loss .* step 1, epoch 0, mini-batch 0"):
        trainer.train_step()
    for p, p0 in zip(trainer.unwrapped.parameters(), before, strict=True):
        assert torch.equal(p, p0)


def test_unknown_field_names_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'rollouts_per_question'"):
        config_from_dict(SDPOTrainConfig, {"rollouts_per_questions": 4})
    with pytest.raises(ConfigError, match="did you mean 'top_k'"):
        train(TargetCharEnv(), tiny_model(), None, tokenizer=tiny_tokenizer(), topk=3)
    with pytest.raises(ConfigError, match="did you mean 'clip_high'"):
        config_from_dict(GRPOTrainConfig, {"grpo": {"clip_hi": 0.3}})


@pytest.mark.parametrize("loss_level", ["logit", "token"])
def test_grpo_mix_with_teacher_rows_shorter_than_the_batch(loss_level):
    """Rows without a teacher are trained too (GRPO part); the teacher rows' responses are
    shorter than the batch's longest, which once broke the chunked teacher gather."""
    from algorithms.engine.batching import Row, collate

    config = SDPOTrainConfig(
        sdpo=sdpo.SDPOConfig(grpo_mix=0.9, loss_level=loss_level),
        **{**SMALL, "logit_chunk_size": 4},
    )
    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    tok = trainer.tokenizer
    prompt = tok.encode("hello")
    long_row = Row(prompt, tok.encode("abcdefghijkl"), [-1.0] * 12, advantage=1.0)
    short_row = SDPORow(
        prompt,
        tok.encode("abcde"),
        [-1.0] * 5,
        advantage=-1.0,
        teacher_prompt_ids=tok.encode("hello, the answer is a"),
    )
    rows = [long_row, short_row]
    loss, stats = trainer._loss(collate(rows), trainer._normalizers(rows), on_policy=True)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.unwrapped.parameters()
    )


@pytest.mark.parametrize("loss_level", ["logit", "token"])
def test_grpo_mix_micro_batch_without_any_teacher_row(loss_level):
    from algorithms.engine.batching import Row, collate

    config = SDPOTrainConfig(sdpo=sdpo.SDPOConfig(grpo_mix=0.9, loss_level=loss_level), **SMALL)
    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    tok = trainer.tokenizer
    rows = [
        Row(tok.encode("hi"), tok.encode("abc"), [-1.0] * 3, advantage=0.5),
        Row(tok.encode("hi"), tok.encode("ab"), [-1.0] * 2, advantage=-0.5),
    ]
    loss, _ = trainer._loss(collate(rows), trainer._normalizers(rows), on_policy=True)
    assert torch.isfinite(loss) and loss.requires_grad


def _count_prefix_caches(monkeypatch) -> list[bool]:
    """Record, per shared-prefix pass, whether a reusable cache was built."""
    from algorithms import scoring as policy

    built: list[bool] = []
    monkeypatch.setattr(policy._PrefixCache, "build", recording_build(built=built))
    return built


def _full_logits(model, prompts, responses):
    """[B, L, V] logits at the positions predicting each response token: a plain forward."""
    width = max(len(r) for r in responses)
    out = []
    for p, r in zip(prompts, responses, strict=True):
        logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1]
        out.append(torch.nn.functional.pad(logits, (0, 0, 0, width - len(r))))
    return torch.stack(out)


_QUESTION = "Question: which letter comes first in the alphabet? "


def _trainer_loss_and_grads(config, seed, rows_spec, monkeypatch):
    """The trainer's loss on fixed rows of one group (long shared prompt) and its gradients.

    The teacher is perturbed so that it differs from the student. Returns the trainer, the
    batch, the normalizers, the loss and the gradients (the model's are zeroed afterwards).
    """
    from algorithms.engine.batching import collate

    trainer = Trainer(
        config, env=TargetCharEnv(targets="ab"), model=tiny_model(seed), tokenizer=tiny_tokenizer()
    )
    with torch.no_grad():
        for p in trainer.objective.teacher.module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tok = trainer.tokenizer

    def enc(text):
        return None if text is None else tok.encode(_QUESTION + text)

    rows = [
        SDPORow(enc(prompt), tok.encode(resp), [old] * len(resp), 0.0,
                teacher_prompt_ids=enc(teacher))
        for prompt, resp, old, teacher in rows_spec
    ]
    batch = collate(rows)
    norm = trainer._normalizers(rows)
    built = _count_prefix_caches(monkeypatch)
    loss, _ = trainer._loss(batch, norm, on_policy=False)
    assert built == [True, True]  # the student's and the teacher's shared prefix, run once
    loss.backward()
    got = [p.grad.clone() for p in trainer.unwrapped.parameters()]
    trainer.unwrapped.zero_grad()
    return trainer, batch, norm, loss, got


def _assert_matches_reference(trainer, loss, got, ref):
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, p in zip(got, trainer.unwrapped.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_trainer_sdpo_loss_equals_the_unchunked_reference(alpha, monkeypatch):
    """The trainer's chunked, hidden-state, distilled-positions-only SDPO loss (and its
    gradient) equals sdpo.distillation_loss on full logits from plain forward passes."""
    config = SDPOTrainConfig(
        sdpo=sdpo.SDPOConfig(top_k=8, alpha=alpha, teacher_tau=0.5),
        **{**SMALL, "logit_chunk_size": 3},
    )
    rows_spec = [
        ("1", "abcdefg", -2.0, "sol a"),
        ("1", "ab", -1.5, None),  # no teacher
        ("2?", "xyzw", -3.0, "feedbk"),
    ]
    trainer, batch, norm, loss, got = _trainer_loss_and_grads(config, 0, rows_spec, monkeypatch)
    rows = batch.rows
    student = _full_logits(trainer.unwrapped, [r.prompt_ids for r in rows], batch.responses)
    with torch.no_grad():
        teacher_prompts = [r.teacher_prompt_ids or r.prompt_ids for r in rows]
        teacher = _full_logits(trainer.objective.teacher.module, teacher_prompts, batch.responses)
    mask = batch.mask & has_teacher(batch)[:, None]
    ref, _ = sdpo.distillation_loss(
        student, teacher, mask, batch.old_logprobs, batch.response_ids,
        top_k=8, alpha=alpha, is_clip=config.sdpo.is_clip, normalizer=norm["sdpo"],
    )  # fmt: skip
    _assert_matches_reference(trainer, loss, got, ref)


def test_trainer_token_level_sdpo_loss_equals_the_unchunked_reference(monkeypatch):
    config = SDPOTrainConfig(
        sdpo=sdpo.SDPOConfig(loss_level="token", teacher_tau=0.5),
        **{**SMALL, "logit_chunk_size": 3},
    )
    rows_spec = [("1", "abcdefg", -2.0, "sol a"), ("2?", "xyzw", -3.0, "feedbk")]
    trainer, batch, norm, loss, got = _trainer_loss_and_grads(config, 1, rows_spec, monkeypatch)

    def sampled(logits):
        return logits.log_softmax(-1).gather(-1, batch.response_ids[..., None])[..., 0]

    rows = batch.rows
    lp = sampled(_full_logits(trainer.unwrapped, [r.prompt_ids for r in rows], batch.responses))
    with torch.no_grad():
        t_prompts = [r.teacher_prompt_ids for r in rows]
        t_lp = sampled(_full_logits(trainer.objective.teacher.module, t_prompts, batch.responses))
    adv = torch.where(batch.mask, sdpo.token_level_advantages(t_lp, lp), 0.0)
    ref, _ = grpo.policy_loss(lp, batch.old_logprobs, adv, batch.mask, normalizer=norm["pg"])
    _assert_matches_reference(trainer, loss, got, ref)


def test_sharded_launch_is_refused_with_the_supported_command(monkeypatch):
    # FSDP can't be launched on this CPU machine; what the trainer reads is stubbed instead
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    monkeypatch.setattr(
        Accelerator, "distributed_type", property(lambda self: DistributedType.FSDP)
    )
    with pytest.raises(ConfigError, match=r"FSDP.*--multi_gpu"):
        Trainer(
            GRPOTrainConfig(**SMALL), env=TargetCharEnv(), model=tiny_model(0),
            tokenizer=tiny_tokenizer(),
        )  # fmt: skip


@pytest.mark.parametrize("config_cls", [GRPOTrainConfig, SDPOTrainConfig])
def test_gradient_checkpointing_gives_the_same_gradients(config_cls, tmp_path):
    results = []
    for ckpt in (False, True):
        grads = []
        cfg = config_cls(output_dir=str(tmp_path / str(ckpt)), gradient_checkpointing=ckpt, **SMALL)
        trainer, metrics = _step(cfg, grads=grads)
        assert trainer.unwrapped.is_activation_checkpointing == ckpt
        results.append((metrics, grads[0]))
    (m0, g0), (m1, g1) = results
    assert m0["train/grad_norm"] > 0
    assert m1["train/loss"] == pytest.approx(m0["train/loss"], rel=1e-4, abs=1e-7)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * (float(b.abs().max()) + 1e-12))


def test_lora_trains_only_the_adapters(tmp_path):
    cfg = SDPOTrainConfig(output_dir=str(tmp_path), lora_r=4, **SMALL)
    trainer = Trainer(
        cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    before = {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters()}
    trainer._trajectory_writer = None
    metrics = trainer.train_step()
    assert metrics["train/grad_norm"] > 0
    after = dict(trainer.unwrapped.named_parameters())
    moved = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    assert moved and all("lora_" in n for n in moved)
    assert all(after[n].requires_grad == ("lora_" in n) for n in after)
    # the EMA teacher follows the adapters only
    teacher = dict(trainer.objective.teacher.module.named_parameters())
    assert any(not torch.equal(teacher[n], before[n]) for n in moved)
    assert all(torch.equal(teacher[n], before[n]) for n in teacher if "lora_" not in n)


# ---- learning-signal alarms (issue 27 item 3) ----------------------------------------------


def test_update_ratio_is_the_relative_size_of_the_step(tmp_path):
    cfg = GRPOTrainConfig(output_dir=str(tmp_path), **{**SMALL, "weight_decay": 0.1})
    trainer = Trainer(
        cfg, env=TargetCharEnv(targets="ab"), model=tiny_model(0), tokenizer=tiny_tokenizer()
    )
    trainer._trajectory_writer = None
    before = [p.detach().clone() for p in trainer.unwrapped.parameters()]
    metrics = trainer.train_step()
    after = [p.detach() for p in trainer.unwrapped.parameters()]
    pairs = zip(after, before, strict=True)
    delta = math.sqrt(sum(float((a - b).double().square().sum()) for a, b in pairs))
    norm = math.sqrt(sum(float(b.double().square().sum()) for b in before))
    assert delta > 0
    assert metrics["train/update_ratio"] == pytest.approx(delta / norm, rel=1e-3)
    assert 0.0 <= metrics["rollout/signal_groups_frac"] <= 1.0


class NeverRight(RLRFEnv):
    """Every response gets reward 0: no group has differing rewards."""

    def task_ids(self, split="train"):
        return ["a", "b", "c"]

    def prompt(self, task_id):
        return [{"role": "user", "content": f"Say {task_id}."}]

    def evaluate(self, task_id, response, history=()):
        return Outcome(0.0)


class AlwaysBroken(NeverRight):
    def evaluate(self, task_id, response, history=()):
        raise ConnectionError("grader unreachable")


def test_a_run_without_reward_signal_warns_and_the_report_lists_it(tmp_path):
    from algorithms.engine.monitors import LearningSignalWarning
    from algorithms.report import write_report

    cfg = GRPOTrainConfig(output_dir=str(tmp_path), **{**SMALL, "steps": 3})
    trainer = Trainer(cfg, env=NeverRight(), model=tiny_model(0), tokenizer=tiny_tokenizer())
    with pytest.warns(LearningSignalWarning) as caught:
        trainer.train()
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("step 1: no reward signal: no group had differing") for m in messages)
    assert any(m.startswith("step 1: zero gradient") for m in messages)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "rollout/trained_rows" in r]  # the steps
    assert [r["rollout/signal_groups_frac"] for r in records] == [0.0, 0.0, 0.0]
    assert [r["train/grad_norm"] for r in records] == [0.0, 0.0, 0.0]
    report = write_report([tmp_path]).read_text()
    assert "no reward signal: no group had differing rewards" in report
    assert "zero gradient" in report and "for 3 steps in a row" in report


def test_a_run_whose_rollouts_all_failed_exits_non_zero_without_final(tmp_path):
    cfg = GRPOTrainConfig(output_dir=str(tmp_path), **{**SMALL, "steps": 5})
    trainer = Trainer(cfg, env=AlwaysBroken(), model=tiny_model(0), tokenizer=tiny_tokenizer())
    with pytest.warns(Warning), pytest.raises(TrainingError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith("no rollout of steps 1-3 got a reward: every one ended in an env")
    assert "grader unreachable" in message and "no final/ was written" in message
    assert not (tmp_path / "final").exists()


class SandboxDownOnTest(TargetCharEnv):
    """Grades training tasks; on held-out tasks its sandbox fails (reward missing)."""

    def evaluate(self, task_id, response, history=()):
        if task_id in self.task_ids("test"):
            return Outcome(None, info={"sandbox_error": "sandbox worker died"})
        return super().evaluate(task_id, response, history)


def test_training_time_eval_counts_sandbox_errors_apart(tmp_path):
    env = SandboxDownOnTest(targets="ab", n_test=3)
    cfg = GRPOTrainConfig(output_dir=str(tmp_path), **{**SMALL, "eval_tasks": 3, "eval_k": 2})
    trainer = Trainer(cfg, env=env, model=tiny_model(0), tokenizer=tiny_tokenizer())
    metrics = trainer.evaluate()
    assert metrics["eval/sandbox_errors"] == 6 == metrics["eval/missing_rewards"]
    assert metrics["eval/env_errors"] == 0
