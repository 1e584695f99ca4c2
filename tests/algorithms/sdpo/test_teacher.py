"""The SDPO teacher weights on tiny random-weight Llama models (no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from algorithms.sdpo import distillation_loss
from algorithms.sdpo.teacher import Teacher
from rlrf.errors import ConfigError

V = 64


def tiny_llama(seed: int = 0, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg).to(dtype)


def fake_optimizer_step(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def ids(seed: int = 0, b: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, V, (b, length), generator=torch.Generator().manual_seed(seed))


def test_ema_update_is_exact_lerp_and_a_separate_copy():
    student = tiny_llama()
    teacher = Teacher(student, "ema", tau=0.1)
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert all(p.requires_grad for p in student.parameters())
    theta0 = params(student)

    fake_optimizer_step(student, seed=1)
    # the copy is independent of the student until update()
    for t, p0 in zip(teacher.module.parameters(), theta0, strict=True):
        assert torch.equal(t, p0)
    teacher.update(student)
    theta1 = params(student)
    expected = [0.9 * a + 0.1 * b for a, b in zip(theta0, theta1, strict=True)]
    for t, e in zip(teacher.module.parameters(), expected, strict=True):
        torch.testing.assert_close(t, e, rtol=1e-6, atol=1e-7)

    fake_optimizer_step(student, seed=2)
    teacher.update(student)
    theta2 = params(student)
    expected = [0.9 * e + 0.1 * b for e, b in zip(expected, theta2, strict=True)]
    for t, e in zip(teacher.module.parameters(), expected, strict=True):
        torch.testing.assert_close(t, e, rtol=1e-6, atol=1e-7)


def test_frozen_and_live_teachers():
    student = tiny_llama()
    frozen = Teacher(student, "frozen")
    live = Teacher(student, "live")
    theta0 = params(student)
    fake_optimizer_step(student, seed=3)
    frozen.update(student)
    live.update(student)
    for t, p0 in zip(frozen.module.parameters(), theta0, strict=True):
        assert torch.equal(t, p0)
    assert live.module is None and live.scoring_modules(student) == (student,)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(live.logits(student, x), student(input_ids=x).logits)


def test_trust_region_logits_are_lerp_of_initial_and_current():
    student = tiny_llama()
    initial = copy.deepcopy(student)
    teacher = Teacher(student, "trust_region", tau=0.3)
    fake_optimizer_step(student, seed=4)
    teacher.update(student)  # no-op: the frozen copy stays the initial model
    x = ids(1)
    with torch.no_grad():
        expected = 0.7 * initial(input_ids=x).logits + 0.3 * student(input_ids=x).logits
    torch.testing.assert_close(teacher.logits(student, x), expected, rtol=1e-5, atol=1e-6)
    assert teacher.scoring_roles() == ("frozen", "student")
    with pytest.raises(ValueError, match="combines 2"):
        teacher.combine_logits([expected])


@pytest.mark.parametrize("mode", ["ema", "trust_region", "frozen", "live"])
def test_no_gradient_reaches_the_teacher(mode):
    student = tiny_llama()
    teacher = Teacher(student, mode, tau=0.5)
    fake_optimizer_step(student, seed=5)
    teacher.update(student)
    teacher_prompt, response = ids(6, length=9), ids(7, length=4)
    student_prompt = ids(8, length=3)
    n = response.shape[1]

    def student_logits():
        full = torch.cat([student_prompt, response], 1)
        return student(input_ids=full).logits[:, -n - 1 : -1]

    t_logits = teacher.logits(student, torch.cat([teacher_prompt, response], 1))[:, -n - 1 : -1]
    assert not t_logits.requires_grad
    loss, _ = distillation_loss(student_logits(), t_logits, torch.ones(2, n), top_k=8)
    loss.backward()
    grads = [p.grad.clone() for p in student.parameters()]
    if teacher.module is not None:
        assert all(p.grad is None for p in teacher.module.parameters())
    # the student's gradient is the same as with the teacher's logits computed apart, from
    # copies of the weights under no_grad (for "live", any gradient through the teacher's
    # logits would change it)
    student.zero_grad()
    with torch.no_grad():
        apart = copy.deepcopy(teacher).logits(
            copy.deepcopy(student), torch.cat([teacher_prompt, response], 1)
        )[:, -n - 1 : -1]
    loss2, _ = distillation_loss(student_logits(), apart, torch.ones(2, n), top_k=8)
    loss2.backward()
    for g1, p in zip(grads, student.parameters(), strict=True):
        assert torch.equal(g1, p.grad)
    assert sum(g.abs().sum() for g in grads) > 0


def test_state_dict_round_trip():
    student = tiny_llama()
    teacher = Teacher(student, "ema", tau=0.2)
    fake_optimizer_step(student, seed=9)
    teacher.update(student)
    state = teacher.state_dict()

    other = Teacher(tiny_llama(seed=1), "ema", tau=0.2)
    other.load_state_dict(state)
    for a, b in zip(teacher.module.parameters(), other.module.parameters(), strict=True):
        assert torch.equal(a, b)
    # and both continue identically
    fake_optimizer_step(student, seed=10)
    teacher.update(student)
    other.update(student)
    for a, b in zip(teacher.module.parameters(), other.module.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="same teacher mode"):
        Teacher(student, "frozen").load_state_dict(state)
    assert Teacher(student, "live").state_dict()["module"] is None


def test_bf16_ema_accumulates_in_fp32():
    """A 1% step toward a nearby value is below bf16 resolution; the fp32 shadow keeps it."""
    student = tiny_llama(dtype=torch.bfloat16)
    teacher = Teacher(student, "ema", tau=0.01)
    naive = Teacher(student, "ema", tau=0.01, fp32_ema=False)
    theta0 = [p.float() for p in params(student)]
    # steps of ~10% of a weight: 1% of that is below half a bf16 ulp, so a bf16 lerp stalls
    fake_optimizer_step(student, seed=11, scale=0.002)
    target = [p.float() for p in params(student)]
    for _ in range(100):
        teacher.update(student)
        naive.update(student)

    def fraction_moved(module):
        done = sum(
            (t.float() - p0).abs().sum() for t, p0 in zip(module.parameters(), theta0, strict=True)
        )
        return done / sum((s - p0).abs().sum() for s, p0 in zip(target, theta0, strict=True))

    assert abs(fraction_moved(teacher.module) - (1 - 0.99**100)) < 0.05  # ≈ 0.63 of the way
    assert fraction_moved(naive.module) < 0.2
    assert all(p.dtype == torch.bfloat16 for p in teacher.module.parameters())


def test_bad_modes_and_mismatched_models():
    student = tiny_llama()
    with pytest.raises(ConfigError, match="teacher mode"):
        Teacher(student, "average")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tau"):
        Teacher(student, "ema", tau=0.0)
    teacher = Teacher(student, "ema")
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(ValueError, match="unwrap"):
        teacher.update(other)
