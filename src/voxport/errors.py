"""One error model for the whole server, and it knows nothing of HTTP.

A service raises `VoxportError(kind, message, param=, code=, retry_after=)`; the API layer
(`api/errors.py`) turns the kind into a status code in one table and renders OpenAI's envelope. The
kinds name what went wrong from the caller's side, not how a transport says it.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal[
    "invalid",  # the request is wrong as sent: name the field in `param`
    "unauthorized",  # no or wrong credentials
    "forbidden",  # credentials fine, the action is not allowed
    "not_found",  # what the request names does not exist
    "conflict",  # it clashes with the server's state (exists already, library full)
    "too_large",  # a body or upload beyond the configured size
    "cancelled",  # the client cancelled it (disconnect, or cancel by id)
    "busy",  # every slot and queue place is taken: retry after `retry_after` seconds
    "internal",  # a bug
    "unavailable",  # the engine (or a tool it needs) cannot serve now
    "timeout",  # the request ran past its deadline
]

# Kinds that say the request itself is at fault: sent again unchanged, it fails the same way.
CLIENT_KINDS: frozenset[str] = frozenset(
    {"invalid", "unauthorized", "forbidden", "not_found", "conflict", "too_large"}
)


class VoxportError(Exception):
    """An answer other than success: what kind of failure, a message a person can act on, the request
    field at fault (`param`), a stable machine-readable `code`, and when to retry (`retry_after`, s)."""

    def __init__(
        self,
        kind: Kind,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    @property
    def client_fault(self) -> bool:
        return self.kind in CLIENT_KINDS


class RequestCancelled(VoxportError):
    """The request was cancelled (client gone, or cancelled by id)."""

    def __init__(self, message: str = "The request was cancelled."):
        super().__init__("cancelled", message, code="request_cancelled")


def invalid(message: str, param: str | None, code: str | None = "invalid_value") -> VoxportError:
    return VoxportError("invalid", message, param=param, code=code)


def unavailable(message: str, code: str = "engine_unavailable", retry_after: int | None = 5) -> VoxportError:
    return VoxportError("unavailable", message, code=code, retry_after=retry_after)
