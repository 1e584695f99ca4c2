"""Tiny random-weight models and a character-level chat tokenizer (no downloads).

Used by the tests and the benchmarks.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlrf.env import Message, Outcome, RLRFEnv
from rlrf.feedback import Feedback, FeedbackKind

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(chat_template: str | None = CHATML):
    """Build a character-level fast tokenizer with a ChatML template; EOS is ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    backend = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def tiny_model(seed: int = 0, vocab_size: int | None = None, layers: int = 2, hidden: int = 32):
    """Build a random-weight Llama small enough for CPU tests, matching :func:`tiny_tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_size = vocab_size or len(tiny_tokenizer())
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def favour_tokens(model: Any, tokenizer: Any, tokens: Sequence[str], bias: float = -4.0) -> Any:
    """Give ``model``'s LM head a bias of ``bias`` on every token but ``tokens``; return it.

    A tiny random model then samples mostly those tokens, so a toy task over them is solved
    within a few steps (``TargetCharEnv(targets="a")`` with ``tokens="a", "b", EOS``: reward
    ~0.15 at first, ~1.0 after 20 GRPO steps at lr 1e-2): a run that really learns.
    """
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.fill_(bias)
        for token in tokens:
            biased.bias[tokenizer.convert_tokens_to_ids(token)] = 0.0
    model.set_output_embeddings(biased)
    return model


def save_tiny(path: Path, seed: int = 0, **kwargs) -> Path:
    """Write a tiny model folder (weights + tokenizer) and return its path."""
    tiny_model(seed, **kwargs).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


class TargetCharEnv(RLRFEnv):
    """Toy env: the reward is the fraction of response characters equal to a target character.

    Task ``k`` asks for a response; its target is ``targets[k % len(targets)]``. Feedback on an
    imperfect response names the character to use. Learnable by GRPO even from random
    weights (the reward varies across samples and favours one token).
    """

    def __init__(self, n_tasks: int = 8, targets: str = "a", n_test: int = 4) -> None:
        super().__init__()
        self.n_tasks, self.targets, self.n_test = n_tasks, targets, n_test

    def task_ids(self, split: str = "train") -> list[str]:
        """Train ids ``t0..``, test ids ``e0..``."""
        if split == "train":
            return [f"t{i}" for i in range(self.n_tasks)]
        return [f"e{i}" for i in range(self.n_test)]

    def _target(self, task_id: str) -> str:
        return self.targets[int(task_id[1:]) % len(self.targets)]

    def prompt(self, task_id: str) -> list[Message]:
        """A short request that does not reveal the target."""
        return [{"role": "user", "content": f"Task {task_id}: write."}]

    def evaluate(self, task_id: str, response: str, history: Sequence[Message] = ()) -> Outcome:
        """Reward = share of characters equal to the target; feedback names the target."""
        target = self._target(task_id)
        reward = sum(c == target for c in response) / max(1, len(response))
        if reward >= 1.0:
            return Outcome(reward=1.0)
        return Outcome(
            reward=reward,
            feedback=Feedback(FeedbackKind.WRONG_ANSWER, f"Use only the character '{target}'."),
        )


def recording_build(
    lengths: list[list[int]] | None = None, built: list[bool] | None = None
) -> classmethod:
    """A stand-in for ``algorithms.scoring._PrefixCache.build`` recording each shared-prefix pass.

    Install it with ``monkeypatch.setattr(policy._PrefixCache, "build", recording_build(...))``;
    ``lengths`` gets each pass's prefix lengths, ``built`` whether a reusable cache came back.
    """
    from algorithms import scoring as policy

    build = policy._PrefixCache.build.__func__

    def recording(cls: Any, model: Any, prefixes: list, pad: int, size: int) -> Any:
        cache = build(cls, model, prefixes, pad, size)
        if lengths is not None:
            lengths.append([len(p) for p in prefixes])
        if built is not None:
            built.append(cache is not None)
        return cache

    return classmethod(recording)
