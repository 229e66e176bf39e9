"""A small Python client for the MedStack gateway (httpx; numpy only for tensors).

    from medstack_client import MedStackClient

    with MedStackClient("http://127.0.0.1:8080", api_key="msk_…") as ms:
        job = ms.segment("ct.nii.gz")                 # 202 → job; safe to repeat (Idempotency-Key)
        job = ms.wait(job["id"])                      # polls until succeeded / failed / cancelled
        ms.download(job["id"], "mask.nii.gz", "out/")
        logits = ms.infer("reference_hutissue", patch)   # small tensors, .npy both ways

Every error answer becomes ``MedStackError`` carrying the RFC 7807 problem (``.status``,
``.kind``, ``.problem``). 429 and 503 with ``Retry-After`` are retried a few times for requests
that are safe to repeat (reads, and submissions, which always carry an Idempotency-Key).
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

FINAL = ("succeeded", "failed", "cancelled")


class MedStackError(Exception):
    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status, self.problem = status, problem
        self.kind = str(problem.get("type", "")).rsplit("/", 1)[-1]
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


def _rewind(files: dict[str, Any] | None) -> None:
    """Send an upload again from its start."""
    for entry in (files or {}).values():
        handle = entry[1] if isinstance(entry, tuple) else entry
        if hasattr(handle, "seek"):
            handle.seek(0)


class MedStackClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0, retries: int = 3,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.retries = retries
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport,
                                 headers={"Authorization": f"Bearer {api_key}"})

    def __enter__(self) -> MedStackClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ---- plumbing -------------------------------------------------------------------------------

    def _request(self, method: str, path: str, retry: bool = True, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = self.http.request(method, path, **kwargs)
            if response.status_code < 400:
                return response
            wait = response.headers.get("retry-after", "")
            if retry and response.status_code in (429, 503) and wait.isdigit() and attempt < self.retries:
                attempt += 1
                time.sleep(min(int(wait), 30))
                _rewind(kwargs.get("files"))
                continue
            try:
                problem = response.json()
            except ValueError:
                problem = {"title": response.reason_phrase, "detail": response.text[:500]}
            raise MedStackError(response.status_code, problem)

    # ---- catalog and small inference -----------------------------------------------------------

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200

    def models(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/models").json()["data"])

    def model(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/models/{name}").json())

    def infer(self, model: str, array: Any, output: str | None = None) -> Any:
        """One array in, one array out, as .npy (single-input models)."""
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        response = self._request("POST", f"/v1/models/{model}/infer", content=buffer.getvalue(),
                                 params={"output": output} if output else None,
                                 headers={"Content-Type": "application/x-npy"})
        return np.load(io.BytesIO(response.content), allow_pickle=False)

    def infer_json(self, model: str, inputs: dict[str, Any], outputs: list[str] | None = None) -> dict[str, Any]:
        """KServe v2-style JSON; returns {output name: numpy array}."""
        import numpy as np

        datatypes = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "uint8": "UINT8"}
        body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatypes[str(a.dtype)],
                            "data": np.asarray(a).ravel().tolist()} for n, a in inputs.items()]}
        if outputs:
            body["outputs"] = outputs
        answer = self._request("POST", f"/v1/models/{model}/infer", json=body).json()
        return {o["name"]: np.asarray(o["data"], dtype=np.float32 if o["datatype"] == "FP32" else None)
                .reshape(o["shape"]) for o in answer["outputs"]}

    # ---- jobs -------------------------------------------------------------------------------------

    def segment(self, path: str | Path, model: str | None = None, priority: int = 5,
                idempotency_key: str | None = None) -> dict[str, Any]:
        """Upload a volume (NIfTI, NRRD, MetaImage, DICOM-series zip); returns the job (new or replayed)."""
        data: dict[str, str] = {"priority": str(priority)}
        if model:
            data["model"] = model
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        with open(path, "rb") as f:
            response = self._request("POST", "/v1/segmentation/jobs", files={"file": (Path(path).name, f)},
                                     data=data, headers=headers)
        return dict(response.json())

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, state: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit} | ({"state": state} if state else {})
        return list(self._request("GET", "/v1/jobs", params=params).json()["data"])

    def wait(self, job_id: str, timeout_s: float = 600, poll_s: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["state"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s:g} s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/v1/jobs/{job_id}").json())

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/v1/jobs/{job_id}/artifacts").json()["data"])

    def download(self, job_id: str, name: str, folder: str | Path) -> Path:
        """Stream one result file into ``folder``; returns its path."""
        target = Path(folder) / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as response:
            if response.status_code >= 400:
                response.read()
                raise MedStackError(response.status_code, response.json())
            with open(target, "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
        return target
