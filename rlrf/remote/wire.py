"""What an rlrf env looks like on OpenEnv's wire: the observation fields, shared by both ends.

OpenEnv sends every reset and step result as ``{"observation": {...}, "reward": float |
null, "done": bool, "metadata": {...}}``. An env served by ``rlrf serve`` fills the
observation with these fields (the JSON schema at ``GET /schema`` says the same):

``messages``
    The chat the policy continues from (the env's observation), as ``{"role", "content"}``
    messages.
``new_messages``
    The messages the env added this time: the prompt at reset, the messages appended after
    the response at a step (a tool result, a hint the env chose to show). A client keeps its
    own chat and appends its response and these, so the chat it holds is exactly what the env
    returned in-process.
``text``
    ``new_messages`` as plain text, for clients that only read text.
``feedback``
    The typed feedback (``info["feedback"]``), each item as :meth:`rlrf.Feedback.to_dict`
    writes it: :func:`feedback_from_wire` gives the same :class:`~rlrf.Feedback` back.
``feedback_text``
    The feedback as plain text (:func:`rlrf.render_feedback`, uncapped).
``terminated``, ``truncated``, ``success``, ``reward_missing``, ``task_id``, ``split``, ``turn``
    As in the step's ``info``; ``done`` is ``terminated or truncated``.
``info``
    The rest of the step's ``info``, made JSON-safe.

**Teacher-only feedback stays out of the student's text.** An env gives feedback in
``info["feedback"]`` and decides itself what goes into the chat. ``messages``,
``new_messages`` and ``text`` carry only the chat, so feedback that an env keeps out of its
chat (for the SDPO teacher) reaches a client only through ``feedback`` / ``feedback_text``,
named as feedback.

**A missing reward is ``null``**, never 0: ``reward`` is ``null`` and ``reward_missing`` is
true whenever the env could not compute the reward.

Strings cross as UTF-8 JSON: a lone surrogate (which UTF-8 cannot encode) becomes U+FFFD. The
client rebuilds its chat from its own response, so its chat is unaffected.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rlrf.env import Message
from rlrf.errors import RemoteEnvError, TrajectoryFormatError
from rlrf.feedback import Feedback, FeedbackKind, as_feedback_tuple

__all__ = [
    "ACTION_FIELD",
    "INFO_PATH",
    "TOKEN_ENV",
    "WIRE_VERSION",
    "feedback_from_wire",
    "feedback_to_wire",
    "json_safe",
    "messages_text",
    "wire_text",
]

#: Version of the observation layout above; sent in ``metadata["rlrf_wire"]``.
WIRE_VERSION = 1
#: The action's one field: the policy's response.
ACTION_FIELD = "response"
#: ``GET`` route where an ``rlrf serve`` server describes the env it serves.
INFO_PATH = "/rlrf"
#: The environment variable holding the bearer token (server and client alike).
TOKEN_ENV = "RLRF_SERVE_TOKEN"


def wire_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, so that it encodes as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        # surrogatepass then decode pairs real surrogate pairs and marks lone ones as invalid
        raw = text.encode("utf-16-le", "surrogatepass")
        return raw.decode("utf-16-le", "replace")


def json_safe(value: Any, _depth: int = 0) -> Any:
    """A JSON-serializable copy of ``value`` (numpy scalars, tuples, dataclasses, enums).

    Strings go through :func:`wire_text`; non-finite floats become ``None``; anything else
    becomes its ``repr``. Nesting past 32 levels is cut (as a ``repr``).
    """
    if _depth > 32:
        return repr(value)[:1000]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return wire_text(value)
    if isinstance(value, enum.Enum):
        return json_safe(value.value, _depth + 1)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Feedback):
        return json_safe(value.to_dict(), _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value), _depth + 1)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v, _depth + 1) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return json_safe(item(), _depth + 1)
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return json_safe(tolist(), _depth + 1)
    return wire_text(repr(value))


def feedback_to_wire(feedback: Feedback | Sequence[Feedback] | None) -> list[dict[str, Any]]:
    """Typed feedback as JSON dicts (:meth:`rlrf.Feedback.to_dict`, strings UTF-8 safe)."""
    return [json_safe(f.to_dict()) for f in as_feedback_tuple(feedback)]


def feedback_from_wire(data: Any, where: str, source: str = "") -> tuple[Feedback, ...]:
    """Feedback from what a server sent: rlrf's typed dicts, plain strings, or a mix.

    A dict that is not a valid :meth:`rlrf.Feedback.to_dict` record becomes
    :attr:`~rlrf.FeedbackKind.OTHER` feedback with its ``text`` (or ``message``) field, or the
    dict itself as text; a string becomes ``OTHER`` feedback; ``None`` or ``""`` gives none.
    ``source`` is set on items that came without one.
    """
    if data is None or data == "":
        return ()
    items = data if isinstance(data, list) else [data]
    out: list[Feedback] = []
    for item in items:
        if isinstance(item, str):
            if item:
                out.append(Feedback(FeedbackKind.OTHER, item, source=source))
        elif isinstance(item, Mapping):
            try:
                fb = Feedback.from_dict(dict(item))
            except (TrajectoryFormatError, TypeError, ValueError, AttributeError):
                text = item.get("text", item.get("message"))
                fb = Feedback(
                    FeedbackKind.OTHER,
                    text if isinstance(text, str) else str(dict(item)),
                    source=source,
                )
            out.append(fb if fb.source else dataclasses.replace(fb, source=source))
        else:
            raise RemoteEnvError(
                f"{where}: the server sent feedback of type {type(item).__name__} ({item!r:.80}); "
                "expected a string or a {'kind', 'text', ...} object"
            )
    return tuple(out)


def messages_text(messages: Sequence[Message]) -> str:
    """The contents of ``messages`` joined by blank lines (what a text-only client shows)."""
    return "\n\n".join(m["content"] for m in messages if m.get("content"))
