"""Documented limits that had no test of their own (issue 30): the webhook retry gap (docs/jobs.md: "retried
after 1 s, 2 s, 4 s, ... (at most 10 minutes apart)")."""

from __future__ import annotations

from voxport.jobs.webhooks import next_gap


def test_webhook_retry_gaps_double_from_one_second_and_never_exceed_ten_minutes() -> None:
    gaps = [next_gap(attempts) for attempts in range(1, 60)]
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert all(later >= earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert max(gaps) == 600.0  # reached (2**10 s > 10 min) and then held
    assert gaps[-1] == 600.0
