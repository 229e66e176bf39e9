"""Small gateway pieces: idempotency keys, priorities, request ids, JSON logs, problem documentation."""

from __future__ import annotations

import json
import logging

import pytest

from core.capabilities import SEGMENTATION, Capability
from core.keys import Scope
from gateway.audit import outcome_of
from gateway.observability import JsonFormatter, new_request_id, request_id_var
from gateway.problems import MEDIA_TYPE, Problem, problem_responses
from gateway.submission import celery_priority, check_idempotency_key


def test_idempotency_key_rules() -> None:
    assert check_idempotency_key("ris-order-88412") == "ris-order-88412"
    assert check_idempotency_key(None, "tx-1") == "tx-1"
    assert check_idempotency_key("tx-1", "tx-1") == "tx-1"
    assert check_idempotency_key(None) is None
    for bad in ("", "has space", "x" * 101, "naïve"):
        with pytest.raises(Problem) as excinfo:
            check_idempotency_key(bad)
        assert excinfo.value.status == 422
    with pytest.raises(Problem, match="differ"):
        check_idempotency_key("a", "b")


def test_urgent_jobs_go_first_on_redis() -> None:
    # Celery on Redis serves priority 0 first; the API's 9 is the most urgent
    assert celery_priority(9) == 0 and celery_priority(0) == 9 and celery_priority(5) == 4


def test_request_ids_are_accepted_only_when_sane() -> None:
    assert new_request_id("abc-123.x:y_z") == "abc-123.x:y_z"
    for bad in (None, "", "has space", "x" * 65, "line\nbreak", "ünï"):
        generated = new_request_id(bad)
        assert generated != bad and len(generated) == 32


def test_json_log_lines_carry_the_request_id_and_extras() -> None:
    token = request_id_var.set("req-42")
    try:
        record = logging.LogRecord("gateway.access", logging.INFO, __file__, 1, "GET %s %d", ("/v1/jobs", 200), None)
        record.route, record.status = "/v1/jobs", 200
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["request_id"] == "req-42" and line["msg"] == "GET /v1/jobs 200"
    assert line["route"] == "/v1/jobs" and line["status"] == 200 and line["level"] == "INFO"


def test_outcomes() -> None:
    assert [outcome_of(s) for s in (200, 202, 401, 403, 404, 429, 503)] == [
        "ok", "ok", "denied", "denied", "rejected", "limited", "error"]


def test_problem_documentation_is_problem_json_with_headers() -> None:
    docs = problem_responses(401, 429, 503)
    assert set(docs) == {401, 429, 503}
    assert all(MEDIA_TYPE in entry["content"] for entry in docs.values())
    assert "WWW-Authenticate" in docs[401]["headers"] and "Retry-After" in docs[429]["headers"]


def test_request_id_travels_to_celery_as_a_header(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway import submission
    from workers.celery_app import celery_app

    sent: dict = {}
    monkeypatch.setattr(celery_app, "send_task", lambda name, **kw: sent.update(name=name, **kw))
    spec = submission.job_request(SEGMENTATION, {}, model="reference_hutissue", priority=9)
    submission._enqueue(spec, "job-1", "req-1")
    assert sent["name"] == SEGMENTATION.task == "workers.segmentation_tasks.segment_volume"
    assert sent["args"] == ["job-1"]
    assert sent["headers"] == {"request_id": "req-1"} and sent["task_id"] == "job-1"
    assert (sent["queue"], sent["priority"], sent["ignore_result"]) == ("volumes", 0, True)


def test_missing_models_and_worker_tasks_are_503() -> None:
    from gateway.capabilities import require_available, task_installed

    assert task_installed(SEGMENTATION.task or "")
    assert not task_installed("workers.no_such_module.run")
    assert not task_installed(f"{SEGMENTATION.task_module}.no_such_task")
    for capability, kind, named in ((Capability("x", Scope.MODELS, "/v1/x", "x", models=("no_such_model",)),
                                     "model-missing", "no_such_model"),
                                    (Capability("valuation", Scope.VALUATION, "/v1/valuation", "v",
                                                task="workers.nope.score", queue="batch"),
                                     "worker-task-missing", "valuation worker task not installed")):
        check = require_available(capability).dependency
        with pytest.raises(Problem) as excinfo:
            check()
        assert (excinfo.value.status, excinfo.value.kind) == (503, kind) and named in excinfo.value.detail
