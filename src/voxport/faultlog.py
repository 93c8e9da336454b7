"""Unexpected errors in background loops, logged once per cause rather than once per iteration.

A background task (the webhook dispatcher, the job sweepers, the shared-state watchers) must outlive any one
failure, and a failure that repeats on every pass must not flood the log. `OncePerCause.report` logs an
error with its traceback the first time its cause (where it was raised, and its type) is seen, and then only
counts it; the counts are kept for a bounded number of causes.
"""

from __future__ import annotations

import logging
import traceback

MAX_CAUSES = 256


class OncePerCause:
    def __init__(self, log: logging.Logger):
        self.log = log
        self.seen: dict[tuple[str, str, str, int], int] = {}

    @staticmethod
    def cause(what: str, exc: BaseException) -> tuple[str, str, str, int]:
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames:
            return (what, type(exc).__qualname__, "", 0)
        return (what, type(exc).__qualname__, frames[-1].filename, frames[-1].lineno or 0)

    def report(self, what: str, exc: BaseException) -> bool:
        """Log `exc` (from doing `what`) if its cause is new; True if it was logged."""
        key = self.cause(what, exc)
        if key in self.seen:
            self.seen[key] += 1
            self.log.debug("%s failed again (%d times): %s", what, self.seen[key], type(exc).__name__)
            return False
        if len(self.seen) >= MAX_CAUSES:
            self.seen.pop(next(iter(self.seen)))
        self.seen[key] = 1
        self.log.error("%s failed (logged once for this cause): %s: %s", what, type(exc).__name__, exc,
                       exc_info=exc)  # fmt: skip
        return True
