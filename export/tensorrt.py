"""TensorRT plans from the exported ONNX file, on hosts with an NVIDIA GPU.

A plan is specific to the GPU model and TensorRT version that built it, so it is built on the
serving host (``medstack export --tensorrt``), never committed. The batch axis gets an
optimisation profile from 1 to the model's ``max_batch_size``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from export.onnx_export import ExportError
from export.spec import ExportSpec

NO_GPU = (
    "TensorRT plans can only be built on a host with an NVIDIA GPU, its driver (nvidia-smi) and "
    "TensorRT (the `tensorrt` Python package or `trtexec` on PATH). This machine has {missing}. "
    "Run `medstack export` without --tensorrt here: the ONNX models serve on CPU, and on GPU hosts "
    "the onnxruntime backend's TensorRT accelerator (configs/gpu.pbtxt) needs no plan."
)


def gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _has_tensorrt_python() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def require_tensorrt() -> None:
    """Raise ``ExportError`` with what is missing when this host cannot build plans."""
    missing = []
    if not gpu_present():
        missing.append("no NVIDIA GPU visible to nvidia-smi")
    if not _has_tensorrt_python() and shutil.which("trtexec") is None:
        missing.append("neither the tensorrt package nor trtexec")
    if missing:
        raise ExportError(NO_GPU.format(missing=" and ".join(missing)))


def shape_profile(spec: ExportSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min / opt / max input shapes (batch axis first) for the optimisation profile."""
    b = spec.batching
    opt = max(b.preferred_batch_sizes, default=b.max_batch_size)
    profile = {}
    for t in spec.inputs:
        if any(d < 0 for d in t.shape):
            raise ExportError(f"{spec.name}: TensorRT plans need static non-batch dims; {t.name} is {t.shape}")
        profile[t.name] = ((1, *t.shape), (opt, *t.shape), (b.max_batch_size, *t.shape))
    return profile


def trtexec_command(spec: ExportSpec, onnx_path: Path, plan_path: Path, fp16: bool = True) -> list[str]:
    profile = shape_profile(spec)

    def shapes(i: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, dims[i]))}" for name, dims in profile.items())

    cmd = [
        "trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}",
        f"--minShapes={shapes(0)}", f"--optShapes={shapes(1)}", f"--maxShapes={shapes(2)}",
    ]
    return cmd + (["--fp16"] if fp16 else [])


def build_plan(spec: ExportSpec, onnx_path: Path, plan_path: Path, fp16: bool = True) -> None:
    require_tensorrt()
    if _has_tensorrt_python():
        _build_with_python_api(spec, onnx_path, plan_path, fp16)
        return
    result = subprocess.run(trtexec_command(spec, onnx_path, plan_path, fp16), capture_output=True, text=True)
    if result.returncode != 0:
        raise ExportError(f"{spec.name}: trtexec failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def _build_with_python_api(spec: ExportSpec, onnx_path: Path, plan_path: Path, fp16: bool) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{spec.name}: TensorRT cannot parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shape_profile(spec).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{spec.name}: TensorRT failed to build an engine")
    plan_path.write_bytes(bytes(plan))
