"""The connection to the shared Redis: one pool (the official `redis` client's asyncio API), the key
namespace, and whether Redis is reachable right now.

Redis going away must not take the replica with it: every user of this connection catches
`redis.exceptions.RedisError`, degrades (serves without the shared cache, say), and `/ready` reports what
is degraded. The client reconnects by itself on the next command; `watch()` pings once a second so that
the state flips back without waiting for traffic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger("voxport.cluster")

# Short deadlines: a request must not hang on a Redis that is away; it goes on without it.
_SOCKET_TIMEOUT_S = 2.0
_CONNECT_TIMEOUT_S = 1.0


class SharedRedis:
    """The shared Redis of a deployment, with every key under `<prefix>:`."""

    def __init__(self, url: str, prefix: str = "voxport"):
        self.url = url
        self.prefix = prefix
        self.client = Redis.from_url(
            url,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self.available = False
        self.last_error: str | None = None
        self.on_error: Callable[[str], None] | None = None  # told the operation of each failed command

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def mark(self, error: BaseException | None) -> None:
        """Record the outcome of a command: users call this when a Redis call fails (and the watcher
        when it succeeds again), so /ready tells the truth between pings."""
        available = error is None
        if available != self.available:
            if available:
                log.info("redis: reachable")
            else:
                log.warning("redis: unreachable (%s); serving without shared state", type(error).__name__)
        self.available = available
        self.last_error = None if error is None else f"{type(error).__name__}: {error}"

    def failed(self, op: str, error: BaseException) -> None:
        """A command failed: mark Redis unreachable and count it (`voxport_redis_errors{op}`)."""
        self.mark(error)
        if self.on_error is not None:
            self.on_error(op)

    async def ping(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self.mark(exc)
        else:
            self.mark(None)
        return self.available

    async def watch(self, interval_s: float = 1.0) -> None:
        """Ping forever (a background task), keeping `available` current."""
        while True:
            await self.ping()
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        await self.client.aclose()
