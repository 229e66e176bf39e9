"""What the export pipeline needs to know about a model: one ``ExportSpec`` per served model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# numpy dtype name -> Triton config data type
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
    "bytes": "TYPE_STRING",  # UTF-8 text in and out of python-backend models
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. ``shape`` excludes the batch axis; -1 marks a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in TRITON_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} of tensor {self.name!r} is not one of {sorted(TRITON_DTYPES)}")

    @property
    def triton_dtype(self) -> str:
        return TRITON_DTYPES[self.dtype]


@dataclass(frozen=True)
class BatchingSpec:
    """Triton dynamic batching. Tune the queue delay only after measuring (Triton's batcher guide)."""

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0


@dataclass(frozen=True)
class ExportSpec:
    """One exportable model.

    ``build_model`` returns the network in eval mode, loaded from ``checkpoint``.
    ``example_inputs`` returns real inputs (batch axis first) for tracing and the parity check.
    """

    name: str
    description: str
    build_model: Callable[[], Any]
    example_inputs: Callable[[], dict[str, np.ndarray]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    checkpoint: Path | None = None
    training: dict[str, str] = field(default_factory=dict)  # command, data
    preprocessing: Callable[[], dict[str, Any]] = dict
    validation_metrics: Callable[[], dict[str, Any]] = dict
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
    opset: int = 17
    dynamo: bool = False  # False: TorchScript exporter
    batching: BatchingSpec = BatchingSpec()
    cpu_instances: int = 1
    gpu_instances: int = 1
    intra_op_threads: int = 0  # ONNX Runtime threads per instance; 0 = all cores
    num_versions_served: int = 1
    # the embedded server's CPU runtime and the precision wanted from it (export/precision.py): bf16 is
    # served only where the CPU has it and the labels on ``precision_case`` agree with fp32's
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    precision_case: Callable[[], Any] | None = None  # -> export.precision.PrecisionCase

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum() or "_" not in self.name:
            raise ValueError(f"model name {self.name!r} must be <family>_<part>, lower_snake")
        if self.batching.max_batch_size < 1:
            raise ValueError("batching.max_batch_size must be >= 1 (batch dimension first)")
        if self.runtime not in ("onnxruntime", "openvino") or self.precision not in ("fp32", "bf16"):
            raise ValueError(f"runtime {self.runtime!r} / precision {self.precision!r}: expected onnxruntime or "
                             "openvino / fp32 or bf16")


@dataclass(frozen=True)
class PythonModelSpec:
    """A python-backend model with no network of its own: a decode loop or pipeline that calls
    other served models through BLS (``pb_utils.InferenceRequest``), named in ``composes``.

    ``model_file`` is copied to ``<version>/model.py``; ``files`` returns extra files (tokenizer,
    knowledge base) copied next to it. ``max_batch_size`` 0 means shapes include no batch axis.
    """

    name: str
    description: str
    model_file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    composes: tuple[str, ...] = ()
    files: Callable[[], dict[str, Path]] = dict
    parameters: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 0
    decoupled: bool = False  # streams several responses per request (token streaming)
    cpu_instances: int = 1
    training: dict[str, str] = field(default_factory=dict)
    preprocessing: Callable[[], dict[str, Any]] = dict
    validation_metrics: Callable[[], dict[str, Any]] = dict
    num_versions_served: int = 1
