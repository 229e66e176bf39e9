"""The foundation encoders a few-shot task can adapt: one table, used by export, service and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncoderInfo:
    """``name``: API name (``POST /v1/fewshot/tasks`` ``encoder``). ``triton_model``: the ONNX model serving it,
    inputs ``image`` and ``prompt`` (both ``(B, *input_shape)`` float32; prompt is added to the image before the
    first layer, zeros for methods without one), output ``features (B, feature_dim)``. ``input_kind``: what a
    support/predict file must be (``"radiograph"``: PNG/JPEG/DICOM 2-D image; ``"ct-patch"``: NIfTI/.npy HU patch).
    ``has_text``: the encoder has a text tower (zero-shot, CoOp, ConES)."""

    name: str
    triton_model: str
    input_kind: str
    input_shape: tuple[int, ...]
    feature_dim: int
    has_text: bool
    description: str


ENCODERS: dict[str, EncoderInfo] = {}  # learning side fills


def preprocess(encoder: str, image: np.ndarray) -> np.ndarray:
    """A decoded image (2-D radiograph pixels, or a HU patch) → the encoder's input ``input_shape`` float32."""
    raise NotImplementedError


def load_encoder(encoder: str):  # noqa: ANN201
    """The frozen torch module ``(image, prompt) → features`` (eval mode), as exported to ``triton_model``."""
    raise NotImplementedError
