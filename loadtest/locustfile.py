"""Load profiles for the MedStack gateway: one user class per capability, all together = the mixed profile.

    make load                                   # the mixed profile, headless, bounded, against `medstack up`
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080              # web UI, all classes
    locust -f loadtest/locustfile.py SegmentationUser --headless -u 4 -t 1m    # one capability

Environment (``loadtest/run.py`` sets it up):

* ``MEDSTACK_LOAD_KEY``: API key with the scopes segmentation, jobs, models, report, dialogue,
  localization (its rate limit high enough for the whole run);
* ``MEDSTACK_LOAD_THROTTLED_KEY``: a key with a small rate limit, used by ``RateLimitedUser`` to check
  that the limit answers 429 with ``Retry-After`` (those 429s are deliberate and count as successes);
* ``MEDSTACK_LOAD_CT``: a small CT volume (NIfTI) to segment;
* ``MEDSTACK_LOAD_JOB_TIMEOUT_S`` (default 300): how long a segmentation user polls its job;
* ``MEDSTACK_LOAD_STATUS_FILE``: where to write the count of answers per (request name, status);
* ``MEDSTACK_LOAD_MODEL`` (default reference_hutissue): the served segmentation model to call.

Report, dialogue and localization answer ``503`` with problem type ``model-missing`` (or
``capability-unavailable`` / ``worker-task-missing``) until their models and worker tasks exist. That
answer is the platform working as designed, so it is counted as a success and tallied separately
("expected 503"); any other 5xx is a failure (rules in ``loadtest/outcomes.py``, unit-tested).
``--exclude-tags ratelimit`` leaves out the deliberate 429s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, constant_pacing, events, tag, task

# `locust -f loadtest/locustfile.py` puts only loadtest/ on sys.path; the helpers live in the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtest.outcomes import FINAL_STATES, auth, expect, multipart, tally  # noqa: E402

KEY = os.environ.get("MEDSTACK_LOAD_KEY", "")
THROTTLED_KEY = os.environ.get("MEDSTACK_LOAD_THROTTLED_KEY", "")
CT_PATH = os.environ.get("MEDSTACK_LOAD_CT", "")
JOB_TIMEOUT_S = float(os.environ.get("MEDSTACK_LOAD_JOB_TIMEOUT_S", "300"))
STATUS_FILE = os.environ.get("MEDSTACK_LOAD_STATUS_FILE", "")
MODEL = os.environ.get("MEDSTACK_LOAD_MODEL", "reference_hutissue")

# ---- capabilities ---------------------------------------------------------------------------------


class SegmentationUser(FastHttpUser):
    """Uploads a small real CT crop, polls the job until it is final, fetches the summary.

    Besides the HTTP requests, each job reports one pseudo-request ``JOB segmentation`` whose time is
    submit → final state, so the end-to-end job latency sits in the same statistics.
    """

    weight = 3
    wait_time = between(2, 6)

    def on_start(self) -> None:
        self.volume = Path(CT_PATH).read_bytes() if CT_PATH else b""

    @task
    def segment(self) -> None:
        if not self.volume:
            raise RuntimeError("MEDSTACK_LOAD_CT is not set; loadtest/run.py writes a CT crop and sets it")
        start = time.perf_counter()
        name = "POST /v1/segmentation/jobs"
        with self.client.post(f"/v1/segmentation/jobs?model={MODEL}", data=self.volume, name=name,
                              headers=auth(KEY) | {"Content-Type": "application/octet-stream"},
                              catch_response=True) as response:
            expect(response, name, (202,))
            if response.status_code != 202:
                return
            job = response.json()
        state, job = self._poll(job["links"]["self"], start)
        elapsed_ms = (time.perf_counter() - start) * 1000
        failure = None if state == "succeeded" else RuntimeError(f"job ended {state}: {job.get('error')}")
        tally[("JOB segmentation", state)] += 1
        events.request.fire(request_type="JOB", name="segmentation (submit → final)", response_time=elapsed_ms,
                            response_length=0, exception=failure, context={})
        if state == "succeeded" and "summary.json" in job.get("links", {}):
            name = "GET /v1/jobs/[id]/artifacts/summary.json"
            with self.client.get(job["links"]["summary.json"], headers=auth(KEY), name=name,
                                 catch_response=True) as response:
                expect(response, name, (200,))

    def _poll(self, url: str, start: float) -> tuple[str, dict[str, Any]]:
        job: dict[str, Any] = {}
        name = "GET /v1/jobs/[id]"
        while time.perf_counter() - start < JOB_TIMEOUT_S:
            with self.client.get(url, headers=auth(KEY), name=name, catch_response=True) as response:
                expect(response, name, (200,))
                if response.status_code == 200:
                    job = response.json()
                    if job["state"] in FINAL_STATES:
                        return job["state"], job
            time.sleep(1.0)
        return "timed out", job


class ModelsUser(FastHttpUser):
    """Lists models, reads one, and runs a small synchronous inference through the gateway to Triton."""

    weight = 4
    wait_time = between(0.5, 2)

    @task(3)
    def list_models(self) -> None:
        name = "GET /v1/models"
        with self.client.get("/v1/models", headers=auth(KEY), name=name, catch_response=True) as response:
            expect(response, name, (200,))

    @task(1)
    def get_model(self) -> None:
        name = "GET /v1/models/[name]"
        with self.client.get(f"/v1/models/{MODEL}", headers=auth(KEY), name=name, catch_response=True) as response:
            expect(response, name, (200,))

    @task(2)
    def infer_small_patch(self) -> None:
        # 1×1×8×8×8 HU values: a probe-sized request, the kind the synchronous route is for
        data = [float(-1000 + (i * 37) % 2200) for i in range(512)]
        body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8, 8], "datatype": "FP32", "data": data}]}
        name = "POST /v1/models/[name]/infer"
        with self.client.post(f"/v1/models/{MODEL}/infer", json=body, headers=auth(KEY), name=name,
                              catch_response=True) as response:
            expect(response, name, (200,))


class HealthUser(FastHttpUser):
    """What probes and monitoring do: liveness and readiness, no key."""

    weight = 1
    wait_time = between(1, 3)

    @task
    def probes(self) -> None:
        for path in ("/livez", "/readyz"):
            with self.client.get(path, name=f"GET {path}", catch_response=True) as response:
                expect(response, f"GET {path}", (200,))


class ReportUser(FastHttpUser):
    """Report generation for a chest X-ray; 503 model-missing until report_generate is built."""

    weight = 1
    wait_time = between(2, 5)
    # an 8×8 grey PNG
    PNG = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000008000000080800000000e164e15700000010"
        "49444154789c636c60800026068a1800260800905d30a51e0000000049454e44ae426082"
    )

    @task
    def report(self) -> None:
        body, content_type = multipart({"view": "PA"}, "chest.png", self.PNG, "image/png")
        name = "POST /v1/reports"
        with self.client.post("/v1/reports", data=body, headers=auth(KEY) | {"Content-Type": content_type},
                              name=name, catch_response=True) as response:
            expect(response, name, (200,), expected_503=True)


class DialogueUser(FastHttpUser):
    """A consultation: start a session, send a message; 503 model-missing until dialogue_generate is built."""

    weight = 1
    wait_time = between(2, 5)

    @task
    def consult(self) -> None:
        name = "POST /v1/dialogue/sessions"
        with self.client.post("/v1/dialogue/sessions", json={"language": "en"}, headers=auth(KEY), name=name,
                              catch_response=True) as response:
            expect(response, name, (201,), expected_503=True)
            session = response.json().get("id") if response.status_code == 201 else None
        if session:
            name = "POST /v1/dialogue/sessions/[id]/messages"
            with self.client.post(f"/v1/dialogue/sessions/{session}/messages", headers=auth(KEY), name=name,
                                  json={"content": "I have had a dry cough for a week."},
                                  catch_response=True) as response:
                expect(response, name, (200,), expected_503=True)


class LocalizationUser(FastHttpUser):
    """Lists templates (always available) and submits a localization job (503 until localization_medlam)."""

    weight = 1
    wait_time = between(2, 5)

    def on_start(self) -> None:
        self.volume = Path(CT_PATH).read_bytes() if CT_PATH else b""

    @task(2)
    def templates(self) -> None:
        name = "GET /v1/localization/templates"
        with self.client.get("/v1/localization/templates", headers=auth(KEY), name=name,
                             catch_response=True) as response:
            expect(response, name, (200,))

    @task(1)
    def localize(self) -> None:
        body, content_type = multipart({"structures": "lung_left,lung_right", "template_ids": "none"},
                                        "query.nii.gz", self.volume, "application/gzip")
        name = "POST /v1/localization/jobs"
        with self.client.post("/v1/localization/jobs", data=body, name=name, catch_response=True,
                              headers=auth(KEY) | {"Content-Type": content_type}) as response:
            expect(response, name, (202, 422), expected_503=True)


@tag("ratelimit")
class RateLimitedUser(FastHttpUser):
    """Deliberately faster than its key's rate: 429 + Retry-After is the right answer and counts as one."""

    weight = 1
    wait_time = constant_pacing(0.2)

    @task
    def over_the_limit(self) -> None:
        if not THROTTLED_KEY:
            return
        name = "GET /v1/models (throttled key)"
        with self.client.get("/v1/models", headers=auth(THROTTLED_KEY), name=name,
                             catch_response=True) as response:
            if response.status_code == 429 and response.headers.get("Retry-After"):
                tally[(name, "429 (deliberate)")] += 1
                response.success()
            else:
                expect(response, name, (200,))


@events.test_stop.add_listener
def _write_tally(**_: Any) -> None:
    if STATUS_FILE:
        rows = [{"name": name, "outcome": outcome, "count": n} for (name, outcome), n in sorted(tally.items())]
        Path(STATUS_FILE).write_text(json.dumps(rows, indent=1))
