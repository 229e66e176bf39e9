"""The adaptation job of a few-shot task: support zip in the job folder → adapted head + provenance.

Steps: check the parameters (encoder, method, classes) → parse ``labels.csv`` against the zip
(``support.read_support``) → decode every image with the reader of the encoder's ``input_kind``
(radiographs by ``services/report/images.py``; HU patches from .npy/NIfTI) → ``encoders.preprocess`` →
``adapt.adapt`` → write ``head.bin`` (``Head.to_bytes``) and ``provenance.json`` into the job folder
(write-then-rename) and return them; the worker stores both with the task row.

Every refusal is a ``JobInputError`` whose ``kind`` is the problem type (``unknown-encoder``,
``unknown-method``, ``method-needs-text-encoder``, ``class-without-examples``, ``labels-name-missing-files``,
``unreadable-image``, ``wrong-input-kind``, ``empty-support-set`` …), so a failed job says what to fix.

Provenance (in every answer about the task and every prediction): the encoder (API name, Triton model,
version, ONNX sha256, checkpoint sha256 from the export manifest), method, seed, multi-label, shots per
class, and the sha256 of every support image (plus one digest of the whole set).

Example::

    head_bytes, provenance = adaptation_job(
        {"input": "input.zip", "encoder": "chest", "method": "linear", "class_names": ["a", "b"]},
        folder, encoder_model={"name": "fewshot_chest", "version": "1", "sha256": "…"})
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.common.job_io import JobInputError, Progress
from services.fewshot.support import SupportError, read_image, read_member, read_support, sha256

HEAD_FILE = "head.bin"
PROVENANCE_FILE = "provenance.json"
MAX_UNREADABLE_LISTED = 20


def check_request(encoder: str, method: str) -> Any:
    """The encoder's ``EncoderInfo``; ``SupportError`` for an unknown encoder or method, or a text method on an
    encoder without a text tower (the gateway answers these with 422 before queueing)."""
    from services.fewshot.encoders import ENCODERS
    from services.fewshot.heads import METHODS, TEXT_METHODS

    info = ENCODERS.get(encoder)
    if info is None:
        raise SupportError("unknown-encoder", f"unknown encoder {encoder!r}; choose one of {sorted(ENCODERS)}",
                           encoders=sorted(ENCODERS))
    if method not in METHODS:
        raise SupportError("unknown-method", f"unknown method {method!r}; choose one of {list(METHODS)}",
                           methods=list(METHODS))
    if method in TEXT_METHODS and not info.has_text:
        text_encoders = sorted(name for name, e in ENCODERS.items() if e.has_text)
        raise SupportError("method-needs-text-encoder", f"method {method!r} needs an encoder with a text tower; "
                           f"{encoder!r} has none (encoders with one: {text_encoders})", encoders=text_encoders)
    return info


def check_checkpoint(manifest: dict[str, Any] | None) -> None:
    """The worker adapts with the torch encoder's checkpoint; the gateway predicts with the ONNX exported from the
    checkpoint the manifest names. Refuse (``encoder-out-of-date``) when the two files differ, since the head would
    not fit the served features."""
    from core.settings import REPO_ROOT
    from export.manifest import sha256_file

    checkpoint = (manifest or {}).get("checkpoint") or {}
    if not checkpoint.get("path") or not checkpoint.get("sha256"):
        return
    path = Path(checkpoint["path"])
    path = path if path.is_absolute() else REPO_ROOT / path
    if path.is_file() and sha256_file(path) != checkpoint["sha256"]:
        model = manifest.get("model", "the encoder") if manifest else "the encoder"
        raise JobInputError("encoder-out-of-date", f"the served {model} was exported from another version of "
                            f"{checkpoint['path']} than the one this worker loads; export it again "
                            f"(`medstack export {model}`) and register the task again")


def encoder_provenance(encoder: str, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The encoder as provenance quotes it, from its export manifest (None: not exported)."""
    from services.fewshot.encoders import ENCODERS

    info = ENCODERS[encoder]
    manifest = manifest or {}
    checkpoint = manifest.get("checkpoint") or {}
    return {"name": encoder, "model": info.triton_model, "version": str(manifest.get("version", "")),
            "sha256": str(manifest.get("sha256", "")), "checkpoint_sha256": checkpoint.get("sha256"),
            "input_kind": info.input_kind, "feature_dim": info.feature_dim}


def prepare(encoder: str, image: np.ndarray, spacing_zyx: tuple[float, ...] | None) -> np.ndarray:
    """A decoded image → the encoder's input (``encoders.preprocess``; a CT patch's spacing when its file has one)."""
    from services.fewshot.encoders import preprocess

    if spacing_zyx is None:
        return np.asarray(preprocess(encoder, image), dtype=np.float32)
    return np.asarray(preprocess(encoder, image, spacing_zyx=spacing_zyx), dtype=np.float32)


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _support_images(zip_path: Path, support: Any, encoder: str, input_kind: str,
                    progress: Progress | None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Preprocessed encoder inputs ``(N, *input_shape)`` and, per image, file, sha256 and labels. Every
    unreadable or wrong-kind image is named in one error."""
    inputs, files, problems = [], [], []
    kinds = set()
    for k, item in enumerate(support.items):
        try:
            data = read_member(zip_path, item.member)
            x = prepare(encoder, *read_image(input_kind, data, item.file))
        except SupportError as error:
            problems.append(error.detail)
            kinds.add(error.code)
            continue
        except ValueError as error:  # the encoder's preprocessing refused the decoded image (shape, range)
            problems.append(f"{item.file}: {error}")
            kinds.add("unreadable-image")
            continue
        inputs.append(np.asarray(x, dtype=np.float32))
        files.append({"file": item.file, "sha256": sha256(data), "labels": list(item.labels)})
        if progress is not None and k % 10 == 0:
            progress("reading images", 0.4 * (k + 1) / len(support.items))
    if problems:
        kind = "wrong-input-kind" if kinds == {"wrong-input-kind"} else "unreadable-image"
        more = f" (and {len(problems) - MAX_UNREADABLE_LISTED} more)" if len(problems) > MAX_UNREADABLE_LISTED else ""
        raise JobInputError(kind, f"{len(problems)} support image(s) cannot be used: "
                            + "; ".join(problems[:MAX_UNREADABLE_LISTED]) + more
                            + ". Replace or remove them (and their labels.csv rows).")
    return np.stack(inputs), files


def adaptation_job(params: dict[str, Any], folder: Path, encoder_model: dict[str, Any] | None,
                   progress: Progress | None = None) -> tuple[bytes, dict[str, Any]]:
    """Adapt the task in ``folder`` (its support zip is ``params["input"]``); returns the head's bytes and the
    provenance, both also written into ``folder``. ``encoder_model``: the encoder's export manifest."""
    from services.fewshot.adapt import AdaptationError, adapt

    encoder, method = str(params.get("encoder", "")), str(params.get("method", ""))
    multi_label, seed = bool(params.get("multi_label", False)), int(params.get("seed", 0))
    try:
        info = check_request(encoder, method)
        zip_path = folder / str(params.get("input", ""))
        if not params.get("input") or not zip_path.is_file():
            raise SupportError("missing-input", "the support zip is not in the job's artifact folder")
        support = read_support(zip_path, params.get("class_names", []), multi_label)
    except SupportError as error:
        raise JobInputError(error.code, error.detail) from error
    check_checkpoint(encoder_model)
    if progress is not None:
        progress("reading images", 0.0)
    images, files = _support_images(zip_path, support, encoder, info.input_kind, progress)
    if progress is not None:
        progress("adapting", 0.4)
    started = time.perf_counter()
    try:
        head = adapt(encoder, method, list(support.class_names), images, support.label_array(), multi_label, seed)
    except AdaptationError as error:
        raise JobInputError(error.code, error.detail) from error
    seconds = time.perf_counter() - started
    set_digest = hashlib.sha256("\n".join(sorted(f["sha256"] for f in files)).encode()).hexdigest()
    shots = support.shots()
    head.meta = {**head.meta, "shots_per_class": shots, "support_sha256": set_digest,
                 "support_images": [f["sha256"] for f in files], "seed": seed}
    head_bytes = head.to_bytes()
    provenance = {
        "encoder": encoder_provenance(encoder, encoder_model),
        "method": method, "multi_label": multi_label, "seed": seed,
        "class_names": list(support.class_names),
        "shots_per_class": shots, "shots": min(shots.values()),
        "support_set": {"images": len(files), "ignored_files": support.ignored_files, "sha256": set_digest,
                        "files": files},
        "head": {"sha256": sha256(head_bytes), "bytes": len(head_bytes),
                 "prompt": head.prompt is not None},
        "adaptation_seconds": round(seconds, 3),
    }
    _atomic(folder / HEAD_FILE, head_bytes)
    _atomic(folder / PROVENANCE_FILE, json.dumps(provenance, indent=1).encode())
    if progress is not None:
        progress("adapted", 1.0)
    return head_bytes, provenance
