"""The normalised event model every upstream adapter produces and every encoder consumes.

A generation is a sequence of parts (``Part``) and exactly one terminal event, last:
``Finish`` or ``Error``. Parts carry everything a chat stream carries::

    Delta(text, choice=0)                     content text: the common case, one small Struct a token
    Reasoning(text, choice=0, signature=None) reasoning text (``reasoning_content`` / ``reasoning`` /
                                              Anthropic's ``thinking``); a ``signature`` closes the
                                              thinking block its text belongs to (Anthropic's
                                              ``signature_delta``, usually with text ``""``)
    RedactedReasoning(data, choice=0)         a whole redacted thinking block, its opaque ``data``
    ToolCall(index, id=None, name=None, arguments="", choice=0)
                                              a fragment of tool call ``index`` (the call's index in its
                                              choice, dense from 0 in order of first appearance); ``id``
                                              and ``name`` come once, on (or before) the call's first
                                              ``arguments``; ``arguments`` is a fragment of the JSON
                                              text, to concatenate (an adapter JSON-encodes an object)
    Refusal(text, choice=0)                   refusal text
    Logprobs(content=None, refusal=None, choice=0)
                                              the upstream's token logprob objects as it sent them
                                              (raw JSON, one ``msgspec.Raw`` a token), for the content
                                              and the refusal; ``None`` where it sent none
    Usage(prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details, completion_tokens_details)
                                              OpenAI's usage shape: every count ``None`` when unknown
                                              (encoded ``null``, never 0), and a 0 the upstream gave kept

``choice`` is the choice index when the client asked for ``n > 1`` (0 otherwise), below
``MAX_CHOICES``. Texts of one field and choice are concatenated by the client, as are the
fragments of one call: so a consumer may merge parts (app/streaming/message.py), but never
across fields, choices or calls, and never a reasoning text across a signature.

``Finish.reason`` is choice 0's finish reason (``stop``, ``length``, ``tool_calls``,
``content_filter``…, as the upstream said it: a call cut off by ``length`` stays ``length``);
with several choices, ``reasons`` holds each one's by index; ``stop_sequence`` the stop sequence
that ended it, when the upstream says which (Anthropic's). ``Error`` is the abnormal end.

Events are frozen, and hold only text, numbers and other events: they can never be part of a
reference cycle, so the collector does not track them (``gc=False``: a part costs less to make).

Every consumer matches every kind, ending with ``case _: assert_never(event)``, so that a kind
added here and forgotten somewhere fails mypy rather than being read as the end of a stream.
"""

from __future__ import annotations

import msgspec

# The most choices one request may ask for (``n``), as OpenAI allows: an adapter refuses a choice index past it.
MAX_CHOICES = 128


class Delta(msgspec.Struct, frozen=True, gc=False):
    """A piece of generated content text."""

    text: str
    choice: int = 0


class Reasoning(msgspec.Struct, frozen=True, gc=False):
    """A piece of reasoning text; with ``signature``, the end of its thinking block."""

    text: str
    choice: int = 0
    signature: str | None = None


class RedactedReasoning(msgspec.Struct, frozen=True, gc=False):
    """A redacted thinking block (Anthropic's ``redacted_thinking``): opaque, to be sent back as it is."""

    data: str
    choice: int = 0


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """A fragment of one tool (function) call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    choice: int = 0


class Refusal(msgspec.Struct, frozen=True, gc=False):
    """A piece of refusal text."""

    text: str
    choice: int = 0


class Logprobs(msgspec.Struct, frozen=True, gc=False):
    """Token logprob objects (``{"token", "logprob", "bytes", "top_logprobs"}``), as the upstream sent them."""

    content: tuple[msgspec.Raw, ...] | None = None
    refusal: tuple[msgspec.Raw, ...] | None = None
    choice: int = 0


class PromptTokensDetails(msgspec.Struct, frozen=True, gc=False):
    cached_tokens: int | None = None
    audio_tokens: int | None = None
    cache_write_tokens: int | None = None
    image_tokens: int | None = None
    text_tokens: int | None = None


class CompletionTokensDetails(msgspec.Struct, frozen=True, gc=False):
    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None
    text_tokens: int | None = None


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Token counts, in OpenAI's shape: ``None`` is unknown."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None

    @classmethod
    def counted(cls, prompt_tokens: int | None, completion_tokens: int | None) -> Usage:
        """Usage from the two counts, with their total when both are known."""
        total = prompt_tokens + completion_tokens if prompt_tokens is not None and completion_tokens is not None else None
        return cls(prompt_tokens, completion_tokens, total)


class Finish(msgspec.Struct, frozen=True, gc=False):
    """The generation ended normally."""

    reason: str = "stop"
    reasons: tuple[str, ...] = ()  # with several choices, each one's reason by index (``reasons[0] == reason``)
    stop_sequence: str | None = None  # the stop sequence that ended it, when the upstream says which (Anthropic's)

    def reason_of(self, choice: int) -> str:
        return self.reasons[choice] if choice < len(self.reasons) else self.reason


class UpstreamDetail(msgspec.Struct, frozen=True, gc=False):
    """What a model server said along with an error status, in its own terms (OpenAI's, or Anthropic's ``type``)."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None


# The 4xx statuses that say the model server is unable now, not that the request is wrong: another try may do better.
_TRANSIENT_4XX = (408, 429)
# Said of the relay's own key to the model server, not of the client's: a client told 401 would doubt its own key.
_CREDENTIALS = (401, 403)


class Error(msgspec.Struct, frozen=True, gc=False):
    """The generation ended abnormally.

    ``type`` is a broad class (``upstream_error``, ``timeout``, ``relay_error``),
    ``code`` the precise cause (``upstream_status_500``, ``idle_timeout``, ``slow_consumer``…),
    ``phase`` where it happened: ``connect``, ``first_token``, ``stream`` or ``total``.
    For an error status from the model server, ``status`` is that status and ``detail`` what it said.
    """

    type: str
    code: str
    message: str
    phase: str
    status: int | None = None
    detail: UpstreamDetail | None = None

    @property
    def rejected(self) -> bool:
        """The model server refused the request itself (a 4xx but 408 and 429): any upstream would, and the client should know."""
        status = self.status
        return status is not None and 400 <= status < 500 and status not in _TRANSIENT_4XX

    @property
    def refused(self) -> bool:
        """Rejected, and the client is to get the model server's status and error as they are (not for 401 and 403)."""
        return self.rejected and self.status not in _CREDENTIALS


Part = Delta | Reasoning | RedactedReasoning | ToolCall | Refusal | Logprobs | Usage
Terminal = Finish | Error
Event = Part | Terminal
