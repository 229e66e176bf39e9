"""Public API schemas, apart from persistence models; each family named ``XCreate``/``XPublic``/``XsPublic``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from core.db import ApiKey, AuditRecord, Job, Template

JOB_ID = "0f8e4c1a-5b6d-4e2f-9a7b-3c1d2e4f5a6b"
SHA = "242f37384f27b41b36f5cfd4620bfe937a9b627243b86298db0db4c5725ebcea"


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time the platform stores is UTC
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


# ---- jobs ---------------------------------------------------------------------------------------

_JOB_EXAMPLE = {
    "id": JOB_ID, "kind": "segmentation", "model": "reference_hutissue", "state": "succeeded", "stage": "done",
    "progress": 1.0, "priority": 5, "idempotency_key": "ris-order-88412", "request_id": "5d0c2e4b9a8f4e7d",
    "created_at": "2026-11-29T18:02:11Z", "started_at": "2026-11-29T18:02:12Z", "finished_at": "2026-11-29T18:02:31Z",
    "result": {"model": {"name": "reference_hutissue", "version": "1", "sha256": SHA},
               "structures": [{"label": 1, "name": "lung", "voxels": 1203344, "volume_ml": 1466.2}]},
    "error": None,
    "links": {"self": f"/v1/jobs/{JOB_ID}", "artifacts": f"/v1/jobs/{JOB_ID}/artifacts",
              "mask.nii.gz": f"/v1/jobs/{JOB_ID}/artifacts/mask.nii.gz",
              "summary.json": f"/v1/jobs/{JOB_ID}/artifacts/summary.json",
              "preview.png": f"/v1/jobs/{JOB_ID}/artifacts/preview.png"},
}


class JobPublic(BaseModel):
    model_config = _example(_JOB_EXAMPLE)

    id: str
    kind: str = Field(description="segmentation, localization, medlsam, valuation, …")
    model: str = Field(description="the served model the job runs")
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str = Field(description="what the worker is doing now")
    progress: float = Field(ge=0, le=1)
    priority: int = Field(ge=0, le=9, description="0 (background) … 9 (most urgent)")
    idempotency_key: str | None = Field(None, description="the client's Idempotency-Key, if it sent one")
    request_id: str | None = Field(None, description="X-Request-ID of the request that created the job")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    result: dict[str, Any] | None = Field(None, description="summary, including the model name/version/sha256")
    error: dict[str, Any] | None = Field(None, description="`type` and `detail` when the job failed")
    links: dict[str, str] = Field(default_factory=dict, description="self, artifacts, and one link per result file")

    @classmethod
    def from_job(cls, job: Job, artifacts: list[str]) -> JobPublic:
        links = {"self": f"/v1/jobs/{job.id}", "artifacts": f"/v1/jobs/{job.id}/artifacts"}
        links |= {name: f"/v1/jobs/{job.id}/artifacts/{name}" for name in artifacts if not name.startswith("input")}
        client_key = job.idempotency_key.split(":", 1)[1] if job.idempotency_key else None
        return cls(
            id=job.id, kind=job.kind, model=job.model, state=job.state, stage=job.stage, progress=job.progress,  # type: ignore[arg-type]
            priority=job.priority, idempotency_key=client_key, request_id=job.request_id,
            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
            result=job.result, error=job.error, links=links,
        )


class JobsPublic(BaseModel):
    model_config = _example({"data": [_JOB_EXAMPLE], "count": 1})

    data: list[JobPublic]
    count: int = Field(description="jobs matching the filter (all pages)")


class ArtifactPublic(BaseModel):
    model_config = _example({"name": "mask.nii.gz", "size_bytes": 48213, "media_type": "application/gzip",
                             "href": f"/v1/jobs/{JOB_ID}/artifacts/mask.nii.gz"})

    name: str
    size_bytes: int
    media_type: str
    href: str


class ArtifactsPublic(BaseModel):
    model_config = _example({"data": [{"name": "summary.json", "size_bytes": 912, "media_type": "application/json",
                                       "href": f"/v1/jobs/{JOB_ID}/artifacts/summary.json"}]})

    data: list[ArtifactPublic]


# ---- models -------------------------------------------------------------------------------------


class TensorSpec(BaseModel):
    name: str = Field(examples=["image"])
    dtype: str = Field(examples=["float32"])
    shape: list[int] = Field(description="-1 marks a dynamic axis; the first axis is the batch",
                             examples=[[-1, 1, -1, -1, -1]])


class ModelPublic(BaseModel):
    model_config = _example({
        "name": "reference_hutissue", "version": 1, "sha256": SHA, "ready": True,
        "description": "CT tissue classes from Hounsfield units",
        "inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, -1, -1, -1]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 5, -1, -1, -1]}],
        "parity": {"max_abs": 7.6e-06, "ok": True}, "validation_metrics": {},
        "preprocessing": {"classes": ["air", "lung", "fat", "soft_tissue", "bone"], "patch_size": [64, 128, 128]},
    })

    name: str
    version: int
    sha256: str = Field(description="sha256 of the served model file")
    ready: bool | None = Field(None, description="Triton reports this version READY; null when Triton is unreachable")
    description: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: dict[str, Any] = Field(description="ONNX Runtime vs PyTorch check at export")
    validation_metrics: dict[str, Any]
    preprocessing: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_manifest(cls, name: str, m: dict[str, Any], ready: bool | None) -> ModelPublic:
        return cls(name=name, version=m["version"], sha256=m["sha256"], ready=ready,
                   description=m.get("description", ""), inputs=m["inputs"], outputs=m["outputs"],
                   parity=m.get("parity", {}), validation_metrics=m.get("validation_metrics", {}),
                   preprocessing=m.get("preprocessing", {}))


class ModelsPublic(BaseModel):
    data: list[ModelPublic]


Datatype = Literal["FP32", "FP16", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "BOOL"]


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64, examples=["image"])
    shape: list[int] = Field(min_length=1, max_length=8, description="including the batch axis",
                             examples=[[1, 1, 2, 2, 2]])
    datatype: Datatype = Field("FP32", description="KServe v2 datatype")
    data: list[float] = Field(description="values in row-major (C) order, flattened",
                              examples=[[-1000, -800, -100, 40, 40, 300, 700, 1200]])


class TensorOut(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    """KServe v2-style JSON inference request (for small tensors; volumes go through jobs)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "inputs": [{"name": "image", "shape": [1, 1, 2, 2, 2], "datatype": "FP32",
                    "data": [-1000, -800, -100, 40, 40, 300, 700, 1200]}],
        "outputs": ["logits"],
    }]})

    inputs: list[TensorIn] = Field(min_length=1, max_length=8)
    outputs: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=8, description="output names; default: all")


class InferResponse(BaseModel):
    model_config = _example({
        "model_name": "reference_hutissue", "model_version": "1", "model_sha256": SHA,
        "outputs": [{"name": "logits", "shape": [1, 5, 1, 1, 1], "datatype": "FP32",
                     "data": [0.0, 0.0, 0.0, 1.0, 0.0]}],
    })

    model_name: str
    model_version: str
    model_sha256: str
    outputs: list[TensorOut]


# ---- keys and audit -----------------------------------------------------------------------------


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"name": "pacs-router", "scopes": ["segmentation", "jobs"]},
        {"name": "prometheus", "scopes": ["metrics"], "rate_per_s": 0},
    ]})

    name: str = Field(min_length=1, max_length=64)
    scopes: list[str] = Field(min_length=1, max_length=16, description="segmentation, localization, report, "
                              "dialogue, valuation, jobs, models, metrics, admin")
    rate_per_s: float | None = Field(None, ge=0, le=100_000, description="null: gateway default; 0: unlimited")
    burst: int | None = Field(None, ge=1, le=1_000_000)


_KEY_EXAMPLE = {"id": "3f9c2a1b7d6e5f40", "name": "pacs-router", "prefix": "msk_Q2x9aB",
                "scopes": ["jobs", "segmentation"], "rate_per_s": None, "burst": None,
                "created_at": "2026-11-29T18:00:00Z", "revoked_at": None}


class KeyPublic(BaseModel):
    model_config = _example(_KEY_EXAMPLE)

    id: str
    name: str
    prefix: str = Field(description="first characters of the key, to tell keys apart")
    scopes: list[str]
    rate_per_s: float | None
    burst: int | None
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None

    @classmethod
    def from_record(cls, r: ApiKey) -> KeyPublic:
        return cls(id=r.id, name=r.name, prefix=r.prefix, scopes=r.scopes, rate_per_s=r.rate_per_s,
                   burst=r.burst, created_at=r.created_at, revoked_at=r.revoked_at)


class KeyCreated(KeyPublic):
    model_config = _example(_KEY_EXAMPLE | {"key": "msk_Q2x9aB…(43 characters)"})

    key: str = Field(description="the API key; shown this once, only its sha256 is stored")


class KeysPublic(BaseModel):
    data: list[KeyPublic]


class AuditPublic(BaseModel):
    model_config = _example({
        "id": 812, "at": "2026-11-29T18:02:11Z", "request_id": "5d0c2e4b9a8f4e7d", "api_key_id": "3f9c2a1b7d6e5f40",
        "method": "POST", "route": "/v1/segmentation/jobs", "status": 202, "outcome": "ok", "duration_ms": 41.2,
        "model": "reference_hutissue", "model_version": "1", "model_sha256": SHA, "input_sha256": SHA, "job_id": JOB_ID,
    })

    id: int
    at: UtcDatetime
    request_id: str
    api_key_id: str | None
    method: str
    route: str
    status: int
    outcome: str
    duration_ms: float
    model: str | None
    model_version: str | None
    model_sha256: str | None
    input_sha256: str | None
    job_id: str | None

    @classmethod
    def from_record(cls, r: AuditRecord) -> AuditPublic:
        return cls.model_validate(r, from_attributes=True)


class AuditsPublic(BaseModel):
    data: list[AuditPublic]


# ---- localization -------------------------------------------------------------------------------


class TemplatePublic(BaseModel):
    model_config = _example({
        "id": "6a1d…", "name": "liver-5shot-01", "model": "localization_medlam", "model_version": "1",
        "model_sha256": SHA, "created_at": "2026-11-29T18:00:00Z",
        "params": {"structures": {"liver": [[120, 88, 30], [210, 140, 31], [160, 60, 44], [170, 190, 40],
                                             [150, 120, 12], [165, 125, 71]]}},
    })

    id: str
    name: str
    model: str
    model_version: str | None
    model_sha256: str | None
    created_at: UtcDatetime
    params: dict[str, Any]

    @classmethod
    def from_record(cls, t: Template) -> TemplatePublic:
        return cls(id=t.id, name=t.name, model=t.model, model_version=t.model_version, model_sha256=t.model_sha256,
                   created_at=t.created_at, params=t.params)


class TemplatesPublic(BaseModel):
    data: list[TemplatePublic]


# ---- health -------------------------------------------------------------------------------------


class Liveness(BaseModel):
    model_config = _example({"status": "ok"})

    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = _example({"status": "ready",
                             "checks": {"triton": True, "broker": True, "database": True, "models": True}})

    status: Literal["ready"]
    checks: dict[str, bool]
