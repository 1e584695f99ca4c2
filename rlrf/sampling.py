"""The sampling interface: what a rollout asks of a policy, with no torch in sight.

:class:`SamplingBackend` is one method, ``sample(prompts, n, params) -> list[list[Sample]]``:
``n`` samples per chat prompt with their token ids and per-token log-probs. The trainer's
Hugging Face sampler (:class:`algorithms.sampling.hf.HFPolicy`) implements it, and so does
:class:`OpenAIBackend` here (any OpenAI-compatible endpoint, sampling only). A new backend
(vLLM, a remote server) implements the same method; the rollout loop needs nothing else.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from rlrf.errors import ConfigError, RLRFError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rlrf.env import Message

__all__ = ["FinishReason", "OpenAIBackend", "Sample", "SamplingBackend", "SamplingParams"]

FinishReason = Literal["stop", "length"]
"""Why a sample ended: an end-of-sequence/stop token, or the token budget."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        temperature: Softmax temperature; 0 means greedy decoding.
        top_p: Nucleus sampling mass (1.0 = off).
        max_new_tokens: Cap on generated tokens per response (EOS included).
        seed: Seed of the sampling RNG for this call; None draws from torch's global RNG.

    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class Sample:
    """One sampled response.

    Attributes:
        text: The decoded response, without the EOS token.
        token_ids: The sampled token ids, EOS included when generation stopped on it; None
            where the backend cannot tell (some OpenAI-compatible servers).
        logprobs: Per-token log-probs of ``token_ids`` under the sampling distribution (see
            the module docstring); None where the backend does not return them.
        finish_reason: ``"stop"`` (EOS) or ``"length"`` (hit ``max_new_tokens``).
        prompt_token_ids: The tokenized prompt, where known.

    """

    text: str
    token_ids: list[int] | None
    logprobs: list[float] | None
    finish_reason: FinishReason
    prompt_token_ids: list[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class SamplingBackend(Protocol):
    """Anything that samples ``n`` responses for each chat prompt."""

    def sample(
        self, prompts: Sequence[Sequence[Message]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """Return ``n`` samples per prompt, in prompt order."""
        ...


class OpenAIBackend:
    """Sampling through any OpenAI-compatible chat endpoint (no training).

    Log-probs are requested and returned where the server provides them (``logprobs=True``);
    token ids are filled in only when a ``tokenizer`` is given (by re-tokenizing the text,
    which may differ from the server's own tokenization). Prompts are sent concurrently.

    Args:
        model: The model name the server expects.
        base_url: For example ``http://127.0.0.1:8000/v1``.
        api_key: Sent as the bearer token (local servers ignore it).
        tokenizer: Optional tokenizer for ``Sample.token_ids``.
        max_workers: Concurrent requests.
        request_logprobs: Ask the server for per-token log-probs.
        timeout: Seconds per request.

    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_workers: int = 8,
        request_logprobs: bool = True,
        timeout: float = 120.0,
    ) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout)
        self.model = model
        self.tokenizer = tokenizer
        self.max_workers = max_workers
        self.request_logprobs = request_logprobs

    def sample(
        self, prompts: Sequence[Sequence[Message]], n: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """Sample ``n`` responses per chat prompt (see :class:`SamplingBackend`)."""
        with concurrent.futures.ThreadPoolExecutor(self.max_workers) as pool:
            return list(pool.map(lambda p: self._sample_one(p, n, params), prompts))

    def _request(self, messages: Sequence[Message], n: int, params: SamplingParams) -> list[Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if self.request_logprobs:
            kwargs["logprobs"] = True
        return list(self.client.chat.completions.create(**kwargs).choices)

    def _sample_one(self, messages: Sequence[Message], n: int, params: SamplingParams) -> list:
        choices = self._request(messages, n, params)
        # some servers ignore n > 1: top up with single requests
        while len(choices) < n:
            more = self._request(messages, n - len(choices), params)
            if not more:
                raise RLRFError(f"server {self.client.base_url} returned no choices")
            choices.extend(more)
        return [self._to_sample(c) for c in choices[:n]]

    def _to_sample(self, choice: Any) -> Sample:
        text = choice.message.content or ""
        logprobs = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            logprobs = [float(item.logprob) for item in content]
        token_ids = None
        if self.tokenizer is not None:
            token_ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        reason: FinishReason = "length" if choice.finish_reason == "length" else "stop"
        return Sample(text=text, token_ids=token_ids, logprobs=logprobs, finish_reason=reason)
