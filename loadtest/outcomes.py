"""How the load test judges an answer, without locust (so it can be unit-tested in a plain process).

Every capability is live, so a 503 is a failure, except the answers the API documents for a moment
when Redis or Triton is down, which the load run causes on purpose (it kills and restarts both):
``triton-unavailable`` and ``broker-unavailable`` (with ``Retry-After``), ``service-unavailable`` (the
dialogue session store) and ``not-ready`` (``/readyz``). Those are tallied apart as
"503 <kind> (restart)" and pass for requests that may meet a restart. Every other unexpected status
is a failure.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

RESTARTING = ("triton-unavailable", "broker-unavailable", "service-unavailable", "not-ready")
FINAL_STATES = ("succeeded", "failed", "cancelled")

# (request name, status or outcome) → count, for the summary next to locust's own statistics
tally: Counter[tuple[str, str]] = Counter()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def problem_kind(response: Any) -> str:
    try:
        return str(response.json().get("type", "")).rsplit("/", 1)[-1]
    except (ValueError, AttributeError):
        return ""


def multipart(fields: dict[str, str], file_name: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body (geventhttpclient has no encoder of its own)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def expect(response: Any, name: str, ok: tuple[int, ...], restarting: bool = False) -> None:
    """Mark a catch_response answer: ``ok`` statuses pass; with ``restarting``, so does a 503 of a kind
    the API answers while Redis or Triton restarts."""
    status = response.status_code
    if status in ok:
        tally[(name, str(status))] += 1
        response.success()
    elif restarting and status == 503 and problem_kind(response) in RESTARTING:
        tally[(name, f"503 {problem_kind(response)} (restart)")] += 1
        response.success()
    else:
        tally[(name, f"{status} (failure)")] += 1
        response.failure(f"{status}: {response.text[:200] if response.text else ''}")
