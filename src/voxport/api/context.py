"""The request's record: what the middleware knows about a request (its id, when it arrived) and what a
route adds to it for the access log (the speech job). One typed object per request, reached through a
context variable the middleware sets for the request's task."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from voxport.speech import RequestTicket


@dataclass
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    speech: RequestTicket | None = None  # set by the speech routes; the access line reads it


current: ContextVar[RequestRecord] = ContextVar("voxport_request")
