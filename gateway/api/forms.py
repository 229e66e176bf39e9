"""Multipart forms with one optional file part, validated by a pydantic model, and their OpenAPI body."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from gateway.problems import Problem
from gateway.uploads import check_content_length, media_type, read_multipart

M = TypeVar("M", bound=BaseModel)


def validation_problem(error: ValidationError, where: str = "body") -> Problem:
    errors = [{"loc": [where, *map(str, e["loc"])], "msg": e["msg"]} for e in error.errors()[:50]]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)[:1000]
    return Problem(422, "Invalid request", detail, kind="validation-error", errors=errors)


async def read_form(request: Request, options: type[M], max_bytes: int, file_required: bool = True
                    ) -> tuple[UploadFile | None, M, FormData]:
    """The file part ``file`` (if any), the other fields validated as ``options``, and the form to close."""
    if media_type(request) != "multipart/form-data":
        raise Problem(415, "Unsupported media type", "send multipart/form-data", kind="unsupported-media-type")
    check_content_length(request, max_bytes)
    form = await read_multipart(request, max_bytes)
    try:
        upload = form.get("file")
        if isinstance(upload, str):
            raise Problem(422, "Invalid request", "'file' must be a file part", kind="validation-error")
        if upload is None and file_required:
            raise Problem(422, "Invalid request", "multipart body needs a file part named 'file'",
                          kind="validation-error")
        fields = {k: v for k, v in form.multi_items() if k != "file"}
        try:
            parsed = options.model_validate(fields)
        except ValidationError as error:
            raise validation_problem(error) from error
    except BaseException:
        await form.close()
        raise
    return upload, parsed, form


def form_body(options: type[BaseModel], file_description: str | None, example: dict[str, Any],
              file_required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` for a multipart body: the options' JSON schema plus a binary ``file`` part."""
    schema = options.model_json_schema()
    schema.pop("title", None)
    schema.pop("examples", None)
    if file_description is not None:
        schema.setdefault("properties", {})["file"] = {"type": "string", "format": "binary",
                                                        "description": file_description}
        if file_required:
            schema["required"] = ["file", *schema.get("required", [])]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": schema, "example": example,
        **({"encoding": {"file": {"contentType": "application/octet-stream"}}} if file_description else {}),
    }}}}
