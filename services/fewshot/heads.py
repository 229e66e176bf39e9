"""A few-shot task's adapted head: the only per-task state, small enough for the database and artifact store.

Every method's head is a function of the frozen encoder's output (plus, for prompt tuning, an input prompt the
encoder adds to the image before its first layer), so prediction is: encoder (Triton, one model per encoder,
``prompt`` input zero for methods without one) → ``apply`` here.

All methods end in the same affine map, so ``apply`` has one formula for every method::

    x = features − center                  (when the head has a ``center (D,)`` array: linear, prototype, prompt)
    x = x / ||x||                          (when meta["normalize"], the default: every method here)
    logits = x @ weight.T + bias           weight (C, D), bias (C,)
    scores = sigmoid(logits)               (multi-label)   |   softmax(logits) over classes (multi-class)

The methods differ only in how ``weight``/``bias`` were found (and whether ``prompt`` is set):

* ``linear``: logistic regression on centred (support mean), L2-normalised features (MedFMC Baseline + centring).
* ``prototype``: ``weight = scale · normalised class centres`` (Meta-Baseline cosine score), ``bias = -scale · t``.
* ``prompt``: a learned input ``prompt`` plus a linear head trained through the frozen encoder.
* ``zeroshot`` / ``coop`` / ``cones``: ``class_embeddings (C, D)`` in the VLM's joint space (kept in the head as
  well), ``weight = scale · class_embeddings`` (multi-label: ``scale · (positive − negative)`` embeddings, also
  kept as ``negative_embeddings``), ``bias`` per class.

Serialised as a zip of ``arrays.npz`` (float32 arrays) and ``head.json`` (the rest), see ``to_bytes``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np

FORMAT_VERSION = 1
MAX_HEAD_BYTES = 64 * 1024 * 1024  # a head is a few kB to a few hundred kB (a prompt); refuse absurd inputs


class HeadFormatError(ValueError):
    """Bytes that are not a head written by ``Head.to_bytes`` (or a head whose arrays do not fit together)."""


# linear probe, prototype (Meta-Baseline), input-prompt tuning through the frozen encoder, zero-shot text prompts,
# CoOp-style learnable context through the text encoder, ConES concept embeddings (text-output space).
METHODS = ("linear", "prototype", "prompt", "zeroshot", "coop", "cones")
TEXT_METHODS = ("zeroshot", "coop", "cones")  # need an encoder with a text tower (ENCODERS[...].has_text)


@dataclass
class Head:
    """``method``: one of METHODS. ``encoder``: a key of encoders.ENCODERS. ``class_names`` in score order.
    ``multi_label``: sigmoid per class (else softmax over classes). ``arrays``: the method's parameters
    (``weight (C, D)``, ``bias (C,)``; optional ``center (D,)``, ``prompt`` with the encoder's input shape,
    ``class_embeddings``,
    ``negative_embeddings``); ``meta``: JSON-able facts (shots, seed, support hashes, adaptation seconds,
    ``normalize`` …)."""

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

    @property
    def normalize(self) -> bool:
        return bool(self.meta.get("normalize", True))

    def check(self) -> Head:
        """Raise HeadFormatError unless ``weight (C, D)`` and ``bias (C,)`` fit ``class_names``."""
        c = len(self.class_names)
        weight, bias = self.arrays.get("weight"), self.arrays.get("bias")
        if weight is None or bias is None:
            raise HeadFormatError("a head needs 'weight' and 'bias' arrays")
        if weight.ndim != 2 or weight.shape[0] != c or bias.shape != (c,):
            raise HeadFormatError(f"weight {weight.shape} / bias {bias.shape} do not fit {c} classes")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise HeadFormatError("weight or bias holds non-finite values")
        center = self.arrays.get("center")
        if center is not None and center.shape != (weight.shape[1],):
            raise HeadFormatError(f"center {center.shape} does not fit weight {weight.shape}")
        return self

    def to_bytes(self) -> bytes:
        """A zip holding ``arrays.npz`` (float32, no pickles) and ``head.json`` (method, encoder, classes, meta)."""
        arrays = io.BytesIO()
        np.savez_compressed(arrays, **{k: np.asarray(v, dtype=np.float32) for k, v in self.arrays.items()})
        doc = {"format": FORMAT_VERSION, "method": self.method, "encoder": self.encoder,
               "class_names": list(self.class_names), "multi_label": bool(self.multi_label), "meta": self.meta}
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
            z.writestr("head.json", json.dumps(doc, sort_keys=True))
            z.writestr("arrays.npz", arrays.getvalue())
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        if len(data) > MAX_HEAD_BYTES:
            raise HeadFormatError(f"head of {len(data)} bytes is larger than {MAX_HEAD_BYTES}")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                doc = json.loads(z.read("head.json"))
                with np.load(io.BytesIO(z.read("arrays.npz")), allow_pickle=False) as npz:
                    arrays = {k: npz[k].astype(np.float32) for k in npz.files}
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
            raise HeadFormatError(f"not a few-shot head: {error}") from error
        if doc.get("format") != FORMAT_VERSION:
            raise HeadFormatError(f"head format {doc.get('format')!r}, expected {FORMAT_VERSION}")
        return cls(method=doc["method"], encoder=doc["encoder"], class_names=list(doc["class_names"]),
                   multi_label=bool(doc["multi_label"]), arrays=arrays, meta=doc.get("meta", {})).check()


def logits(head: Head, features: np.ndarray) -> np.ndarray:
    """``features (B, D)`` → ``(B, C)`` float64 logits (before sigmoid/softmax)."""
    x = np.asarray(features, dtype=np.float64)
    weight = head.arrays["weight"].astype(np.float64)
    if x.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"features {x.shape} do not fit the head's weight {weight.shape}")
    if "center" in head.arrays:
        x = x - head.arrays["center"].astype(np.float64)
    if head.normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ weight.T + head.arrays["bias"].astype(np.float64)


def apply(head: Head, features: np.ndarray) -> np.ndarray:
    """Scores ``(B, C)`` in [0, 1] from the encoder's ``features (B, D)``: per-class probabilities (multi-label)
    or a softmax over classes (multi-class)."""
    z = logits(head, features)
    if head.multi_label:
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # sigmoid without overflow
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
