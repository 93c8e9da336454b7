"""Documented limits that had no test of their own (issue 30): the webhook retry gap (docs/jobs.md: "retried
after 1 s, 2 s, 4 s, ... (at most 10 minutes apart)") and the per-attempt deadline `webhook_timeout_s`."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from voxport.jobs.webhooks import Allowlist, WebhookSender, next_gap

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_webhook_retry_gaps_double_from_one_second_and_never_exceed_ten_minutes() -> None:
    gaps = [next_gap(attempts) for attempts in range(1, 60)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert all(later >= earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert max(gaps) == 600.0  # reached (2**10 s > 10 min) and then held
    assert gaps[-1] == 600.0


class Silent:
    """A loopback listener that accepts connections and never answers (a stalled webhook receiver)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.sock.accept()[0])

    def __enter__(self) -> Silent:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


async def test_a_receiver_that_does_not_answer_within_webhook_timeout_s_is_a_failed_attempt() -> None:
    """docs/jobs.md: an attempt fails (and is retried) unless answered within webhook_timeout_s."""
    with Silent() as silent:
        sender = WebhookSender(SECRET, Allowlist.parse(["127.0.0.1"]), timeout_s=1)
        started = time.monotonic()
        outcome = await sender.send("msg_slow", f"http://127.0.0.1:{silent.port}/hook", "{}")
        took = time.monotonic() - started
    assert not outcome.ok and not outcome.refused
    assert "timed out" in (outcome.error or ""), outcome
    assert silent.held, "the receiver was never connected to"
    assert took < 30, f"a 1 s webhook timeout took {took:.1f} s"  # generous: the bound, not its precision
