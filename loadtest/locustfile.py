"""Load profiles for the MedStack gateway: one user class per capability, all together = the mixed profile.

    make load                                   # the mixed profile, headless, bounded, against `medstack up`
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8080              # web UI, all classes
    locust -f loadtest/locustfile.py SegmentationUser --headless -u 4 -t 1m    # one capability

Environment (``loadtest/run.py`` sets it up):

* ``MEDSTACK_LOAD_KEY``: API key with the scopes segmentation, jobs, models, report, dialogue,
  localization (MedLSAM needs segmentation; its rate limit high enough for the whole run);
* ``MEDSTACK_LOAD_THROTTLED_KEY``: a key with a small rate limit, used by ``RateLimitedUser`` to check
  that the limit answers 429 with ``Retry-After`` (those 429s are deliberate and count as successes);
* ``MEDSTACK_LOAD_CT``: a small CT volume (NIfTI) to segment, localize and segment with MedLSAM;
* ``MEDSTACK_LOAD_CR``: a real chest radiograph (DICOM) to report on;
* ``MEDSTACK_LOAD_TEMPLATE_ID`` / ``MEDSTACK_LOAD_STRUCTURES``: a registered localization template and
  structures it has points for (localization and MedLSAM jobs);
* ``MEDSTACK_LOAD_JOB_TIMEOUT_S`` (default 300): how long a user polls its job;
* ``MEDSTACK_LOAD_STATUS_FILE``: where to write the count of answers per (request name, status);
* ``MEDSTACK_LOAD_MODEL`` (default: the capability's own model): the segmentation model jobs ask for;
* ``MEDSTACK_LOAD_PROBE_MODEL`` (default reference_hutissue): the model of the small synchronous inference.

Every capability is live: a ``503`` is a failure, except the documented answers while the run restarts
Redis and Triton on purpose (``triton-unavailable``, ``broker-unavailable``, ``service-unavailable``,
``not-ready``, each with ``Retry-After`` where the API promises it): those are tallied apart as
"503 … (restart)" and the client retries as the API tells it (rules in ``loadtest/outcomes.py``,
unit-tested). Each job's end-to-end time is a pseudo-request ``JOB <capability>``.
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


def _read(path: str, what: str) -> bytes:
    if not path:
        raise RuntimeError(f"{what} is not set; loadtest/run.py writes the inputs and sets it")
    return Path(path).read_bytes()

KEY = os.environ.get("MEDSTACK_LOAD_KEY", "")
THROTTLED_KEY = os.environ.get("MEDSTACK_LOAD_THROTTLED_KEY", "")
CT_PATH = os.environ.get("MEDSTACK_LOAD_CT", "")
CR_PATH = os.environ.get("MEDSTACK_LOAD_CR", "")
TEMPLATE_ID = os.environ.get("MEDSTACK_LOAD_TEMPLATE_ID", "")
STRUCTURES = os.environ.get("MEDSTACK_LOAD_STRUCTURES", "liver,spleen")
JOB_TIMEOUT_S = float(os.environ.get("MEDSTACK_LOAD_JOB_TIMEOUT_S", "300"))
STATUS_FILE = os.environ.get("MEDSTACK_LOAD_STATUS_FILE", "")
MODEL = os.environ.get("MEDSTACK_LOAD_MODEL", "")
PROBE_MODEL = os.environ.get("MEDSTACK_LOAD_PROBE_MODEL", "reference_hutissue")

# ---- capabilities ---------------------------------------------------------------------------------


class JobUser(FastHttpUser):
    """Submits a job, polls it until it is final, fetches its summary; reports ``JOB <capability>``."""

    abstract = True
    capability = ""

    def run_job(self, name: str, url: str, body: bytes, content_type: str) -> None:
        start = time.perf_counter()
        with self.client.post(url, data=body, name=name, headers=auth(KEY) | {"Content-Type": content_type},
                              catch_response=True) as response:
            expect(response, name, (202,), restarting=True)
            if response.status_code != 202:
                return
            job = response.json()
        state, job = self._poll(job["links"]["self"], start)
        failure = None if state == "succeeded" else RuntimeError(f"job ended {state}: {job.get('error')}")
        tally[(f"JOB {self.capability}", state)] += 1
        events.request.fire(request_type="JOB", name=f"{self.capability} (submit → final)",
                            response_time=(time.perf_counter() - start) * 1000, response_length=0,
                            exception=failure, context={})
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


class SegmentationUser(JobUser):
    """Uploads a small real CT crop to the segmentation model (the capability's own unless set)."""

    weight = 3
    wait_time = between(2, 6)
    capability = "segmentation"

    def on_start(self) -> None:
        self.volume = _read(CT_PATH, "MEDSTACK_LOAD_CT")

    @task
    def segment(self) -> None:
        url = "/v1/segmentation/jobs" + (f"?model={MODEL}" if MODEL else "")
        self.run_job("POST /v1/segmentation/jobs", url, self.volume, "application/octet-stream")


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
        with self.client.get(f"/v1/models/{PROBE_MODEL}", headers=auth(KEY), name=name,
                             catch_response=True) as response:
            expect(response, name, (200,))

    @task(2)
    def infer_small_patch(self) -> None:
        # 1×1×8×8×8 HU values: a probe-sized request, the kind the synchronous route is for
        data = [float(-1000 + (i * 37) % 2200) for i in range(512)]
        body = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8, 8], "datatype": "FP32", "data": data}]}
        name = "POST /v1/models/[name]/infer"
        with self.client.post(f"/v1/models/{PROBE_MODEL}/infer", json=body, headers=auth(KEY), name=name,
                              catch_response=True) as response:
            expect(response, name, (200,), restarting=True)


class HealthUser(FastHttpUser):
    """What probes and monitoring do: liveness and readiness, no key."""

    weight = 1
    wait_time = between(1, 3)

    @task
    def probes(self) -> None:
        for path in ("/livez", "/readyz"):
            with self.client.get(path, name=f"GET {path}", catch_response=True) as response:
                expect(response, f"GET {path}", (200,), restarting=path == "/readyz")


class ReportUser(FastHttpUser):
    """Report generation for the real chest radiograph (pydicom-data's CR, DICOM)."""

    weight = 1
    wait_time = between(2, 5)

    def on_start(self) -> None:
        self.radiograph = _read(CR_PATH, "MEDSTACK_LOAD_CR")

    @task
    def report(self) -> None:
        body, content_type = multipart({"view": "PA", "beam_size": "1"}, "chest.dcm", self.radiograph,
                                       "application/dicom")
        name = "POST /v1/reports"
        with self.client.post("/v1/reports", data=body, headers=auth(KEY) | {"Content-Type": content_type},
                              name=name, catch_response=True) as response:
            expect(response, name, (200,), restarting=True)


class DialogueUser(FastHttpUser):
    """A consultation: start a session, one whole reply, then one streamed (Server-Sent Events)."""

    weight = 1
    wait_time = between(2, 5)

    @task
    def consult(self) -> None:
        name = "POST /v1/dialogue/sessions"
        with self.client.post("/v1/dialogue/sessions", json={"language": "en"}, headers=auth(KEY), name=name,
                              catch_response=True) as response:
            expect(response, name, (201,), restarting=True)
            session = response.json().get("id") if response.status_code == 201 else None
        if not session:
            return
        url = f"/v1/dialogue/sessions/{session}/messages"
        name = "POST /v1/dialogue/sessions/[id]/messages"
        with self.client.post(url, headers=auth(KEY), name=name, json={"content": "I have had a dry cough for a week."},
                              catch_response=True) as response:
            expect(response, name, (200,), restarting=True)
        name = "POST /v1/dialogue/sessions/[id]/messages (stream)"
        with self.client.post(url, headers=auth(KEY), name=name, catch_response=True,
                              json={"content": "Now I also have a fever of 38.5.", "stream": True}) as response:
            expect(response, name, (200,), restarting=True)
            text = (response.text or "") if response.status_code == 200 else ""
            if response.status_code == 200 and "event: message" not in text:
                if "event: error" in text and '"status": 503' in text:
                    # Triton died mid-stream: the documented `error` event (status 503) ends the stream
                    tally[(name, "200, error event 503 (restart)")] += 1
                    tally[(name, "200")] -= 1
                else:
                    response.failure("the stream ended without its final message or error event")


class LocalizationUser(JobUser):
    """Lists templates and localizes structures in the CT crop against the registered template."""

    weight = 1
    wait_time = between(2, 5)
    capability = "localization"

    def on_start(self) -> None:
        self.volume = _read(CT_PATH, "MEDSTACK_LOAD_CT")

    @task(2)
    def templates(self) -> None:
        name = "GET /v1/localization/templates"
        with self.client.get("/v1/localization/templates", headers=auth(KEY), name=name,
                             catch_response=True) as response:
            expect(response, name, (200,))

    @task(1)
    def localize(self) -> None:
        body, content_type = multipart({"structures": STRUCTURES, "template_ids": TEMPLATE_ID},
                                       "query.nii.gz", self.volume, "application/gzip")
        self.run_job("POST /v1/localization/jobs", "/v1/localization/jobs", body, content_type)


class MedlsamUser(JobUser):
    """MedLSAM: localize against the registered template and segment inside the boxes."""

    weight = 1
    wait_time = between(3, 6)
    capability = "medlsam"

    def on_start(self) -> None:
        self.volume = _read(CT_PATH, "MEDSTACK_LOAD_CT")

    @task
    def segment(self) -> None:
        body, content_type = multipart({"structures": STRUCTURES, "template_ids": TEMPLATE_ID},
                                       "query.nii.gz", self.volume, "application/gzip")
        self.run_job("POST /v1/medlsam/jobs", "/v1/medlsam/jobs", body, content_type)


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
