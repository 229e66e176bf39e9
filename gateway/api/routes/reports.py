"""Radiology report generation (KiUT): a chest X-ray in, a report out, synchronously.

Needs the model ``report_generate``; until it is built the route answers 503 naming it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.forms import form_body
from gateway.auth import require
from gateway.capabilities import REPORT, not_wired, require_available
from gateway.problems import problem_responses
from gateway.schemas import SHA
from medstack.keys import Scope

router = APIRouter(
    prefix="/v1/reports", tags=["reports"], dependencies=[require(Scope.REPORT)],
    responses=problem_responses(401, 403, 429),
)


class ReportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    indication: str | None = Field(None, max_length=500, description="clinical question, without identifiers",
                                   examples=["cough and fever for 3 days"])
    view: str | None = Field(None, pattern="^(PA|AP|LATERAL)$", examples=["PA"])


class Finding(BaseModel):
    name: str = Field(examples=["cardiomegaly"])
    probability: float = Field(ge=0, le=1, examples=[0.12])


class ReportPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "text": "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
        "findings": [{"name": "cardiomegaly", "probability": 0.12}, {"name": "effusion", "probability": 0.04}],
        "model": {"name": "report_generate", "version": "1", "sha256": SHA},
        "fhir": {"resourceType": "DiagnosticReport", "status": "preliminary"},
    }]})

    text: str
    findings: list[Finding]
    model: dict[str, str] = Field(description="name, version and sha256 of the model that wrote the report")
    fhir: dict[str, Any] = Field(description="the same report as a FHIR R4 DiagnosticReport")


@router.post(
    "", summary="Write a report for a chest X-ray (PNG, JPEG or DICOM; needs report_generate)",
    dependencies=[require_available(REPORT)],
    openapi_extra=form_body(ReportCreate, "the X-ray: PNG, JPEG or a DICOM file",
                            {"file": "(chest_pa.png)", "indication": "cough and fever for 3 days", "view": "PA"}),
    responses=problem_responses(400, 413, 415, 422, 503),
)
async def create_report() -> ReportPublic:
    raise not_wired(REPORT)
