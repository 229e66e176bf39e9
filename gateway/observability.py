"""Request ids, structured JSON logs and Prometheus metrics.

Every request gets an id: the client's ``X-Request-ID`` when it is a sane token, else a new one.
It is echoed in the response, written on every log line of the request, stored on jobs and sent to
Celery as the task header ``request_id``. Log lines carry the route *template*
(``/v1/jobs/{job_id}``), status and duration: never query strings, file names or bodies, which
can identify a patient.

Metrics are process-local; with several gateway processes set ``PROMETHEUS_MULTIPROC_DIR``
(prometheus-client's multiprocess mode) or scrape each process.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id(offered: str | None) -> str:
    if offered and _SAFE_REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


# ---- logs ---------------------------------------------------------------------------------------

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id_var.get()
        return super().format(record)


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json"
        else _TextFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # gateway.access replaces uvicorn's access line, which would carry raw paths and query strings
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False


# ---- metrics ------------------------------------------------------------------------------------

registry = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "medstack_http_requests", "HTTP requests answered, by route template and status",
    ["method", "route", "status"], registry=registry,
)
LATENCY = Histogram(
    "medstack_http_request_duration_seconds", "Time to answer a request, by route template",
    ["method", "route"], registry=registry,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TRITON_LATENCY = Histogram(
    "medstack_triton_request_duration_seconds", "Round trip of one gRPC call to Triton, by model and outcome",
    ["model", "outcome"], registry=registry,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMITED = Counter("medstack_rate_limited", "Requests refused by the per-key rate limit", registry=registry)


class JobStateCollector(Collector):
    """``medstack_jobs{state=...}``: job counts read from the database at scrape time."""

    def __init__(self, count_by_state: Any) -> None:
        self.count_by_state = count_by_state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("medstack_jobs", "Jobs in the database by state", labels=["state"])
        try:
            counts = self.count_by_state()
        except Exception:  # a scrape must not fail because the database blinked
            logging.getLogger(__name__).warning("job counts unavailable for /metrics")
            counts = {}
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
