"""Reference whole-volume inference: preprocessing → sliding window → softmax/argmax → input grid.

The network is reached only through a ``predict(batch) -> logits`` callable, (N, 1, D, H, W) float32 →
(N, C, D, H, W), so the same code runs against an in-process PyTorch module, an ONNX Runtime session
or Triton (the worker passes its client).

    labels = segment(ct, torch_predictor(load_served_model()))
    labels.array        # uint8 class indices (labels.CLASS_NAMES) on ct's own grid
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.sliding_window import Predictor, Progress, SlidingWindow
from services.common.volume import Volume
from services.segmentation.pctnet import CPU_CONFIG
from services.segmentation.preprocessing import SPEC, PreprocessingSpec, from_model_grid, to_model_grid

__all__ = ["Segmenter", "segment", "softmax", "torch_predictor", "onnx_predictor"]


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


@dataclass(frozen=True)
class Segmenter:
    """Settings of the sliding window (MIS-FM/PyMIC: stride = half a window, Gaussian σ = window/8)."""

    patch_size: tuple[int, int, int] = CPU_CONFIG.input_size
    overlap: float = 0.5
    batch_size: int = 2
    spec: PreprocessingSpec = SPEC

    def probabilities(self, volume: Volume, predict: Predictor,
                      progress: Progress | None = None) -> tuple[Volume, np.ndarray]:
        """Class probabilities (C, z, y, x) on the model grid, and that grid."""
        grid = to_model_grid(volume, self.spec)
        window = SlidingWindow(roi_size=self.patch_size, overlap=self.overlap, batch_size=self.batch_size,
                               gaussian=True, pad_value=self.spec.pad_value)
        logits = window(grid.array, predict, progress)  # Gaussian-weighted logits, then normalised
        return grid, softmax(logits, axis=0)

    def __call__(self, volume: Volume, predict: Predictor, progress: Progress | None = None) -> Volume:
        grid, prob = self.probabilities(volume, predict, progress)
        labels = grid.with_array(prob.argmax(axis=0).astype(np.uint8))
        return from_model_grid(labels, volume)


def segment(volume: Volume, predict: Predictor, patch_size: tuple[int, int, int] = CPU_CONFIG.input_size,
            overlap: float = 0.5, batch_size: int = 2, progress: Progress | None = None) -> Volume:
    """Label map (uint8 class indices) of a CT in HU, on the CT's own grid."""
    return Segmenter(patch_size=patch_size, overlap=overlap, batch_size=batch_size)(volume, predict, progress)


def torch_predictor(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    """Run an eval-mode PyTorch module on a batch of patches (float32, no autocast)."""
    model.eval()

    @torch.no_grad()
    def predict(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return predict


def onnx_predictor(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Run an exported model with ONNX Runtime (CPU); input and output are its first tensors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return predict
