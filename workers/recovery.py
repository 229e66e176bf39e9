"""Jobs survive a worker that dies mid-job.

A running job keeps a heartbeat key in Redis (refreshed every few seconds by a thread of the task).
When a worker is killed the heartbeat expires; every worker scans for RUNNING jobs without a
heartbeat and queues them again, once (a Redis lock per job). A redelivered copy of a job whose
heartbeat is still alive waits for it to expire before taking over, so one job never runs twice
at the same time. The original broker message, redelivered much later, finds the job finished.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import redis
from sqlalchemy import select

from core.capabilities import CAPABILITIES
from core.db import Job, JobState, session_factory
from core.settings import settings

log = logging.getLogger(__name__)

HEARTBEAT_TTL_S = 20
HEARTBEAT_EVERY_S = 5
SCAN_EVERY_S = 10

# the Celery task that runs each kind of job (core/capabilities.py); the scanner requeues by kind
TASK_BY_KIND = {c.job_kind: c.task for c in CAPABILITIES if c.job_kind and c.task}


def _key(job_id: str) -> str:
    return f"medstack:heartbeat:{job_id}"


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


class Heartbeat:
    """Context manager: keeps ``medstack:heartbeat:<job>`` alive while the block runs."""

    def __init__(self, job_id: str, client: redis.Redis | None = None) -> None:
        self.job_id, self.token = job_id, uuid.uuid4().hex
        self.client = client or _client()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def _beat(self) -> None:
        self.client.set(_key(self.job_id), self.token, ex=HEARTBEAT_TTL_S)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY_S):
            try:
                self._beat()
            except redis.RedisError as error:  # keep working; the next beat may succeed
                log.warning("heartbeat for job %s failed: %s", self.job_id, error)

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.client.delete(_key(self.job_id))
        except redis.RedisError as error:  # Redis restarting: the job's outcome stands, the key expires by itself
            log.warning("heartbeat for job %s not cleared: %s", self.job_id, error)


def wait_until_orphaned(job_id: str, client: redis.Redis | None = None) -> bool:
    """True once no other execution beats for ``job_id``; False if one keeps beating."""
    client = client or _client()
    deadline = time.monotonic() + HEARTBEAT_TTL_S + 2
    seen = client.get(_key(job_id))
    while seen is not None and time.monotonic() < deadline:
        time.sleep(1)
        now = client.get(_key(job_id))
        if now is not None and now != seen:
            return False  # refreshed with another token: alive elsewhere
        seen = now
    return seen is None


def requeue_orphans(enqueue: Callable[[str, str], object], client: redis.Redis | None = None) -> list[str]:
    """Queue again every RUNNING job whose heartbeat has expired; ``enqueue(job_id, kind)``."""
    client = client or _client()
    with session_factory()() as db:
        running = db.execute(select(Job.id, Job.kind).where(Job.state == JobState.RUNNING)).all()
    requeued = []
    for job_id, kind in running:
        if client.exists(_key(job_id)):
            continue
        # one worker wins the right to requeue this job for the next few minutes
        if not client.set(f"medstack:requeue:{job_id}", "1", nx=True, ex=300):
            continue
        with session_factory().begin() as db:
            job = db.get(Job, job_id)
            if job is None or job.state != JobState.RUNNING:
                continue
            job.state, job.stage = JobState.QUEUED, "requeued after worker loss"
        enqueue(job_id, kind)
        requeued.append(job_id)
        log.warning("job %s: worker lost, queued again", job_id)
    return requeued


def requeue_by_kind(send_task: Callable[..., object], job_id: str, kind: str) -> None:
    """Send ``job_id`` to the task of its kind again (``send_task``: the Celery app's)."""
    name = TASK_BY_KIND.get(kind)
    if name is None:
        log.error("job %s: no task for kind %r; left for the broker's redelivery", job_id, kind)
        return
    send_task(name, args=[job_id], task_id=f"{job_id}-requeued")


def start_orphan_scanner(enqueue: Callable[[str, str], object]) -> threading.Thread:
    def loop() -> None:
        while True:
            try:
                requeue_orphans(enqueue)
            except Exception as error:  # the scanner must outlive a broker or database hiccup
                log.warning("orphan scan failed: %s", error)
            time.sleep(SCAN_EVERY_S)

    thread = threading.Thread(target=loop, name="orphan-scanner", daemon=True)
    thread.start()
    return thread
