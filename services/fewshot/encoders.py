"""The foundation encoders a few-shot task can adapt: one table, used by export, service and evaluation.

* ``chest``: the report family's stage-1 visual path (CNN + 3 transformer layers, trained as a 10-finding
  classifier on rendered radiographs, ``services/report/checkpoints/visual``), frozen; features = the finding
  head's input: mean of the stride-16 CNN map (96) ‖ mean of the last encoder layer's tokens (128) = 224.
* ``chest-vlm``: the same frozen visual path + the projection of MedStack's small vision–language model
  (``vlm.py``: rendered radiographs ↔ Open-i reports, frozen all-MiniLM-L6-v2 text side); features = the
  unit-length joint-space image embedding (256), so text methods score with class embeddings alone.
* ``ct``: the encoder half of the Volume-Fusion-pretrained PCT-Net (``ct_checkpoint()``), for 3-D CT patches of
  16×32×32 voxels at 3 mm (48×96×96 mm, z·y·x); features = mean of the stride-(2,4,4) PCT block (32) ‖ mean of the
  stride-(4,8,8) block (64) ‖ mean of the central 2×2×2 of the first (32) = 128.

Every encoder is ``(image, prompt) → features``; ``prompt`` (same shape as ``image``) is added to the image
before the first layer (prompt tuning's learned input prompt, zeros otherwise). The networks are in
``networks.py``; this module imports no PyTorch, so the gateway reads the table and preprocesses radiographs
without loading it (CT patches import it to resample).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.settings import REPO_ROOT


@dataclass(frozen=True)
class EncoderInfo:
    """``name``: API name (``POST /v1/fewshot/tasks`` ``encoder``). ``triton_model``: the ONNX model serving it,
    inputs ``image`` and ``prompt`` (both ``(B, *input_shape)`` float32; prompt is added to the image before the
    first layer, zeros for methods without one), output ``features (B, feature_dim)``. ``input_kind``: what a
    support/predict file must be (``"radiograph"``: PNG/JPEG/DICOM 2-D image; ``"ct-patch"``: NIfTI/.npy HU patch).
    ``has_text``: the encoder has a text tower (zero-shot, CoOp, ConES)."""

    name: str
    triton_model: str
    input_kind: str
    input_shape: tuple[int, ...]
    feature_dim: int
    has_text: bool
    description: str


CT_PATCH_SHAPE = (16, 32, 32)  # z, y, x voxels
CT_SPACING_MM = 3.0  # the VF pretraining's spacing (services/segmentation/checkpoints/pctnet_cpu_vfpretrain)
RADIOGRAPH_SIZE = 128

ENCODERS: dict[str, EncoderInfo] = {
    "chest": EncoderInfo(
        name="chest", triton_model="fewshot_chest", input_kind="radiograph", input_shape=(1, RADIOGRAPH_SIZE,
                                                                                          RADIOGRAPH_SIZE),
        feature_dim=224, has_text=False,
        description="report family's stage-1 visual path (CNN + 3 transformer layers, 10-finding classifier on "
                    "rendered radiographs), frozen; 224-d pooled features"),
    "chest-vlm": EncoderInfo(
        name="chest-vlm", triton_model="fewshot_chest_vlm", input_kind="radiograph",
        input_shape=(1, RADIOGRAPH_SIZE, RADIOGRAPH_SIZE), feature_dim=256, has_text=True,
        description="MedStack's chest vision-language model: the chest visual path + a projection trained "
                    "contrastively against frozen all-MiniLM-L6-v2 embeddings of Open-i reports; 256-d joint space"),
    "ct": EncoderInfo(
        name="ct", triton_model="fewshot_ct", input_kind="ct-patch", input_shape=(1, *CT_PATCH_SHAPE),
        feature_dim=128, has_text=False,
        description="Volume-Fusion-pretrained PCT-Net encoder (self-supervised on CT), 3-D patch 16x32x32 at 3 mm "
                    "(48x96x96 mm), 128-d pooled features"),
}


class UnknownEncoderError(KeyError):
    pass


def info(encoder: str) -> EncoderInfo:
    if encoder not in ENCODERS:
        raise UnknownEncoderError(f"unknown encoder {encoder!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[encoder]


# ------------------------------------------------------------------------------------------- checkpoints
def chest_checkpoint() -> Path:
    """The report family's stage-1 visual path (float16 state dict of KiUT's visual modules)."""
    return REPO_ROOT / "services" / "report" / "checkpoints" / "visual"


def ct_checkpoint() -> Path:
    """The Volume-Fusion-pretrained PCT-Net: the one place that names it (a longer pretraining may replace it)."""
    return REPO_ROOT / "services" / "segmentation" / "checkpoints" / "pctnet_cpu_vfpretrain"


def vlm_checkpoint() -> Path:
    return REPO_ROOT / "services" / "fewshot" / "checkpoints" / "vlm"


# ------------------------------------------------------------------------------------------- preprocessing
def preprocess(encoder: str, image: np.ndarray, spacing_zyx: tuple[float, float, float] | None = None) -> np.ndarray:
    """A decoded image (2-D radiograph pixels, or a HU patch) → the encoder's input ``input_shape`` float32.

    Radiographs: ``services.report.images.preprocess`` (square pad, 128×128, 1st–99th percentile → [0, 1]).
    CT patches ``(D, H, W)`` HU: with ``spacing_zyx`` (mm), the central 48×96×96 mm are cut (padded with air) and
    resampled to 16×32×32; without it, the patch is taken to cover that extent and resampled to 16×32×32.
    HU clipped to [−1000, 1000] and scaled to [−1, 1] (the VF pretraining's normalisation)."""
    meta = info(encoder)
    image = np.asarray(image)
    if meta.input_kind == "radiograph":
        from services.report.images import preprocess as radiograph

        return radiograph(np.asarray(image, dtype=np.float32))[0]
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise ValueError(f"a CT patch must be 3-D (z, y, x), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("CT patch holds non-finite values")
    hu = image.astype(np.float32)
    if spacing_zyx is not None:
        hu = _cut_extent(hu, spacing_zyx)
    import torch  # only CT patches need it: the gateway stays torch-free for radiographs
    import torch.nn.functional as F

    x = torch.from_numpy(np.clip(hu, -1000.0, 1000.0) / 1000.0)[None, None]
    x = F.interpolate(x, size=CT_PATCH_SHAPE, mode="trilinear", align_corners=False)
    return x[0].numpy().astype(np.float32)


def _cut_extent(hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """The central ``CT_PATCH_SHAPE × CT_SPACING_MM`` millimetres of ``hu`` (padded with −1000 HU where short)."""
    want = [int(round(n * CT_SPACING_MM / s)) for n, s in zip(CT_PATCH_SHAPE, spacing_zyx, strict=True)]
    out = np.full(want, -1000.0, np.float32)
    src, dst = [], []
    for have, need in zip(hu.shape, want, strict=True):
        if have >= need:
            a = (have - need) // 2
            src.append(slice(a, a + need))
            dst.append(slice(0, need))
        else:
            a = (need - have) // 2
            src.append(slice(0, have))
            dst.append(slice(a, a + have))
    out[tuple(dst)] = hu[tuple(src)]
    return out
