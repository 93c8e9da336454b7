"""voxport.singleflight.coalesce: identical concurrent callers produce once; a leader whose client left
(cancelled) hands the work to a waiter instead of failing it."""

from __future__ import annotations

import asyncio

from voxport.singleflight import coalesce


async def test_waiters_share_the_leaders_result() -> None:
    inflight: dict = {}
    calls = 0
    gate = asyncio.Event()

    async def lead() -> tuple[str, bool]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "audio", True

    tasks = [asyncio.ensure_future(coalesce(inflight, "k", lead)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert sorted(produced for _, produced in results) == [False, False, True]
    assert {result for result, _ in results} == {"audio"}
    assert inflight == {}


async def test_a_cancelled_leader_hands_over_to_a_waiter() -> None:
    inflight: dict = {}
    started: list[int] = []
    gate = asyncio.Event()

    def leader(number: int):
        async def lead() -> tuple[str, bool]:
            started.append(number)
            await gate.wait()
            return f"audio from {number}", True

        return lead

    first = asyncio.ensure_future(coalesce(inflight, "k", leader(1)))
    await asyncio.sleep(0)
    waiters = [asyncio.ensure_future(coalesce(inflight, "k", leader(n))) for n in (2, 3)]
    await asyncio.sleep(0)
    first.cancel()  # the first client disconnects while it leads
    for _ in range(20):  # until a waiter leads in its place (a few loop turns)
        if len(started) == 2:
            break
        await asyncio.sleep(0)
    for _ in range(5):  # and the other waiter has had the turns to wake and find it
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiters)
    assert first.cancelled()
    assert started[0] == 1 and len(started) == 2  # exactly one waiter took over
    winner = started[1]
    assert sorted(results, key=lambda r: not r[1]) == [
        (f"audio from {winner}", True),
        (f"audio from {winner}", False),
    ]
    assert inflight == {}
