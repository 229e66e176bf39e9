"""Triton ``config.pbtxt`` files for one model, in every flavour we serve it.

Layout of a model folder (Triton's custom-configuration feature, ``--model-config-name``):

    <model>/config.pbtxt            native onnxruntime backend, CPU  (NGC image, default)
    <model>/configs/gpu.pbtxt       native onnxruntime backend, GPU, TensorRT accelerator (FP16)
    <model>/configs/embedded.pbtxt  python backend running ONNX Runtime or OpenVINO (embedded server)
    <model>/configs/tensorrt.pbtxt  tensorrt_plan (only when a plan was built)
    <model>/<version>/model.onnx, model.py, model.plan, manifest.json
"""

from __future__ import annotations

from enum import StrEnum

from export.spec import ExportSpec, PythonModelSpec, TensorSpec


class Flavour(StrEnum):
    CPU = "cpu"
    GPU = "gpu"
    EMBEDDED = "embedded"
    TENSORRT = "tensorrt"


# file name of each flavour inside the model folder
CONFIG_FILES = {
    Flavour.CPU: "config.pbtxt",
    Flavour.GPU: "configs/gpu.pbtxt",
    Flavour.EMBEDDED: "configs/embedded.pbtxt",
    Flavour.TENSORRT: "configs/tensorrt.pbtxt",
}

# outside the (read-only) model repository: a folder there would be taken for a model
TRT_ENGINE_CACHE = "/trt_cache"


def _tensor(t: TensorSpec) -> str:
    dims = ", ".join(str(d) for d in t.shape)
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.triton_dtype}\n    dims: [ {dims} ]\n  }}'


def _tensors(kind: str, tensors: tuple[TensorSpec, ...]) -> str:
    return f"{kind} [\n" + ",\n".join(_tensor(t) for t in tensors) + "\n]"


def _dynamic_batching(spec: ExportSpec) -> str:
    b = spec.batching
    lines = []
    if b.preferred_batch_sizes:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, b.preferred_batch_sizes))} ]")
    if b.max_queue_delay_us:
        lines.append(f"  max_queue_delay_microseconds: {b.max_queue_delay_us}")
    return "dynamic_batching {\n" + "\n".join(lines) + ("\n" if lines else "") + "}"


def _parameters(params: dict[str, str]) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in params.items()
    )


def render_config(spec: ExportSpec, flavour: Flavour, precision: str = "fp32") -> str:
    """The config.pbtxt text of ``spec`` for ``flavour``; ``precision`` is what the export decided
    (export/precision.py), used by the embedded OpenVINO runtime."""
    head = {
        Flavour.CPU: 'backend: "onnxruntime"',
        Flavour.GPU: 'backend: "onnxruntime"',
        Flavour.EMBEDDED: 'backend: "python"',
        Flavour.TENSORRT: 'platform: "tensorrt_plan"',
    }[flavour]
    on_gpu = flavour in (Flavour.GPU, Flavour.TENSORRT)
    kind, count = ("KIND_GPU", spec.gpu_instances) if on_gpu else ("KIND_CPU", spec.cpu_instances)
    parts = [
        f'name: "{spec.name}"',
        head,
        f"max_batch_size: {spec.batching.max_batch_size}",
        f"version_policy: {{ latest: {{ num_versions: {spec.num_versions_served} }} }}",
        _tensors("input", spec.inputs),
        _tensors("output", spec.outputs),
        _dynamic_batching(spec),
        f"instance_group [ {{ count: {count} kind: {kind} }} ]",
    ]
    if flavour is Flavour.GPU:
        parts.append(
            "optimization { execution_accelerators { gpu_execution_accelerator: [ {\n"
            '  name: "tensorrt"\n'
            '  parameters { key: "precision_mode" value: "FP16" }\n'
            '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
            f'  parameters {{ key: "trt_engine_cache_path" value: "{TRT_ENGINE_CACHE}" }}\n'
            "} ] } }"
        )
    if flavour is Flavour.CPU and spec.runtime == "openvino":
        # the NGC onnxruntime backend's OpenVINO execution provider (fp32: the provider's CPU default)
        parts.append('optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }')
    if flavour is Flavour.EMBEDDED:
        parts.append(_parameters({"intra_op_threads": str(spec.intra_op_threads), "runtime": spec.runtime,
                                  "precision": precision}))
    elif flavour is Flavour.CPU and spec.intra_op_threads:
        parts.append(_parameters({"intra_op_thread_count": str(spec.intra_op_threads)}))
    return "\n".join(parts) + "\n"


def render_python_config(spec: PythonModelSpec) -> str:
    """Config of a python-backend model. The same text serves every flavour: the python backend
    runs on the CPU on GPU hosts too, and the models it calls carry their own GPU configs."""
    parts = [
        f'name: "{spec.name}"',
        'backend: "python"',
        f"max_batch_size: {spec.max_batch_size}",
        f"version_policy: {{ latest: {{ num_versions: {spec.num_versions_served} }} }}",
        _tensors("input", spec.inputs),
        _tensors("output", spec.outputs),
        f"instance_group [ {{ count: {spec.cpu_instances} kind: KIND_CPU }} ]",
    ]
    if spec.decoupled:
        parts.append("model_transaction_policy { decoupled: true }")
    if spec.parameters:
        parts.append(_parameters(spec.parameters))
    return "\n".join(parts) + "\n"
