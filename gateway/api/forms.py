"""Uploads, the one way every upload route reads its request, and the OpenAPI body that documents it.

A route declares its options once, as a pydantic model (``gateway/schemas.py``). ``read_upload``
reads a multipart form with one file part ``file`` and validates the other fields as that model;
a route that also takes the file as the raw body (``raw_body=True``) gets the same options from the
query string. ``form_body`` documents the same model as the multipart schema (and, for raw bodies,
as query parameters).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from gateway.problems import Problem
from gateway.uploads import RAW_MEDIA_TYPES, check_content_length, limited, media_type, read_multipart

M = TypeVar("M", bound=BaseModel)


def validation_problem(error: ValidationError, where: str = "body") -> Problem:
    errors = [{"loc": [where, *map(str, e["loc"])], "msg": e["msg"]} for e in error.errors()[:50]]
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)[:1000]
    return Problem(422, "Invalid request", detail, kind="validation-error", errors=errors)


def _validated(options: type[M], values: dict[str, Any], where: str) -> M:
    try:
        return options.model_validate(values)
    except ValidationError as error:
        raise validation_problem(error, where) from error


@dataclass(frozen=True)
class Upload(Generic[M]):
    """The validated options and the file: a multipart file part, the raw body's stream, or None."""

    options: M
    file: UploadFile | AsyncIterator[bytes] | None


@asynccontextmanager
async def read_upload(request: Request, options: type[M], max_bytes: int, *, file_required: bool = True,
                      raw_body: bool = False) -> AsyncIterator[Upload[M]]:
    """Read the request as ``Upload(options, file)``; the form is closed when the block ends.

    Multipart: the file part ``file`` (required unless ``file_required=False``) and the other fields
    validated as ``options``. With ``raw_body``, a body of a raw media type is the file and the options
    come from the query string (which a multipart request may use too; its fields win).
    """
    query: dict[str, str] = {}
    if raw_body:
        query = {k: v for k, v in request.query_params.items() if k in options.model_fields}
        from_query = _validated(options, query, "query")
        check_content_length(request, max_bytes)
        if media_type(request) in RAW_MEDIA_TYPES:
            yield Upload(from_query, limited(request.stream(), max_bytes))
            return
    kind = media_type(request)
    if kind != "multipart/form-data":
        raise Problem(415, "Unsupported media type", "send multipart/form-data (field 'file') or the volume as "
                      f"application/octet-stream, not {kind or 'no Content-Type'}" if raw_body
                      else "send multipart/form-data", kind="unsupported-media-type")
    if not raw_body:
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
        yield Upload(_validated(options, query | fields, "body"), upload)
    finally:
        await form.close()


def split_csv(text: str) -> list[str]:
    """A comma-separated form field as a list (blanks dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions (a body schema in OpenAPI
    resolves ``#/...`` against the whole document, not against itself)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: walk(value) for key, value in node.items()}
        return [walk(value) for value in node] if isinstance(node, list) else node

    return walk(schema)  # type: ignore[no-any-return]


def form_body(options: type[BaseModel], file_description: str | None, example: dict[str, Any],
              file_required: bool = True, raw_example: str | None = None,
              json_options: type[BaseModel] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for an upload: the options' JSON schema plus a binary ``file`` part; with
    ``raw_example``, also a raw ``application/octet-stream`` body and the options as query parameters;
    with ``json_options``, also an ``application/json`` body of that model (a request without upload)."""
    schema = options.model_json_schema()
    schema.pop("title", None)
    schema.pop("examples", None)
    fields = dict(schema.get("properties", {}))
    if file_description is not None:
        schema.setdefault("properties", {})["file"] = {"type": "string", "format": "binary",
                                                        "description": file_description}
        if file_required:
            schema["required"] = ["file", *schema.get("required", [])]
    content: dict[str, Any] = {"multipart/form-data": {
        "schema": schema, "example": example,
        **({"encoding": {"file": {"contentType": "application/octet-stream"}}} if file_description else {}),
    }}
    if json_options is not None:
        json_schema = _inlined(json_options.model_json_schema())
        examples = json_schema.pop("examples", [])
        content["application/json"] = {"schema": json_schema, **({"example": examples[0]} if examples else {})}
    if raw_example is None:
        return {"requestBody": {"required": True, "content": content}}
    content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}, "example": raw_example}
    parameters = [{"name": name, "in": "query", "required": False, "schema": field,
                   **({"description": field["description"]} if "description" in field else {})}
                  for name, field in fields.items()]
    return {"requestBody": {"required": True, "content": content}, "parameters": parameters}
