"""What is served (from each model's manifest, plus Triton's readiness) and small synchronous inference.

``POST /v1/models/{name}/infer`` is for small tensors (a patch, a probe): whole volumes go through
jobs, which send patches to Triton from a worker. Two body formats:

* ``application/json``: KServe v2-style ``{"inputs": [{"name", "shape", "datatype", "data"}]}``
  → the same shape of answer;
* ``application/x-npy``: one NumPy ``.npy`` array for a single-input model → one ``.npy`` output
  (``?output=`` picks which), with the model name/version/sha256 in ``X-Model-*`` headers.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from core.capabilities import capabilities_of_model
from core.keys import Scope
from core.settings import settings
from gateway.api.forms import validation_problem
from gateway.audit import audit_info
from gateway.auth import require
from gateway.catalog import manifest_of, manifests
from gateway.deps import Triton
from gateway.problems import Problem, problem_responses
from gateway.schemas import InferRequest, InferResponse, ModelPublic, ModelsPublic, TensorOut
from gateway.triton_client import InferenceResult, TritonError, triton_problem
from gateway.uploads import check_content_length, limited, media_type

router = APIRouter(
    prefix="/v1/models", tags=["models"], dependencies=[require(Scope.MODELS)],
    responses=problem_responses(401, 403, 429),
)

NPY = "application/x-npy"
ModelName = Annotated[str, Path(max_length=64, description="served model name", examples=["reference_hutissue"])]


async def _ready_versions(triton: Triton) -> dict[str, dict[str, str]] | None:
    try:
        return await triton.model_states()
    except TritonError:
        return None


def _public(name: str, manifest: dict[str, Any], states: dict[str, dict[str, str]] | None) -> ModelPublic:
    ready = None if states is None else states.get(name, {}).get(str(manifest["version"])) == "READY"
    return ModelPublic.from_manifest(name, manifest, ready, capabilities_of_model(name))


def _manifest_or_404(name: str) -> dict[str, Any]:
    manifest = manifests().get(name)
    if manifest is None:
        raise Problem(404, "Model not found", f"no served model named {name!r}; GET /v1/models lists them",
                      kind="model-not-found")
    return manifest


@router.get("", summary="Models in the repository, latest version each, with Triton readiness")
async def list_models(triton: Triton) -> ModelsPublic:
    states = await _ready_versions(triton)
    return ModelsPublic(data=[_public(name, m, states) for name, m in manifests().items()])


@router.get("/{name}", summary="One served model: version, sha256, tensors, metrics",
            responses=problem_responses(404))
async def get_model(name: ModelName, triton: Triton) -> ModelPublic:
    manifest = _manifest_or_404(name)
    return _public(name, manifest, await _ready_versions(triton))


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/InferRequest"},
                "example": InferRequest.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
            },
            NPY: {"schema": {"type": "string", "format": "binary"},
                  "example": "(bytes of numpy.save(f, np.zeros((1, 1, 16, 32, 32), np.float32)))"},
        },
    },
}


@router.post(
    "/{name}/infer", summary="Run a served model on small tensors (JSON or .npy)",
    response_model=InferResponse, openapi_extra=_INFER_BODY,
    responses={
        200: {"description": "The model's outputs", "content": {
            NPY: {"schema": {"type": "string", "format": "binary"}},
        }, "headers": {"X-Model-Name": {"schema": {"type": "string"}},
                       "X-Model-Version": {"schema": {"type": "string"}},
                       "X-Model-Sha256": {"schema": {"type": "string"}}}},
        **problem_responses(404, 413, 415, 422, 503, 504, d503="Triton is down; retry after `Retry-After` seconds"),
    },
)
async def infer(
    name: ModelName, request: Request, triton: Triton,
    output: Annotated[str | None, Query(max_length=64, description="for .npy bodies: which output to return")] = None,
) -> Response:
    manifest = _manifest_or_404(name)
    kind, inputs, wanted = await _read_inputs(request, name, manifest, output)
    audit = audit_info(request)
    audit.input_sha256 = _digest(inputs)
    try:
        result = await triton.infer(name, inputs, wanted, request_id=getattr(request.state, "request_id", ""))
    except TritonError as error:
        raise triton_problem(error) from error
    served = manifest_of(name, result.version) or manifest
    audit.model_used(name, result.version, served.get("sha256"))
    return _answer(kind, result, served.get("sha256", ""), wanted[0])


async def _read_inputs(request: Request, name: str, manifest: dict[str, Any], output: str | None
                       ) -> tuple[str, dict[str, np.ndarray], list[str]]:
    """The body's media type, its input tensors (checked against the manifest) and the outputs wanted."""
    max_bytes = settings.max_infer_mb << 20
    check_content_length(request, max_bytes, setting="MEDSTACK_MAX_INFER_MB")
    kind = media_type(request)
    if kind not in ("application/json", NPY):
        raise Problem(415, "Unsupported media type", f"send application/json or {NPY}, not {kind or 'nothing'}",
                      kind="unsupported-media-type")
    body = b"".join([c async for c in limited(request.stream(), max_bytes, setting="MEDSTACK_MAX_INFER_MB")])
    specs = {t["name"]: t for t in manifest["inputs"]}
    if kind == NPY:
        if len(specs) != 1:
            raise Problem(422, "Invalid request", f"{name} takes {len(specs)} inputs; send JSON",
                          kind="validation-error")
        inputs = {next(iter(specs)): _load_npy(body)}
        wanted = [output] if output else [manifest["outputs"][0]["name"]]
    else:
        parsed = _parse_json(body)
        inputs = {t.name: _tensor(t.name, t.shape, t.datatype, t.data) for t in parsed.inputs}
        wanted = parsed.outputs or [o["name"] for o in manifest["outputs"]]
    _check_inputs(name, inputs, specs, {o["name"] for o in manifest["outputs"]}, wanted)
    return kind, inputs, wanted


def _answer(kind: str, result: InferenceResult, sha256: str, first: str) -> Response:
    """``.npy`` of the first wanted output (model in ``X-Model-*`` headers), or every output as JSON."""
    for out_name, array in result.outputs.items():
        if array is None or array.size == 0:
            # the python-backend stub answers empty tensors when its numpy is too new
            raise Problem(502, "Empty output", f"Triton returned an empty {out_name!r}", kind="empty-output")
    if kind == NPY:
        buffer = io.BytesIO()
        np.save(buffer, result.outputs[first], allow_pickle=False)
        return Response(buffer.getvalue(), media_type=NPY, headers={
            "X-Model-Name": result.model, "X-Model-Version": result.version, "X-Model-Sha256": sha256})
    # built without re-validating every number, serialised once by pydantic-core (NaN → null)
    answer = InferResponse.model_construct(
        model_name=result.model, model_version=result.version, model_sha256=sha256,
        outputs=[TensorOut.model_construct(name=n, shape=list(a.shape), datatype=_datatype(a),
                                           data=a.ravel().tolist()) for n, a in result.outputs.items()],
    )
    return Response(answer.model_dump_json(), media_type="application/json")


def _parse_json(body: bytes) -> InferRequest:
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as error:
        raise validation_problem(error) from error


def _load_npy(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise Problem(422, "Invalid request", "the body is not a readable .npy array",
                      kind="validation-error") from error
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise Problem(422, "Invalid request", "the .npy array must hold numbers", kind="validation-error")
    return array


def _tensor(name: str, shape: list[int], datatype: str, data: list[float]) -> np.ndarray:
    if any(d < 0 for d in shape):
        raise Problem(422, "Invalid request", f"input {name!r}: shape {shape} has a negative axis",
                      kind="validation-error")
    if math.prod(shape) != len(data):
        raise Problem(422, "Invalid request", f"input {name!r}: shape {shape} needs {math.prod(shape)} values, "
                      f"got {len(data)}", kind="validation-error")
    dtype = triton_to_np_dtype(datatype)
    values = np.asarray(data, dtype=np.float64)
    if dtype != np.float64 and np.issubdtype(dtype, np.integer) and not np.all(np.isfinite(values)):
        raise Problem(422, "Invalid request", f"input {name!r}: non-finite values for {datatype}",
                      kind="validation-error")
    with np.errstate(all="ignore"):
        return values.astype(dtype).reshape(shape)


def _check_inputs(model: str, inputs: dict[str, np.ndarray], specs: dict[str, dict[str, Any]],
                  outputs: set[str], wanted: list[str]) -> None:
    problems = []
    if set(inputs) != set(specs):
        problems.append(f"{model} takes inputs {sorted(specs)}, got {sorted(inputs)}")
    for tensor_name, array in inputs.items():
        spec = specs.get(tensor_name)
        if spec is None:
            continue
        shape = spec["shape"]
        if array.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, array.shape, strict=True)):
            problems.append(f"input {tensor_name!r}: shape {list(array.shape)} does not fit {shape} (-1: any)")
        elif 0 in array.shape:
            problems.append(f"input {tensor_name!r}: an axis of length 0")
        if np.dtype(spec["dtype"]) != array.dtype:
            problems.append(f"input {tensor_name!r}: dtype {array.dtype} where {spec['dtype']} is expected")
        elif array.dtype.kind == "f" and not np.isfinite(array).all():
            problems.append(f"input {tensor_name!r}: NaN or infinite values")
    unknown = [w for w in wanted if w not in outputs]
    if unknown:
        problems.append(f"{model} has no output {unknown[0]!r}; outputs: {sorted(outputs)}")
    if problems:
        raise Problem(422, "Invalid request", "; ".join(problems), kind="validation-error")


def _digest(inputs: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for tensor_name in sorted(inputs):
        digest.update(tensor_name.encode())
        digest.update(np.ascontiguousarray(inputs[tensor_name]).tobytes())
    return digest.hexdigest()


def _datatype(array: np.ndarray) -> str:
    return str(np_to_triton_dtype(array.dtype))
