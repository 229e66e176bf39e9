"""Adapt an encoder to a labelled support set: one entry point for the service's job and for the evaluation."""

from __future__ import annotations

import numpy as np

from services.fewshot.heads import Head

# linear probe, prototype (Meta-Baseline), input-prompt tuning through the frozen encoder, zero-shot text prompts,
# CoOp-style learnable context through the text encoder, ConES concept embeddings (text-output space).
METHODS = ("linear", "prototype", "prompt", "zeroshot", "coop", "cones")
TEXT_METHODS = ("zeroshot", "coop", "cones")  # need an encoder with a text tower (ENCODERS[...].has_text)


class AdaptationError(ValueError):
    """A support set or request that cannot be adapted; ``code`` is the problem type the service reports."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def adapt(encoder: str, method: str, class_names: list[str], images: np.ndarray, labels: np.ndarray,
          multi_label: bool, seed: int = 0) -> Head:
    """``images``: preprocessed encoder inputs ``(N, *ENCODERS[encoder].input_shape)`` float32 (see
    ``encoders.preprocess``); ``labels``: ``(N, C)`` 0/1 (multi-label) or ``(N,)`` class indices.
    Raises AdaptationError (``unknown-method``, ``method-needs-text-encoder``, ``class-without-examples`` …)."""
    raise NotImplementedError
