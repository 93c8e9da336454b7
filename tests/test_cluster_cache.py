"""The shared audio cache against a real redis-server, two `RedisAudioCache`s standing for two replicas:
entries round-trip and are self-checked, single flight holds across them (the second waits for the
first's result; takes over when the first fails or dies), and with Redis away everything is a miss."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from tests.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from voxport.cluster.cache import RedisAudioCache, SharedResult
from voxport.cluster.redis import SharedRedis

META = {"content_type": "audio/wav", "sample_rate": 24000, "duration": 1.0, "usage": {}}


async def replica(server: RedisServer, wait_s: float = 30) -> RedisAudioCache:
    shared = SharedRedis(server.url, prefix="t")
    assert await shared.ping()
    return RedisAudioCache(shared, ttl_seconds=60, wait_s=wait_s)


class Produce:
    """A generation: stores its payload through `cache` (as the speech service does), unless it fails."""

    def __init__(self, cache: RedisAudioCache, key: str, payload: bytes, fail: bool = False):
        self.cache, self.key, self.payload, self.fail = cache, key, payload, fail
        self.calls = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self) -> SharedResult:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise RuntimeError("generation failed")
        await self.cache.put(self.key, self.payload, META)
        return SharedResult(self.payload, META)


def test_entries_round_trip_and_expire_with_the_ttl(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        a, b = await replica(redis_server), await replica(redis_server)
        payload = bytes(range(256)) * 2000  # above the size hashed in a worker thread
        await a.put("k1", payload, META)
        found = await b.get("k1")
        assert found is not None and found.payload == payload and found.meta["sample_rate"] == 24000
        assert 0 < redis_server.client().pttl("t:cache:k1") <= 60_000
        assert await b.get("k2") is None
        assert (b.stats.hits, b.stats.misses) == (1, 1)
        await a.shared.close()
        await b.shared.close()

    asyncio.run(run())


def test_the_second_replica_waits_for_the_first(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        a, b = await replica(redis_server), await replica(redis_server)
        first, second = Produce(a, "k", b"made on a"), Produce(b, "k", b"made on b")
        leader = asyncio.create_task(a.single_flight("k", first))
        await first.started.wait()
        follower = asyncio.create_task(b.single_flight("k", second))
        await asyncio.sleep(0.3)  # room for the follower to poll a few times: it must not generate
        assert not follower.done() and second.calls == 0
        first.release.set()
        (made, produced), (got, waited_produced) = await leader, await follower
        assert produced and not waited_produced and got.audio == made.audio == b"made on a"
        assert second.calls == 0
        assert redis_server.client().get("t:lock:k") is None  # released
        await a.shared.close()
        await b.shared.close()

    asyncio.run(run())


def test_a_failed_holder_hands_over(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        a, b = await replica(redis_server), await replica(redis_server)
        first, second = Produce(a, "k", b"", fail=True), Produce(b, "k", b"made on b")
        second.release.set()
        leader = asyncio.create_task(a.single_flight("k", first))
        await first.started.wait()
        follower = asyncio.create_task(b.single_flight("k", second))
        first.release.set()
        outcome = await asyncio.gather(leader, return_exceptions=True)
        assert isinstance(outcome[0], RuntimeError)
        got, produced = await follower
        assert produced and got.audio == b"made on b" and second.calls == 1
        await a.shared.close()
        await b.shared.close()

    asyncio.run(run())


def test_a_dead_holder_stops_blocking_when_its_lease_ends(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        # Giving up on the wait (after wait_s) generates anyway: far beyond the bound below, so only the
        # lease running out can let this replica generate in time.
        b = await replica(redis_server, wait_s=3600)
        # A lock whose holder is gone (a replica killed mid-generation): nobody renews it.
        redis_server.client().set("t:lock:k", "dead-replica", px=500)
        second = Produce(b, "k", b"made on b")
        second.release.set()
        got, produced = await asyncio.wait_for(b.single_flight("k", second), 120)
        assert produced and got.audio == b"made on b" and second.calls == 1
        await b.shared.close()

    asyncio.run(run())


def test_with_redis_away_everything_is_a_miss_and_generated_here(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> None:
        a = await replica(redis_server)
        await a.put("k", b"kept", META)
        redis_server.stop()
        assert await a.get("k") is None  # the failed command marks Redis away
        assert not a.shared.available
        await a.put("k2", b"lost", META)  # skipped, no error
        made = Produce(a, "k3", b"made here")
        made.release.set()
        got, produced = await a.single_flight("k3", made)
        assert produced and got.audio == b"made here"
        await asyncio.to_thread(redis_server.start)
        assert await a.shared.ping()
        await a.put("k4", b"back", META)
        found = await a.get("k4")
        assert found is not None and found.payload == b"back"
        await a.shared.close()

    asyncio.run(run())


def test_without_a_redis_url_nothing_of_it_is_imported(tmp_path) -> None:
    probe = (
        "import sys\n"
        "from voxport.config import Settings\n"
        "from voxport.app import create_app\n"
        f"create_app(Settings(engine='sim', data_dir={str(tmp_path / 'a')!r}))\n"
        "ours = ('redis', 'voxport.cluster')\n"
        "print(sorted(m for m in sys.modules if m in ours or m.startswith(tuple(p + '.' for p in ours))))\n"
        f"create_app(Settings(engine='sim', data_dir={str(tmp_path / 'b')!r}, redis_url='redis://127.0.0.1:1/0'))\n"
        "print('voxport.cluster.cache' in sys.modules)\n"
    )
    run = [sys.executable, "-c", probe]
    out = subprocess.run(run, capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["[]", "True"]
