"""The relay's exceptions.

    RelayError                 anything the relay reports to a client
    ├── RequestError           the client's request is refused before anything starts
    │                          (status 400/401/404/413/422/429); nothing reaches an upstream
    └── UpstreamError          talking to a model server failed; carries the terminal
        │                      ``Error`` event it becomes once a stream has started
        ├── UpstreamConnectError   could not connect or send the request
        ├── UpstreamStatusError    the model server answered with an error status
        ├── UpstreamProtocolError  the model server's bytes do not follow its protocol
        └── UpstreamTimeout        a phase deadline passed
            └── TotalTimeout       the generation's total deadline passed

Whether an ``UpstreamError`` is the model server's ``fault`` (another upstream may do
better, and its circuit counts it) is part of its type: a status that refuses the request
itself (a 4xx but 408 and 429) and the total deadline, which is the request's own budget,
are not. An ``Error`` event an adapter sends is the upstream's fault unless ``rejected``.

Lower-level errors (``OSError``, ``httptools.HttpParserError``, ``msgspec.DecodeError``)
are translated into these where they are caught, with ``raise ... from exc``.
"""

from __future__ import annotations

from app.streaming.events import Error, UpstreamDetail


class RelayError(Exception):
    pass


class RequestError(RelayError):
    """The request is refused; ``status`` is the HTTP status to answer with."""

    def __init__(
        self, status: int, code: str, message: str, *, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return "authentication_error" if self.status == 401 else "invalid_request_error"


class UpstreamError(RelayError):
    type = "upstream_error"
    http_status = 502

    def __init__(self, code: str, message: str, phase: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.phase = phase

    @property
    def fault(self) -> bool:
        """The model server failed, not the request: another upstream may do better, and this one's circuit counts it."""
        return True

    def event(self) -> Error:
        return Error(type=self.type, code=self.code, message=self.message, phase=self.phase)


class UpstreamConnectError(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__("upstream_unreachable", message, "connect")


class UpstreamStatusError(UpstreamError):
    def __init__(self, status: int, message: str, detail: UpstreamDetail | None = None) -> None:
        super().__init__(f"upstream_status_{status}", message, "first_token")
        self.status = status
        self.detail = detail

    @property
    def fault(self) -> bool:
        return not self.event().rejected

    def event(self) -> Error:
        return Error(self.type, self.code, self.message, self.phase, status=self.status, detail=self.detail)


class UpstreamProtocolError(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    type = "timeout"
    http_status = 504

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(_TIMER[phase], f"no {_WAITED_FOR[phase]} within {seconds:g} s", phase)


class TotalTimeout(UpstreamTimeout):
    """The request's own budget ran out, whichever upstream had it: no other would have more time."""

    def __init__(self, seconds: float) -> None:
        super().__init__("total", seconds)

    @property
    def fault(self) -> bool:
        return False


# The phase a stream is in, and the timer that guards it.
_TIMER = {"connect": "connect_timeout", "first_token": "first_token_timeout", "stream": "idle_timeout", "total": "total_timeout"}


_WAITED_FOR = {
    "connect": "connection to the model server",
    "first_token": "first token from the model server",
    "stream": "token from the model server",
    "total": "end of the generation",
}
