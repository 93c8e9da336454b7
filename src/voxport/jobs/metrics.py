"""The jobs' Prometheus series, registered in the app's registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from voxport.metrics import Metrics


class JobMetrics:
    """The jobs' series, in the app's registry."""

    def __init__(self, metrics: Metrics):
        r = metrics.registry
        # The store is shared by every worker: with workers, the latest count any of them read.
        self.jobs = Gauge("voxport_jobs", "Speech jobs in the store, by status.", ["status"], registry=r,
                          multiprocess_mode="livemostrecent")  # fmt: skip
        self.queue_depth = Gauge("voxport_job_queue_depth", "Speech jobs waiting to run.", registry=r,
                                 multiprocess_mode="livemostrecent")  # fmt: skip
        self.segments = Counter(
            "voxport_job_segments", "Job segments generated (finished and written).", registry=r
        )
        self.webhooks = Counter(
            "voxport_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retry, failed (gave up), refused (address "
            "policy).",
            ["outcome"],
            registry=r,
        )
        self.preempted = Counter(
            "voxport_job_segments_preempted",
            "Job segment generations abandoned (and later redone) because a live request needed the engine.",
            registry=r,
        )
