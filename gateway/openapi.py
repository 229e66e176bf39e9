"""The OpenAPI document: problem details for every error, extra component schemas, auth schemes."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.problems import MEDIA_TYPE, ProblemDetails, problem_responses
from gateway.schemas import InferRequest

EXTRA_SCHEMAS: tuple[type[BaseModel], ...] = (ProblemDetails, InferRequest)

TAGS = [
    {"name": "health", "description": "Probes (no key) and Prometheus metrics"},
    {"name": "models", "description": "What Triton serves; small synchronous inference"},
    {"name": "segmentation", "description": "3D segmentation jobs"},
    {"name": "localization", "description": "Few-shot localization: templates and localization jobs"},
    {"name": "medlsam", "description": "Localize-then-segment jobs"},
    {"name": "umcam", "description": "Weakly supervised brain extraction on T1 MR (UM-CAM): brain-mask jobs and "
                                     "pseudo-label jobs from slice-level labels"},
    {"name": "hermes", "description": "Universal segmentation (Hermes-R): masks of the requested tasks of a CT or MR "
                                      "volume, one network for every task"},
    {"name": "reports", "description": "Radiology report generation from an X-ray"},
    {"name": "dialogue", "description": "Consultation dialogue sessions"},
    {"name": "valuation", "description": "Data valuation batch jobs"},
    {"name": "fewshot", "description": "Few-shot tasks: adapt a foundation encoder to labelled support images, "
                                    "then predict (encoder on Triton, the task's head in the gateway)"},
    {"name": "jobs", "description": "State, results, artifacts and cancellation of any job"},
    {"name": "admin", "description": "API keys and the audit trail"},
]


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=TAGS)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in EXTRA_SCHEMAS:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        # FastAPI's own validation-error schema is never sent: every 422 is a problem
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        problem_422 = problem_responses(422)[422]
        problem_400 = problem_responses(400, d400="The body could not be parsed (malformed JSON or multipart)")[400]
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {})
                if "requestBody" in operation:
                    responses.setdefault("400", problem_400)
                if "422" in responses:
                    responses["422"] = {**problem_422, "description": responses["422"].get("description",
                                                                                        "Invalid request")}
                    if "application/json" in responses["422"].get("content", {}):
                        responses["422"]["content"] = {MEDIA_TYPE: problem_422["content"][MEDIA_TYPE]}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
