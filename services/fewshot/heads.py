"""A few-shot task's adapted head: the only per-task state, small enough for the database and artifact store.

Every method's head is a function of the frozen encoder's output (plus, for prompt tuning, an input prompt the
encoder adds to the image before its first layer), so prediction is: encoder (Triton, one model per encoder,
``prompt`` input zero for methods without one) → ``apply`` here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Head:
    """``method``: one of adapt.METHODS. ``encoder``: a key of encoders.ENCODERS. ``class_names`` in score order.
    ``multi_label``: sigmoid per class (else softmax over classes). ``arrays``: the method's parameters
    (e.g. ``weight (C, D)``, ``bias (C,)``, ``prompt`` with the encoder's input shape); ``meta``: JSON-able facts
    (shots, seed, support hashes, adaptation seconds …)."""

    method: str
    encoder: str
    class_names: list[str]
    multi_label: bool
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def prompt(self) -> np.ndarray | None:
        """The learned input prompt (encoder input shape, no batch axis), or None: send zeros to the encoder."""
        return self.arrays.get("prompt")

    def to_bytes(self) -> bytes:
        raise NotImplementedError  # learning side implements (npz of arrays + JSON of the rest)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Head":
        raise NotImplementedError


def apply(head: Head, features: np.ndarray) -> np.ndarray:
    """Scores ``(B, C)`` in [0, 1] from the encoder's ``features (B, D)``: per-class probabilities (multi-label)
    or a softmax over classes (multi-class)."""
    raise NotImplementedError


_ = io  # used by the implementation
