"""Export specs of the umcam family (see export/registry.py): the CAM classifier and the U-Net.

``umcam_cam``: image (N, 1, 128, 128) → presence (N, 1), cams (N, 3, 128, 128): the slice
classifier's "brain present" probability and its Grad-CAM at 1/2, 1/4, 1/8 resolution, computed in
the forward pass (services/umcam/networks.py says why that is exact), ready for UM-CAM fusion and
GSE (services/umcam/pseudo_labels.py, CPU-side). ``umcam_unet``: image → logits (N, 2, 128, 128),
the U-Net trained on GSE pseudo-labels only. Both take `services.umcam.grid.to_model_slices`.
"""

from __future__ import annotations

import numpy as np

from export.spec import BatchingSpec, ExportSpec, TensorSpec
from services.umcam import checkpoint
from services.umcam.grid import ORIENTATION, PAD_VALUE, PERCENTILES, PIXEL_MM, SLICE_SIZE
from services.umcam.networks import CamExport

IMAGE = TensorSpec("image", "float32", (1, SLICE_SIZE, SLICE_SIZE))


def preprocessing() -> dict:
    """The manifest's ``preprocessing`` block: what `to_model_slices` does, and the classes."""
    return {"modality": "MR", "orientation": ORIENTATION, "slice_axis": "z (axial)", "pixel_mm": PIXEL_MM,
            "slice_size": SLICE_SIZE, "intensity_percentiles": list(PERCENTILES), "output_range": [-1.0, 1.0],
            "pad_value": PAD_VALUE, "classes": ["background", "brain"],
            "function": "services.umcam.grid.to_model_slices"}


def _example() -> dict[str, np.ndarray]:
    """Four real slices of the held-out Colin27 head (evaluation data, never trained on)."""
    from services.common.datasets import load_brain_head
    from services.umcam.grid import to_model_slices

    slices, _ = to_model_slices(load_brain_head("colin27_head").image)
    picks = np.linspace(0, len(slices) - 1, 6).round().astype(int)[1:-1]
    return {"image": slices[picks]}


def _validation(name: str) -> dict:
    return checkpoint.read_json(name, checkpoint.METRICS).get("validation", {})


def _training(name: str) -> dict[str, str]:
    config = checkpoint.read_json(name)
    return {"command": str(config.get("command", "python -m services.umcam.train (docs/umcam.md)")),
            "data": str(config.get("data", "see docs/umcam.md"))}


def _cam() -> ExportSpec:
    return ExportSpec(
        name="umcam_cam",
        description="UM-CAM slice classifier (brain present in this axial T1 slice) with Grad-CAM at 1/2, 1/4 and "
        "1/8 resolution, trained on slice-level labels only; see docs/umcam.md",
        build_model=lambda: CamExport(checkpoint.load_classifier()).eval(),
        example_inputs=_example,
        inputs=(IMAGE,),
        outputs=(TensorSpec("presence", "float32", (1,)),
                 TensorSpec("cams", "float32", (3, SLICE_SIZE, SLICE_SIZE))),
        checkpoint=checkpoint.CHECKPOINTS / checkpoint.CLASSIFIER / checkpoint.WEIGHTS,
        training=_training(checkpoint.CLASSIFIER),
        preprocessing=preprocessing,
        validation_metrics=lambda: _validation(checkpoint.CLASSIFIER),
        parity_atol=1e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=32, preferred_batch_sizes=(32,), max_queue_delay_us=1000),
    )


def _unet() -> ExportSpec:
    return ExportSpec(
        name="umcam_unet",
        description="2-D U-Net for brain extraction on axial T1 slices, trained only on UM-CAM + GSE pseudo-labels "
        "(weak supervision from slice-level labels, random-view consensus); see docs/umcam.md",
        build_model=lambda: checkpoint.load_unet(),
        example_inputs=_example,
        inputs=(IMAGE,),
        outputs=(TensorSpec("logits", "float32", (2, SLICE_SIZE, SLICE_SIZE)),),
        checkpoint=checkpoint.CHECKPOINTS / checkpoint.SERVED_UNET / checkpoint.WEIGHTS,
        training=_training(checkpoint.SERVED_UNET),
        preprocessing=preprocessing,
        validation_metrics=lambda: _validation(checkpoint.SERVED_UNET),
        parity_atol=1e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=32, preferred_batch_sizes=(32,), max_queue_delay_us=1000),
    )


SPECS = {"umcam_cam": _cam, "umcam_unet": _unet}
