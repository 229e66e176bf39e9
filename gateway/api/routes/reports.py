"""Radiology report generation (KiUT): a chest X-ray in, a report out, synchronously.

Needs the model ``report_generate`` (python backend over ``report_encoder`` + ``report_decoder``);
until it is built the route answers 503 naming it. The upload (PNG, JPEG or DICOM; MONOCHROME1 is
inverted) is decoded and normalised here (services/report/images.py, NumPy/Pillow/pydicom only), so
one gRPC call to Triton returns the text and the finding probabilities.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from core.keys import Scope
from core.settings import settings
from gateway.api.forms import form_body, read_form
from gateway.audit import audit_info
from gateway.auth import require
from gateway.capabilities import REPORT, require_available
from gateway.catalog import manifest_of, manifests
from gateway.deps import Triton
from gateway.problems import Problem, problem_responses
from gateway.schemas import SHA
from gateway.triton_client import TritonRejected, TritonTimeout, TritonUnavailable
from gateway.uploads import unsupported

router = APIRouter(
    prefix="/v1/reports", tags=["reports"], dependencies=[require(Scope.REPORT)],
    responses=problem_responses(401, 403, 429),
)

FINDING_NAMES = ("normal", "cardiomegaly", "pleural_effusion", "nodule_mass", "opacity_consolidation",
                 "atelectasis", "pneumothorax", "emphysema", "fracture", "support_devices")
MAX_REPORT_UPLOAD_MB = 64


class ReportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    indication: str | None = Field(None, max_length=500, description="clinical question, without identifiers",
                                   examples=["cough and fever for 3 days"])
    view: str | None = Field(None, pattern="^(PA|AP|LATERAL)$", examples=["PA"])
    beam_size: int = Field(3, ge=1, le=5, description="1: greedy decoding; 2–5: beam search")


class Finding(BaseModel):
    name: str = Field(examples=["cardiomegaly"])
    probability: float = Field(ge=0, le=1, examples=[0.12])


class ReportPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "text": "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
        "findings": [{"name": "cardiomegaly", "probability": 0.12}, {"name": "pleural_effusion", "probability": 0.04}],
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


def _decode(data: bytes) -> tuple[Any, dict[str, str]]:
    from services.report.images import ImageError, preprocess, read_image

    try:
        image, facts = read_image(data)
        return preprocess(image), facts
    except ImageError as error:
        if error.unsupported:
            raise unsupported(f"{error}; send a PNG, JPEG or single-frame DICOM radiograph") from error
        if "larger than" in str(error):
            raise Problem(413, "Image too large", str(error), kind="payload-too-large") from error
        raise Problem(422, "Unreadable image", str(error), kind="corrupt-image") from error


def _provenance(name: str, version: str | None = None) -> dict[str, str]:
    manifest = manifest_of(name, version) or {}
    return {"name": name, "version": str(manifest.get("version", version or "")), "sha256": manifest.get("sha256", "")}


@router.post(
    "", summary="Write a report for a chest X-ray (PNG, JPEG or DICOM; needs report_generate)",
    dependencies=[require_available(REPORT)],
    openapi_extra=form_body(ReportCreate, "the X-ray: PNG, JPEG or a DICOM file",
                            {"file": "(chest_pa.png)", "indication": "cough and fever for 3 days", "view": "PA",
                             "beam_size": 3}),
    responses=problem_responses(400, 413, 415, 422, 503, 504,
                                d503="report_generate is not built, or Triton is down (retry after `Retry-After`)"),
)
async def create_report(request: Request, triton: Triton) -> ReportPublic:
    import numpy as np

    from services.report.fhir import diagnostic_report
    from services.report.reports import pretty

    max_bytes = min(settings.max_upload_mb, MAX_REPORT_UPLOAD_MB) << 20
    upload, form, raw = await read_form(request, ReportCreate, max_bytes)
    try:
        assert upload is not None  # read_form requires the file part
        data = await upload.read()
    finally:
        await raw.close()
    if not data:
        raise Problem(422, "Unreadable image", "the file part is empty", kind="corrupt-image")
    image, facts = await run_in_threadpool(_decode, data)
    audit = audit_info(request)
    try:
        result = await triton.infer(
            REPORT.model or "report_generate",
            {"image": image.astype(np.float32), "beam_size": np.array([form.beam_size], dtype=np.int32)},
            ["text", "finding_probs"], request_id=getattr(request.state, "request_id", ""))
    except TritonUnavailable as error:
        raise Problem(503, "Triton unavailable", f"Triton is not answering; retry in {settings.retry_after_s} s",
                      kind="triton-unavailable", headers={"Retry-After": str(settings.retry_after_s)}) from error
    except TritonTimeout as error:
        raise Problem(504, "Triton timed out", str(error), kind="upstream-timeout") from error
    except TritonRejected as error:
        raise Problem(422, "Triton rejected the request", str(error).strip().splitlines()[0][:300] or "rejected",
                      kind="inference-rejected") from error
    text_raw, probs = result.outputs.get("text"), result.outputs.get("finding_probs")
    if text_raw is None or probs is None or text_raw.size == 0 or probs.size != len(FINDING_NAMES):
        raise Problem(502, "Empty output", "report_generate returned no text or findings", kind="empty-output")
    value = text_raw.reshape(-1)[0]
    text = pretty(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    model = _provenance("report_generate", result.version)
    audit.model_used(model["name"], model["version"], model["sha256"] or None)
    findings = {n: float(np.clip(p, 0.0, 1.0)) for n, p in zip(FINDING_NAMES, probs.reshape(-1), strict=True)}
    served = manifests()
    parts = {name: _provenance(name) for name in ("report_encoder", "report_decoder") if name in served}
    fhir = await run_in_threadpool(diagnostic_report, text, findings, model, form.indication, form.view)
    return ReportPublic(text=text, findings=[Finding(name=n, probability=p) for n, p in findings.items()],
                        model=model, models=parts, image=facts, fhir=fhir)
