"""An OpenAI-compatible endpoint as a sampling backend, with counted retries and one-line errors.

For evaluation and diagnosis (``rlrf eval --base-url``): an endpoint returns text, not token
ids, so nothing trains on it. Retries are the ``openai`` client's own (exponential backoff
with jitter, honouring ``Retry-After``), counted from the ``x-stainless-retry-count`` header
it puts on every attempt.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rlrf.errors import RLRFError
from rlrf.sampling import OpenAIBackend, SamplingParams

if TYPE_CHECKING:
    from rlrf.env import Message

__all__ = ["EndpointBackend", "EndpointError"]

class EndpointError(RLRFError):
    """An OpenAI-compatible endpoint failed: unreachable, refused the key, answered garbage."""


class EndpointBackend(OpenAIBackend):
    """:class:`rlrf.OpenAIBackend` with counted retries and one-line errors.

    Args:
        model: The model name the server expects.
        base_url: The endpoint, e.g. ``http://127.0.0.1:8000/v1``.
        api_key: Bearer token (``None``: local servers that need none).
        max_workers: Requests in flight at once (one prompt per request).
        max_retries: Retries per request (the ``openai`` client's own backoff).
        timeout: Seconds per attempt.
        env_workers: Threads stepping or grading envs (the env's ``thread_safe`` permitting).
        samples_per_request: Cap on ``n`` per request; the rest is topped up.
        tokenizer: Re-tokenizes responses so their length is known in tokens.

    Attributes:
        attempts: HTTP attempts sent (retries included).
        retries: Attempts that were retries.

    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str | None = None,
        *,
        max_workers: int = 8,
        max_retries: int = 3,
        timeout: float = 120.0,
        samples_per_request: int | None = None,
        tokenizer: Any = None,
    ) -> None:
        import openai

        super().__init__(
            model, base_url, api_key, tokenizer=tokenizer, max_workers=max_workers,
            request_logprobs=False, timeout=timeout,
        )  # fmt: skip
        self.base_url = base_url
        self.max_retries = max_retries
        self.timeout = timeout
        self.samples_per_request = samples_per_request
        self.attempts = 0
        self.retries = 0
        self._lock = threading.Lock()
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._count]})
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
        )

    def _count(self, request: Any) -> None:
        retry = request.headers.get("x-stainless-retry-count", "0") not in ("", "0")
        with self._lock:
            self.attempts += 1
            self.retries += retry

    def _request(self, messages: Sequence[Message], n: int, params: SamplingParams) -> list[Any]:
        import openai

        n = min(n, self.samples_per_request or n)
        url, tries = self.base_url, f"{self.max_retries + 1} attempt(s) with backoff"
        try:
            choices = super()._request(messages, n, params)
        except openai.AuthenticationError as e:
            raise EndpointError(
                f"{url} refused the API key (HTTP 401: {_server_message(e)}); put the right key "
                "in the environment variable named by --api-key-env"
            ) from e
        except openai.PermissionDeniedError as e:
            raise EndpointError(
                f"{url} denied access (HTTP 403: {_server_message(e)}); check the API key's "
                f"permissions for model {self.model!r}"
            ) from e
        except openai.NotFoundError as e:
            raise EndpointError(
                f"{url} has no model {self.model!r} or no chat-completions route (HTTP 404: "
                f"{_server_message(e)}); check --model and --base-url (usually ending in /v1)"
            ) from e
        except openai.BadRequestError as e:
            hint = (
                f"if it limits the samples per request, pass --samples-per-request 1 (or what it "
                f"allows); else check --max-tokens ({params.max_new_tokens})"
                if n > 1
                else f"check --max-tokens ({params.max_new_tokens}) and --temperature"
            )
            raise EndpointError(
                f"{url} refused a request for n={n} sample(s) (HTTP 400: {_server_message(e)}); "
                + hint
            ) from e
        except openai.APITimeoutError as e:
            raise EndpointError(
                f"{url} did not answer within {self.timeout:g} s ({tries}); raise "
                "--request-timeout or lower --concurrency"
            ) from e
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise EndpointError(
                f"cannot connect to {url} ({tries}): {type(cause).__name__}: {cause}; is the "
                "server running and --base-url right?"
            ) from e
        except openai.APIStatusError as e:
            raise EndpointError(
                f"{url} answered HTTP {e.status_code} ({tries}): {_server_message(e)}"
            ) from e
        except (openai.APIError, ValueError, TypeError, AttributeError) as e:
            raise EndpointError(
                f"{url} answered something that is not an OpenAI chat completion "
                f"({type(e).__name__}: {str(e)[:200]}); is --base-url an OpenAI-compatible "
                "/v1 endpoint?"
            ) from e
        if not choices:
            raise EndpointError(
                f"{url} returned no choices for model {self.model!r}; the server answered "
                "but generated nothing (check that it serves this model)"
            )
        for choice in choices:
            message = getattr(choice, "message", None)
            if message is None or not isinstance(
                getattr(message, "content", None), (str, type(None))
            ):
                raise EndpointError(
                    f"{url} returned a choice without a message ({str(choice)[:200]}); is "
                    "--base-url an OpenAI-compatible /v1 endpoint?"
                )
        return choices


def _server_message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        message = err.get("message") if isinstance(err, dict) else err
        if message:
            return str(message)[:300]
    return str(getattr(e, "message", e))[:300]


