"""RFC 7807 problem details: every error the gateway returns is ``application/problem+json``.

Each kind of error has a stable ``type`` URI under ``PROBLEM_BASE`` so clients can branch on it;
``problem_responses(...)`` documents them in OpenAPI with an example each.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_BASE = "https://medstack.dev/problems/"
MEDIA_TYPE = "application/problem+json"

_TYPE_BY_STATUS = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    409: "conflict", 413: "payload-too-large", 415: "unsupported-media-type", 422: "validation-error",
    429: "rate-limited", 500: "internal-error", 503: "service-unavailable", 504: "upstream-timeout",
}


class ProblemDetails(BaseModel):
    """An RFC 7807 problem; some kinds carry extra members (``errors``, ``model``, ``checks``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=[PROBLEM_BASE + "model-missing"])
    title: str = Field(examples=["Model missing"])
    status: int = Field(examples=[503])
    detail: str = Field(examples=["model report_generate is not built (run `medstack export report_generate`)"])
    instance: str | None = Field(None, examples=["/v1/reports"])


class Problem(Exception):
    """Raise from anywhere in a request to answer with a problem body."""

    def __init__(self, status: int, title: str, detail: str, kind: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.kind = kind or _TYPE_BY_STATUS.get(status, "error")
        self.headers, self.extra = headers or {}, extra


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    body = {
        "type": PROBLEM_BASE + problem.kind,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extra,
    }
    return JSONResponse(body, status_code=problem.status, media_type=MEDIA_TYPE, headers=problem.headers)


# ---- OpenAPI documentation of errors ----------------------------------------------------------

_EXAMPLES: dict[int, tuple[str, str, str]] = {
    400: ("bad-request", "Bad request", "the request could not be read"),
    401: ("unauthorized", "Unauthorized", "send an API key as `Authorization: Bearer <key>` or `X-API-Key`"),
    403: ("forbidden", "Forbidden", "this key lacks the scope 'segmentation'"),
    404: ("not-found", "Not found", "no job with id 9b1c…"),
    409: ("idempotency-key-reused", "Idempotency key reused",
          "Idempotency-Key 'ct-123' was used for a different request"),
    413: ("payload-too-large", "Upload too large", "upload exceeds the limit of 512 MiB (MEDSTACK_MAX_UPLOAD_MB)"),
    415: ("unsupported-format", "Unsupported upload", "not a NIfTI, NRRD, MetaImage or DICOM zip (by content)"),
    422: ("validation-error", "Invalid request", "priority: Input should be less than or equal to 9"),
    429: ("rate-limited", "Too many requests", "rate limit of 20 requests/s for this key; retry after 1 s"),
    502: ("source-unavailable", "PACS exchange failed",
          "WADO-RS retrieve: the DICOMweb server did not answer as expected (HTTP 500)"),
    503: ("model-missing", "Model missing",
          "model report_generate is not built (run `medstack export report_generate`)"),
    504: ("upstream-timeout", "Triton timed out", "Triton did not answer within 30 s"),
}
_DESCRIPTIONS = {
    400: "Unreadable request", 401: "Missing or unknown API key", 403: "The key lacks the scope this route needs",
    404: "No such resource (or not visible to this key)", 409: "Conflict", 413: "Body larger than the limit",
    415: "Unsupported content", 422: "Invalid request", 429: "Rate limit exceeded; see `Retry-After`",
    502: "An upstream server (a PACS) did not answer as expected",
    503: "A model, worker task or Triton is unavailable; see `Retry-After` where given",
    504: "Triton did not answer in time",
}


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses, each an ``application/problem+json`` example."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        kind, title, detail = _EXAMPLES[status]
        example = {"type": PROBLEM_BASE + kind, "title": title, "status": status, "detail": detail}
        entry: dict[str, Any] = {
            "description": descriptions.get(f"d{status}", _DESCRIPTIONS[status]),
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}, "example": example}},
        }
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge"}}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
        out[status] = entry
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem_response(request, Problem(422, "Invalid request", detail, errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # FastAPI routes one method per route object: list every method the path has
            headers["Allow"] = ", ".join(_methods_of(app, request.scope))
        return problem_response(request, Problem(exc.status_code, title, str(exc.detail), headers=headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", extra={"route": _route_of(request)})
        # no exception text in the answer: it may carry paths or data; the log has the request id
        return problem_response(request, Problem(500, "Internal error", "unexpected error; see the gateway log"))


def _methods_of(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")
