"""The Celery application: Redis broker, long-job discipline from the design card.

acks_late + reject_on_worker_lost: a job whose worker dies is redelivered, not lost.
prefetch 1: a worker holds one long job at a time. The visibility timeout exceeds the hard
time limit, so Redis never redelivers a job that is still running.

The task modules, queues and routes come from the capability registry (``core/capabilities.py``):
one ``workers/<family>_tasks.py`` per family, each task named by its capability's ``task``.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_ready
from kombu import Queue

from core.capabilities import VOLUMES_QUEUE, queues, task_routes, worker_task_modules
from core.settings import settings

HARD_LIMIT_S = 3600
SOFT_LIMIT_S = HARD_LIMIT_S - 60

celery_app = Celery("medstack", broker=settings.redis_url, backend=settings.redis_url, include=worker_task_modules())
celery_app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=HARD_LIMIT_S,
    task_soft_time_limit=SOFT_LIMIT_S,
    broker_transport_options={"visibility_timeout": HARD_LIMIT_S + 600},
    result_backend_transport_options={"visibility_timeout": HARD_LIMIT_S + 600},
    task_queues=[Queue(name) for name in queues()],
    task_default_queue=VOLUMES_QUEUE,
    task_routes=task_routes(),
    task_serializer="json",
    accept_content=["json"],
    result_expires=7 * 24 * 3600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@worker_ready.connect
def _scan_for_orphans(**_: object) -> None:
    """Each worker requeues running jobs whose worker died (``workers/recovery.py``)."""
    from workers.recovery import requeue_by_kind, start_orphan_scanner

    start_orphan_scanner(lambda job_id, kind: requeue_by_kind(celery_app.send_task, job_id, kind))
