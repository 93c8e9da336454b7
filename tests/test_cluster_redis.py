"""The shared-Redis connection against a real redis-server: it reports Redis going away and coming back,
and reconnects by itself."""

from __future__ import annotations

import asyncio

from tests.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from voxport.cluster.redis import SharedRedis


def test_reachability_follows_a_restart(redis_server: RedisServer) -> None:  # noqa: F811
    async def run() -> list[bool]:
        shared = SharedRedis(redis_server.url, prefix="t")
        seen = [await shared.ping()]
        await shared.client.set(shared.key("a", "b"), b"1")
        redis_server.stop()
        seen.append(await shared.ping())
        assert shared.last_error
        await asyncio.to_thread(redis_server.start)
        seen.append(await shared.ping())
        # The same client works again without being rebuilt (the data went with the process: no
        # persistence in this fixture).
        seen.append(await shared.client.get(shared.key("a", "b")) is None)
        await shared.close()
        return seen

    assert asyncio.run(run()) == [True, False, True, True]


def test_keys_are_namespaced() -> None:
    assert SharedRedis("redis://127.0.0.1:1/0", prefix="prod").key("cache", "abc") == "prod:cache:abc"
