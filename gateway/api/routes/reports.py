"""Radiology report generation (KiUT): a chest X-ray in, a report out, synchronously.

Needs the model ``report_generate`` (python backend over ``report_encoder`` + ``report_decoder``);
until it is built the route answers 503 naming it. The upload (PNG, JPEG or DICOM; MONOCHROME1 is
inverted) is decoded and normalised here (services/report/images.py, NumPy/Pillow/pydicom only), so
one gRPC call to Triton returns the text and the finding probabilities.

Before Triton is called, a DICOM whose header says it is not a frontal chest radiograph (BodyPartExamined,
ViewPosition, Modality), or a request whose ``view`` is LATERAL, is declined with 422 ``not-chest-radiograph``
unless ``allow_non_chest`` is set (services/report/ood.py). Every answer carries the structured findings with
their calibrated thresholds, the text–findings consistency block and the image's in-distribution mark
(services/report/serving.report_parts); the route only wires them.

A JSON body naming a single-image series on a configured DICOMweb server (``source``) replaces the upload: the
gateway retrieves the instance by WADO-RS (the capability is synchronous, so here and not in a worker), the same
checks apply, and the report goes back to that server as a DICOM Comprehensive SR by STOW-RS
(services/common/dicom_sr.py); ``deliveries`` says where (docs/pacs.md).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from core.capabilities import REPORT
from core.settings import settings
from gateway.api.forms import form_body, read_upload
from gateway.audit import audit_info
from gateway.capabilities import capability_router, require_available
from gateway.catalog import manifests, provenance
from gateway.deps import Triton
from gateway.pacs_sources import check_configured, is_json, read_json
from gateway.problems import Problem, problem_responses
from gateway.schemas import DicomwebSource, ReportCreate, ReportPublic, ReportSourceCreate
from gateway.triton_client import InferenceResult, TritonError, triton_problem
from gateway.uploads import unsupported

router = capability_router(REPORT, "reports")

FINDING_NAMES = ("normal", "cardiomegaly", "pleural_effusion", "nodule_mass", "opacity_consolidation",
                 "atelectasis", "pneumothorax", "emphysema", "fracture", "support_devices")
MAX_REPORT_UPLOAD_MB = 64
PARTS = ("report_encoder", "report_decoder")


def _decode(data: bytes) -> tuple[Any, dict[str, str]]:
    from services.report.images import ImageError, preprocess, read_image

    if not data:
        raise Problem(422, "Unreadable image", "the file part is empty", kind="corrupt-image")
    try:
        image, facts = read_image(data)
        return preprocess(image), facts
    except ImageError as error:
        if error.unsupported:
            raise unsupported(f"{error}; send a PNG, JPEG or single-frame DICOM radiograph") from error
        if "larger than" in str(error):
            raise Problem(413, "Image too large", str(error), kind="payload-too-large") from error
        raise Problem(422, "Unreadable image", str(error), kind="corrupt-image") from error


def _scope(data: bytes, facts: dict[str, str], form: ReportCreate) -> Any:
    """What the header and ``view`` say; 422 ``not-chest-radiograph`` unless the research override is set."""
    from services.report.ood import input_scope, scope_detail

    scope = input_scope(data, facts.get("format", ""), form.view)
    if scope.reasons and not form.allow_non_chest:
        raise Problem(422, "Not a chest radiograph", scope_detail(scope.reasons), kind="not-chest-radiograph",
                      reasons=list(scope.reasons), override="allow_non_chest=true")
    return scope


def _pacs_problem(error: Any) -> Problem:
    """A failed exchange with the PACS: the series is not there (422) or the server failed us (502)."""
    status = 422 if error.kind in ("source-not-found", "not-single-image") else 502
    return Problem(status, "PACS exchange failed", str(error), kind=error.kind)


def _fetch(source: DicomwebSource) -> tuple[pydicom.Dataset, bytes]:
    """The radiograph a ``source`` names, and its bytes as an upload would have brought them."""
    from services.common.dicomweb import PacsError, fetch_instance

    try:
        dataset = fetch_instance(settings.dicomweb_servers[source.dicomweb], source.study_uid, source.series_uid)
    except PacsError as error:
        raise _pacs_problem(error) from error
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return dataset, buffer.getvalue()


def _store_sr(source: DicomwebSource, dataset: pydicom.Dataset, report: ReportPublic) -> list[dict[str, Any]]:
    """The report as a Comprehensive SR in the source's study, stored back by STOW-RS when the server takes
    results; the findings are the text, the impression the finding head's calls and the warnings."""
    from services.common.dicom_sr import report_sr
    from services.common.dicomweb import PacsError, store_datasets

    server = settings.dicomweb_servers[source.dicomweb]
    if not server.store_results:
        return []
    present = [f.name.replace("_", " ") for f in report.findings if f.present]
    calls = (f"Called present by the finding head (calibrated thresholds): {', '.join(present)}." if present
             else "No finding called present by the finding head.")
    impression = " ".join([calls, *(w[0].upper() + w[1:] + "." for w in report.warnings),
                           "Machine-written, not verified by a radiologist."])
    description = f"MedStack report {report.model['name']} v{report.model['version']} (unverified)"
    sr = report_sr(dataset, report.text, impression, description)
    try:
        return [{"to": source.dicomweb, **store_datasets(server, [sr])}]
    except PacsError as error:
        raise _pacs_problem(error) from error


def _report(result: InferenceResult, form: ReportCreate, facts: dict[str, str], image: Any,
            scope: Any) -> ReportPublic:
    """The answer from ``report_generate``'s outputs: pretty text, findings and checks, provenance and FHIR."""
    from services.report.fhir import diagnostic_report
    from services.report.reports import pretty
    from services.report.serving import report_parts

    text_raw, probs = result.outputs.get("text"), result.outputs.get("finding_probs")
    if text_raw is None or probs is None or text_raw.size == 0 or probs.size != len(FINDING_NAMES):
        raise Problem(502, "Empty output", f"{result.model} returned no text or findings", kind="empty-output")
    value = text_raw.reshape(-1)[0]
    text = pretty(value.decode("utf-8") if isinstance(value, bytes) else str(value))
    findings = {n: float(np.clip(p, 0.0, 1.0)) for n, p in zip(FINDING_NAMES, probs.reshape(-1), strict=True)}
    parts = report_parts(text, findings, image, scope, form.allow_non_chest)
    model = provenance(result.model, result.version)
    served = manifests()
    fhir = diagnostic_report(text, findings, model, form.indication, form.view, calls=parts["findings"],
                             consistency=parts["consistency"], input_check=parts["input_check"])
    return ReportPublic(text=text, model=model, models={name: provenance(name) for name in PARTS if name in served},
                        image=facts, fhir=fhir, **parts)


@router.post(
    "", summary="Write a report for a chest X-ray (PNG, JPEG or DICOM; needs report_generate)",
    dependencies=[require_available(REPORT)],
    openapi_extra=form_body(ReportCreate, "the X-ray: PNG, JPEG or a DICOM file",
                            {"file": "(chest_pa.png)", "indication": "cough and fever for 3 days", "view": "PA",
                             "beam_size": 3}, json_options=ReportSourceCreate),
    responses=problem_responses(400, 413, 415, 422, 502, 503, 504,
                                d503="report_generate is not built, or Triton is down (retry after `Retry-After`)",
                                d422="not-chest-radiograph: the DICOM header or `view` says it is no frontal chest "
                                     "radiograph (send `allow_non_chest=true` to override for research); "
                                     "corrupt-image; validation-error; with `source`: unknown-dicomweb-server, "
                                     "source-not-found, not-single-image",
                                d502="with `source`: source-unavailable (the DICOMweb server did not answer as "
                                     "expected), delivery-failed (it refused the SR)"),
)
async def create_report(request: Request, triton: Triton) -> ReportPublic:
    source, dataset = None, None
    if is_json(request):  # the radiograph is on a DICOMweb server
        source_form = await read_json(request, ReportSourceCreate)
        check_configured(source_form.source, None)
        form, source = source_form, source_form.source
        dataset, data = await run_in_threadpool(_fetch, source)
    else:
        max_bytes = min(settings.max_upload_mb, MAX_REPORT_UPLOAD_MB) << 20
        async with read_upload(request, ReportCreate, max_bytes) as upload:
            form, data = upload.options, await upload.file.read()
    image, facts = await run_in_threadpool(_decode, data)
    scope = await run_in_threadpool(_scope, data, facts, form)
    try:
        result = await triton.infer(
            REPORT.model or "", {"image": image.astype(np.float32), "beam_size": np.array([form.beam_size], np.int32)},
            ["text", "finding_probs"], request_id=getattr(request.state, "request_id", ""))
    except TritonError as error:
        raise triton_problem(error) from error
    report = await run_in_threadpool(_report, result, form, facts, image, scope)
    audit_info(request).model_used(report.model["name"], report.model["version"], report.model["sha256"] or None)
    if source is not None and dataset is not None:
        report.deliveries = await run_in_threadpool(_store_sr, source, dataset, report)
    return report
