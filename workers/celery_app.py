"""The Celery application: Redis broker, long-job discipline from the design card.

acks_late + reject_on_worker_lost: a job whose worker dies is redelivered, not lost.
prefetch 1: a worker holds one long job at a time. The visibility timeout exceeds the hard
time limit, so Redis never redelivers a job that is still running.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from core.settings import settings

HARD_LIMIT_S = 3600
SOFT_LIMIT_S = HARD_LIMIT_S - 60

celery_app = Celery(
    "medstack", broker=settings.redis_url, backend=settings.redis_url,
    include=["workers.tasks", "workers.localization_tasks", "workers.valuation_tasks"],
)
celery_app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=HARD_LIMIT_S,
    task_soft_time_limit=SOFT_LIMIT_S,
    broker_transport_options={"visibility_timeout": HARD_LIMIT_S + 600},
    result_backend_transport_options={"visibility_timeout": HARD_LIMIT_S + 600},
    task_queues=[Queue("volumes"), Queue("batch")],
    task_default_queue="volumes",
    task_routes={
        "workers.tasks.segment_volume": {"queue": "volumes"},
        "workers.valuation_tasks.score_dataset": {"queue": "batch"},
    },
    task_serializer="json",
    accept_content=["json"],
    result_expires=7 * 24 * 3600,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
