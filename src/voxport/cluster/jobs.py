"""The speech-jobs backend on the shared Redis (`--redis-url`): the store (`jobstore`), the queue and its
runner (`jobqueue`), where results are kept, and the webhook secret every replica signs with.

Where the audio lives: in Redis. A job's finished segments (float32 at the engine's rate) are kept in
Redis until the job finishes, and its encoded result for `job_result_ttl_hours` (a key with that expiry).
So any replica serves any job's audio, and none needs a shared volume; the price is Redis memory: about
4 bytes x the engine's sample rate per second of audio in flight, plus every kept result. Each replica
keeps a local copy of a result it made or served (<data-dir>/jobs-redis/<job>/audio), so repeated and
Range downloads do not fetch it again; a copy is swept once Redis no longer holds its result.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import shutil
from pathlib import Path

from redis.exceptions import RedisError

from voxport.cluster.jobqueue import RedisJobRunner
from voxport.cluster.jobstore import RedisJobStore
from voxport.cluster.redis import SharedRedis
from voxport.config import Settings
from voxport.files import atomic_write
from voxport.jobs.backend import BackendFactory, JobBackend, JobHooks
from voxport.jobs.work import SegmentWork
from voxport.speech import SpeechService

log = logging.getLogger("voxport.jobs")


class ResultFiles:
    """This replica's copies of job results (the originals are in Redis)."""

    def __init__(self, root: Path, store: RedisJobStore):
        self.root = root
        self.store = store

    def path(self, job_id: str) -> Path:
        return self.root / job_id / "audio"

    async def audio_file(self, job_id: str) -> Path | None:
        """A succeeded job's audio as a local file: this replica's copy, else fetched from Redis."""
        path = self.path(job_id)
        if await asyncio.to_thread(path.exists):
            return path
        data = await self.store.audio(job_id)
        if data is None:
            return None
        await asyncio.to_thread(atomic_write, path, data)
        return path

    async def remove(self, job_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / job_id, True)

    async def discard(self, job_id: str) -> None:
        """A job's work and audio, in Redis and here."""
        await self.store.discard(job_id)
        await self.remove(job_id)

    async def sweep(self) -> None:
        """Copies whose result Redis no longer holds (expired, deleted through another replica)."""
        names = await asyncio.to_thread(
            lambda: [p.name for p in self.root.iterdir()] if self.root.is_dir() else []
        )
        for name in names:
            if not await self.store.r.exists(self.store.key("job", name, "audio")):
                await self.remove(name)


async def shared_secret(settings: Settings, shared: SharedRedis) -> str:
    """The webhook signing secret every replica signs with: the configured one, else one made once and
    kept in Redis (waiting for Redis at start-up if it is not there yet)."""
    if settings.webhook_secret:
        return settings.webhook_secret
    made = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    key = shared.key("jobs", "webhook-secret")
    while True:
        try:
            await shared.client.set(key, made, nx=True)
            return (await shared.client.get(key)).decode()
        except (RedisError, OSError) as exc:
            shared.mark(exc)
            log.warning("waiting for Redis to read the webhook secret (%s)", type(exc).__name__)
            await asyncio.sleep(1.0)


def redis_backend(shared: SharedRedis) -> BackendFactory:
    """The jobs backend on the shared Redis, for JobService(backend=...)."""

    def build(settings: Settings, speech: SpeechService, hooks: JobHooks) -> JobBackend:
        work = SegmentWork(settings, speech, hooks.on_preempted)
        # A delivery is leased for longer than one attempt can take (resolve, then send, each bounded).
        store = RedisJobStore(shared, work.plan, delivery_lease_s=2 * settings.webhook_timeout_s + 10)
        results = ResultFiles(Path(settings.data_dir) / "jobs-redis", store)
        runner = RedisJobRunner(settings, shared, store, work, hooks, results)

        async def secret() -> str:
            return await shared_secret(settings, shared)

        return JobBackend(store, runner, results.audio_file, results.discard, secret)

    return build
