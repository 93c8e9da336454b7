"""One error model for the whole server, and it knows nothing of HTTP.

A service raises `VoxportError(kind, message, param=, code=, retry_after=)`; the API layer
(`api/errors.py`) turns the kind into a status code in one table and renders OpenAI's envelope. The
kinds name what went wrong from the caller's side, not how a transport says it.
"""

from __future__ import annotations

from typing import Any, Literal

Kind = Literal[
    "invalid",  # the request is wrong as sent: name the field in `param`
    "unauthorized",  # no or wrong credentials
    "forbidden",  # credentials fine, the action is not allowed
    "not_found",  # what the request names does not exist
    "conflict",  # it clashes with the server's state (exists already, library full)
    "too_large",  # a body or upload beyond the configured size
    "unsatisfiable",  # a byte range past the end of what it asks for
    "cancelled",  # the client cancelled it (disconnect, or cancel by id)
    "busy",  # every slot and queue place is taken: retry after `retry_after` seconds
    "internal",  # a bug
    "unavailable",  # the engine (or a tool it needs) cannot serve now
    "timeout",  # the request ran past its deadline
]

# Kinds that say the request itself is at fault: sent again unchanged, it fails the same way.
CLIENT_KINDS: frozenset[str] = frozenset(
    {"invalid", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "unsatisfiable"}
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


def from_validation(errors: list[Any], prefix: str = "") -> VoxportError:
    """pydantic's first complaint (`ValidationError.errors()`) as an `invalid` error naming the field, its
    name after `prefix` (a batch's `requests[3].`), with a code: what every JSON body answers."""
    # A union (`voice`: a string or {"id"}) reports one complaint per branch: the one that is not about
    # the other branch's type says what is wrong with what was sent.
    same_field = [e for e in errors if e.get("loc", ())[:1] == errors[0].get("loc", ())[:1]]
    first = next((e for e in same_field if not e.get("type", "").endswith("_type")), errors[0])
    loc = [part for part in first.get("loc", ()) if part != "body"]
    param = str(loc[0]) if loc else None
    if len(loc) > 1 and isinstance(loc[1], int):  # an item of a list: `dialogue[3]`, `dialogue[3].voice`
        param = f"{param}[{loc[1]}]" + (f".{loc[2]}" if len(loc) > 2 and isinstance(loc[2], str) else "")
    kind = first.get("type", "")
    if param is not None:
        param = f"{prefix}{param}"
    elif prefix:
        param = prefix.rstrip(".")
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return invalid(f"Unrecognized request argument supplied: '{param}'.", param, "unknown_parameter")
    if kind == "json_invalid":
        return invalid("The request body is not valid JSON.", None, "invalid_json")
    if param is None:
        return invalid(f"The request body is invalid: {first.get('msg')}.", None, "invalid_body")
    detail = _length(first) or str(first.get("msg", "")).removeprefix("Value error, ")
    return invalid(f"Invalid value for '{param}': {detail}.", param)


def _length(error: Any) -> str | None:
    """A length complaint in the value's own terms: pydantic says "item" of a text when the bound sits on
    an optional field (`input`: "at least 1 item")."""
    bound = {"too_short": ("at least", "min_length"), "too_long": ("at most", "max_length")}.get(
        error["type"]
    )
    limit, value = (error.get("ctx") or {}).get(bound[1]) if bound else None, error.get("input")
    if limit is None or not isinstance(value, str | list | dict):
        return None
    unit = {str: "character", dict: "entr"}.get(type(value), "item")
    plural = {"entr": "ies"}.get(unit, "s") if limit != 1 else {"entr": "y"}.get(unit, "")
    return f"should have {bound[0]} {limit} {unit}{plural}, not {len(value)}"
