"""Public API schemas, apart from persistence models; each family named ``XCreate``/``XPublic``/``XsPublic``.

``XCreate`` is what a client sends (a JSON body, or the fields of an upload form: ``gateway/api/forms.py``
reads and documents those), ``XPublic`` what it gets back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.db import ApiKey, AuditRecord, Job, Template
from services.dialogue.safety import NOTICE
from services.umcam.slice_labels import parse_slice_labels

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
        "capabilities": ["segmentation"],
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
    capabilities: list[str] = Field(default_factory=list, description="the capabilities that call this model "
                                    "(core/capabilities.py); empty for a model served for direct inference only")

    @classmethod
    def from_manifest(cls, name: str, m: dict[str, Any], ready: bool | None, capabilities: list[str]) -> ModelPublic:
        return cls(name=name, version=m["version"], sha256=m["sha256"], ready=ready,
                   description=m.get("description", ""), inputs=m["inputs"], outputs=m["outputs"],
                   parity=m.get("parity", {}), validation_metrics=m.get("validation_metrics", {}),
                   preprocessing=m.get("preprocessing", {}), capabilities=capabilities)


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


class JobCreate(BaseModel):
    """The fields every job form has besides its own."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(5, ge=0, le=9, description="0 (background) … 9 (most urgent)")
    transaction_id: str | None = Field(None, max_length=100, description="same role as the Idempotency-Key header")


# ---- segmentation -------------------------------------------------------------------------------


_UID = r"^[0-9][0-9.]*$"


class DicomwebSource(BaseModel):
    """A series on a configured DICOMweb server, instead of an upload (docs/pacs.md)."""

    model_config = ConfigDict(extra="forbid")

    dicomweb: str = Field(min_length=1, max_length=64, description="a server name in MEDSTACK_DICOMWEB_SERVERS",
                          examples=["pacs"])
    study_uid: str = Field(max_length=64, pattern=_UID, examples=["1.2.826.0.1.3680043.8.498.1"])
    series_uid: str = Field(max_length=64, pattern=_UID, examples=["1.2.826.0.1.3680043.8.498.2"])


class SegmentationJobCreate(JobCreate):
    """Form fields of a segmentation job; query parameters when the volume is the raw body."""

    model: str | None = Field(None, max_length=64, description="served segmentation model; default: the best")
    series_uid: str | None = Field(None, max_length=64, pattern=r"^[0-9][0-9.]*$",
                                   description="for a zip holding several series: the SeriesInstanceUID to segment")
    largest_component: bool = Field(False, description="keep only the largest connected component of each structure")
    allow_modality_mismatch: bool = Field(False, description="research override: run the model on an input that is "
                                          "not its modality (a DICOM series of another Modality, or a file "
                                          "without air in HU for a CT model); the result records it")
    destination: str | None = Field(None, min_length=1, max_length=64, description="also C-STORE the DICOM SEG to "
                                    "this application entity (a name in MEDSTACK_DICOM_DESTINATIONS)")


class SegmentationSourceJobCreate(SegmentationJobCreate):
    """A segmentation job as a JSON body: the series is fetched from a DICOMweb server, not uploaded."""

    model_config = _example({"source": {"dicomweb": "pacs", "study_uid": "1.2.826.0.1.3680043.8.498.1",
                                        "series_uid": "1.2.826.0.1.3680043.8.498.2"}, "priority": 5})

    source: DicomwebSource = Field(description="fetch this series by WADO-RS; the DICOM SEG is stored back by "
                                   "STOW-RS when the server's configuration says so (store_results)")

    @model_validator(mode="after")
    def _one_series(self) -> SegmentationSourceJobCreate:
        if self.series_uid is not None and self.series_uid != self.source.series_uid:
            raise ValueError("series_uid differs from source.series_uid; name the series once, in source")
        return self


# ---- localization -------------------------------------------------------------------------------


class TemplateCreate(BaseModel):
    """Form fields of a template; ``points`` is a JSON object: structure → six extreme points (voxel x, y, z)
    in the order left, right, anterior, posterior, inferior, superior."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, examples=["liver-template-01"])
    points: str = Field(min_length=2, max_length=100_000, description="JSON: {structure: [[x, y, z] × 6]}",
                        examples=['{"liver": [[120, 88, 30], [210, 140, 31], [160, 60, 44], [170, 190, 40], '
                                  '[150, 120, 12], [165, 125, 71]]}'])

    @field_validator("points")
    @classmethod
    def _six_points_each(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError("points must be JSON") from error
        if not isinstance(parsed, dict) or not parsed:
            raise ValueError("points must map structure names to six [x, y, z] points")
        for structure, pts in parsed.items():
            ok = isinstance(pts, list) and len(pts) == 6 and all(
                isinstance(p, list) and len(p) == 3 and all(isinstance(c, int | float) for c in p) for p in pts)
            if not ok:
                raise ValueError(f"structure {structure!r} needs six [x, y, z] points")
        return value


class LocalizationJobCreate(JobCreate):
    structures: str = Field(min_length=1, max_length=2000, description="comma-separated structure names",
                            examples=["liver,spleen,left_kidney"])
    template_ids: str = Field(min_length=1, max_length=4000, description="comma-separated template ids (1–5 shot)",
                              examples=["6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"])
    allow_modality_mismatch: bool = Field(False, description="research override: run the model on an input that is "
                                          "not its modality (a DICOM series of another Modality, or a file "
                                          "without air in HU for a CT model); the result records it")


class MedlsamJobCreate(LocalizationJobCreate):
    output_dicom_seg: bool = Field(False, description="also write a DICOM SEG (input must be a DICOM series)")


class MedlsamSourceJobCreate(MedlsamJobCreate):
    """A MedLSAM job as a JSON body: the series is fetched from a DICOMweb server, not uploaded; the DICOM SEG
    is always written (``output_dicom_seg`` is implied)."""

    model_config = _example({"source": {"dicomweb": "pacs", "study_uid": "1.2.826.0.1.3680043.8.498.1",
                                        "series_uid": "1.2.826.0.1.3680043.8.498.2"},
                             "structures": "liver,spleen", "template_ids": "6a1d2c3b-0e9f-4a8b-9c7d-5e4f3a2b1c0d"})

    source: DicomwebSource = Field(description="fetch this series by WADO-RS; the DICOM SEG is stored back by "
                                   "STOW-RS when the server's configuration says so (store_results)")



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


# ---- UM-CAM (weakly supervised brain extraction, issue #20) -------------------------------------

_MR_OVERRIDE = ("research override: run the model on an input that is not a T1 MR (a DICOM series of another "
                "Modality, or a file with a CT's air below -200); the result records it")


class UmcamJobCreate(JobCreate):
    """Form fields of a brain-extraction job (the U-Net trained on UM-CAM + GSE pseudo-labels)."""

    series_uid: str | None = Field(None, max_length=64, pattern=r"^[0-9][0-9.]*$",
                                   description="for a zip holding several series: the SeriesInstanceUID to segment")
    largest_component: bool = Field(True, description="keep only the largest 3D connected component of the brain "
                                    "mask (drops islands in the scalp or neck)")
    allow_modality_mismatch: bool = Field(False, description=_MR_OVERRIDE)


class UmcamPseudoLabelsCreate(JobCreate):
    """Form fields of a pseudo-label job: the volume is the file part, its slice-level labels a field."""

    slice_labels: str = Field(min_length=3, max_length=40_000, examples=["[0, 0, 1, 1, 1, 0]"], description=(
        "JSON list of 0/1, one per slice along the volume's stored slice axis (the third voxel axis of a "
        "NIfTI/NRRD/MetaImage file; a DICOM series' slices in order along their normal), first entry = first "
        "slice: 1 = the brain is in that slice. Only slices labelled 1 get UM-CAM seeds; at least one must be 1"))
    series_uid: str | None = Field(None, max_length=64, pattern=r"^[0-9][0-9.]*$",
                                   description="for a zip holding several series: the SeriesInstanceUID to use")
    allow_modality_mismatch: bool = Field(False, description=_MR_OVERRIDE)

    @field_validator("slice_labels")
    @classmethod
    def _zeros_and_ones(cls, value: str) -> str:
        parse_slice_labels(value)
        return value


# ---- health -------------------------------------------------------------------------------------


class Liveness(BaseModel):
    model_config = _example({"status": "ok"})

    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = _example({"status": "ready",
                             "checks": {"triton": True, "broker": True, "database": True, "models": True},
                             "capabilities": {"segmentation": True, "report": False, "valuation": True}})

    status: Literal["ready"]
    checks: dict[str, bool]
    capabilities: dict[str, bool] = Field(default_factory=dict, description="per capability of the registry: its "
                                          "models are built and its worker task installed (informational: a "
                                          "capability that cannot run does not make the gateway unready)")


# ---- reports ------------------------------------------------------------------------------------


class ReportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    indication: str | None = Field(None, max_length=500, description="clinical question, without identifiers",
                                   examples=["cough and fever for 3 days"])
    view: str | None = Field(None, pattern="^(PA|AP|LATERAL)$", examples=["PA"],
                             description="LATERAL is declined (422 not-chest-radiograph) unless allow_non_chest")
    beam_size: int = Field(3, ge=1, le=5, description="1: greedy decoding; 2–5: beam search")
    allow_non_chest: bool = Field(False, description="research override: write a report even when the DICOM header "
                                  "(BodyPartExamined, ViewPosition, Modality) or `view` says the image is not a "
                                  "frontal chest radiograph; recorded in `input_check.override`")


class ReportSourceCreate(ReportCreate):
    """A report request as a JSON body: the radiograph is fetched from a DICOMweb server, not uploaded."""

    model_config = _example({"source": {"dicomweb": "pacs", "study_uid": "1.2.826.0.1.3680043.8.498.1",
                                        "series_uid": "1.2.826.0.1.3680043.8.498.2"}, "beam_size": 3})

    source: DicomwebSource = Field(description="fetch this single-image series by WADO-RS; the report is stored "
                                   "back as a DICOM Comprehensive SR by STOW-RS when the server's configuration "
                                   "says so (store_results)")


class Finding(BaseModel):
    name: str = Field(examples=["cardiomegaly"])
    probability: float = Field(ge=0, le=1, examples=[0.12])
    threshold: float | None = Field(None, ge=0, le=1, examples=[0.52],
                                    description="decision threshold calibrated on the validation split")
    present: bool | None = Field(None, examples=[False], description="probability ≥ threshold; null where the "
                                 "finding head is not validated (validation AUROC < 0.7: nodule/mass, fracture)")


class Consistency(BaseModel):
    ok: bool = Field(description="the text mentions every present finding, denies none, and names no absent one")
    missing: list[str] = Field(default_factory=list, description="present findings the text does not mention")
    contradicted: list[str] = Field(default_factory=list,
                                    description="present findings the text denies (\"no pleural effusion\", "
                                                "\"the lungs are clear\", \"the heart is normal in size\", …)")
    unsupported: list[str] = Field(default_factory=list,
                                   description="findings the text names while the finding head calls them absent")
    unchecked: list[str] = Field(default_factory=list, description="findings with no present/absent call")
    evidence: dict[str, str] = Field(default_factory=dict, description="finding → the sentence that denies or names it")
    labeller: str = Field("", description="what reads the text (the rule labeller clinical efficacy is scored with)")


class InputCheck(BaseModel):
    chest_radiograph: bool | None = Field(None, description="the DICOM header's verdict; null for PNG/JPEG")
    body_part: str | None = Field(None, description="BodyPartExamined")
    view_position: str | None = Field(None, description="ViewPosition")
    modality: str | None = None
    reasons: list[str] = Field(default_factory=list, description="why the header says it is no frontal chest film")
    override: bool = Field(False, description="allow_non_chest was set and a report was written anyway")
    in_distribution: bool | None = Field(None, description="the image is like the training images (its layout "
                                         "distance is under the 99th percentile of validation images)")
    ood_score: float | None = None
    ood_threshold: float | None = None


class ReportPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "text": "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
        "findings": [{"name": "cardiomegaly", "probability": 0.12, "threshold": 0.52, "present": False},
                     {"name": "pleural_effusion", "probability": 0.94, "threshold": 0.415, "present": True}],
        "consistency": {"ok": False, "missing": ["pleural_effusion"], "contradicted": [], "unsupported": [],
                        "unchecked": ["nodule_mass", "fracture"], "evidence": {}},
        "in_distribution": True,
        "warnings": ["the text does not mention pleural effusion (p 0.94 ≥ 0.41)"],
        "model": {"name": "report_generate", "version": "1", "sha256": SHA},
        "fhir": {"resourceType": "DiagnosticReport", "status": "preliminary"},
    }]})

    text: str
    findings: list[Finding]
    model: dict[str, str] = Field(description="name, version and sha256 of the model that wrote the report")
    models: dict[str, dict[str, str]] = Field(default_factory=dict,
                                              description="version and sha256 of the encoder and decoder it called")
    image: dict[str, str] = Field(default_factory=dict, description="what was read from the upload")
    fhir: dict[str, Any] = Field(description="the same report as a FHIR R4 DiagnosticReport")
    consistency: Consistency | None = Field(None, description="does the text say what the finding head sees")
    in_distribution: bool | None = Field(None, description="false: the image is unlike the training images "
                                         "(rendered frontal chest radiographs); read the report with that in mind")
    input_check: InputCheck | None = None
    warnings: list[str] = Field(default_factory=list, description="plain sentences: inconsistencies, out of "
                                "distribution, research override")
    deliveries: list[dict[str, Any]] = Field(default_factory=list, description="for a `source` request: where the "
                                             "DICOM SR went, e.g. {to: pacs, protocol: stow-rs, "
                                             "sop_instance_uids: [...]}")


# ---- dialogue -----------------------------------------------------------------------------------


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"language": "en"}]})

    language: Literal["en"] = Field("en", description="the consultation model speaks English only")
    context: str | None = Field(None, max_length=2000, description="optional setting, e.g. 'triage'; no identifiers")


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"content": "I have had a blocked nose and pain around my cheeks for three days.", "stream": False}]})

    content: str = Field(min_length=1, max_length=4000)
    stream: bool = Field(False, description="true: answer as Server-Sent Events (`meta`, one `token` event per "
                         "token piece, then `message` with the stored answer)")


class MessagePublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "role": "assistant", "created_at": "2026-11-29T18:00:03Z",
        "content": "These symptoms may fit acute sinusitis, but a doctor needs to examine you to be sure.",
        "notice": NOTICE, "red_flags": [],
        "instruction": {"type": "diagnosis", "action": "inform_diagnosis", "slots": {"condition": ["acute sinusitis"]}},
        "model": {"name": "dialogue_generate", "version": "1", "sha256": SHA},
    }]})

    role: Literal["user", "assistant"]
    content: str
    created_at: datetime
    notice: str | None = Field(None, description="assistant messages: not a diagnosis")
    red_flags: list[str] = Field(default_factory=list)
    instruction: dict[str, Any] | None = Field(None, description="the predicted dialogue type, action and slots")
    model: dict[str, str] | None = None


class SessionPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "c2f1e0d9b8a7", "language": "en", "created_at": "2026-11-29T18:00:00Z", "messages": []}]})

    id: str
    language: str
    created_at: datetime
    messages: list[MessagePublic]

    @classmethod
    def from_session(cls, session: dict[str, Any]) -> SessionPublic:
        return cls(id=session["id"], language=session["language"], created_at=session["created_at"],
                   messages=[MessagePublic(**m) for m in session["messages"]])


# ---- valuation ----------------------------------------------------------------------------------


class ValuationJobCreate(JobCreate):
    """Form fields; those left out take the worker's defaults (docs/valuation.md)."""

    dataset: Literal["upload", "organ_patches", "digits"] = Field(
        "upload", description="'upload': the file part; otherwise a built-in set (then send no file)")
    task: Literal["classification"] = "classification"
    model_family: Literal["small_cnn", "resnet18_w"] = "small_cnn"
    width: int | None = Field(None, ge=2, le=64, description="channels of the first block (default 8)")
    epochs: int | None = Field(None, ge=1, le=200, description="default 12")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    seeds: int | None = Field(None, ge=1, le=10, description="repeats with seed, seed+1, … (default 3)")
    method: Literal["data_si", "gradnorm", "both"] | None = None
    optimizer: Literal["sgd", "adam"] | None = None
    lr: float | None = Field(None, gt=0, le=10)
    batch_size: int | None = Field(None, ge=8, le=1024)
    test_fraction: float | None = Field(None, ge=0.05, le=0.5)
    threads: int | None = Field(None, ge=1, le=16, description="torch CPU threads in the worker")
