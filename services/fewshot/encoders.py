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
before the first layer (prompt tuning's learned input prompt, zeros otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


# ------------------------------------------------------------------------------------------- networks
class ChestEncoder(nn.Module):
    """The report family's visual path without its finding head: ``image (B, 1, 128, 128)`` in [0, 1] (+ ``prompt``
    of the same shape) → ``features (B, 224)`` = mean of the stride-16 CNN map (96) ‖ mean of the third encoder
    layer's 64 tokens (128), the finding head's input."""

    def __init__(self, d_model: int = 128, heads: int = 4, ff: int = 256, layers: int = 3) -> None:
        super().__init__()
        from services.report.model import VisualExtractor

        self.visual = VisualExtractor(d_model)
        self.visual_pos = nn.Parameter(torch.zeros(1, 64, d_model))
        self.encoder = nn.ModuleList([nn.TransformerEncoderLayer(d_model, heads, ff, 0.0, batch_first=True,
                                                                 norm_first=True) for _ in range(layers)])
        self.enc_norms = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(layers)])

    def forward(self, image: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        levels, pooled = self.visual((image + prompt) * 2 - 1)  # KiUT.encode's input scaling
        x = levels[0] + self.visual_pos
        for i, layer in enumerate(self.encoder):
            if i > 0:
                x = x + levels[i]
            x = self.enc_norms[i](layer(x)) if i == len(self.encoder) - 1 else layer(x)
        return torch.cat([pooled, x.mean(1)], dim=-1)


class CTEncoder(nn.Module):
    """Encoder half of a PCT-Net built for a 16×32×32 input: ``image (B, 1, 16, 32, 32)`` in [−1, 1] (+ ``prompt``)
    → ``features (B, 128)``: mean of ``enc2`` (32 ch, 8×8×8) ‖ mean of ``enc3`` (64 ch, 4×4×4) ‖ mean of the
    central 2×2×2 of ``enc2`` (32). Windows (4³) fit both levels unclipped, so every weight used is pretrained."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from services.segmentation.pctnet import PCTNetConfig, build_pctnet

        cfg = dict(config)
        cfg["input_size"] = list(CT_PATCH_SHAPE)
        net = build_pctnet(PCTNetConfig.from_dict(cfg))
        for name in ("proj", "stem0", "down1", "stem1", "down2", "enc2", "down3", "enc3"):
            setattr(self, name, getattr(net, name))

    def forward(self, image: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        x = image + prompt
        e2 = self.enc2(self.down2(self.stem1(self.down1(self.stem0(self.proj(x))))))
        e3 = self.enc3(self.down3(e2))
        d, h, w = e2.shape[2:]
        centre = e2[:, :, d // 2 - 1:d // 2 + 1, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1]
        return torch.cat([e2.mean(dim=(2, 3, 4)), e3.mean(dim=(2, 3, 4)), centre.mean(dim=(2, 3, 4))], dim=-1)


def load_chest() -> ChestEncoder:
    state = torch.load(chest_checkpoint() / "model.pt", map_location="cpu", weights_only=True)
    net = ChestEncoder()
    own = net.state_dict()
    picked = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k in own}
    missing = set(own) - set(picked)
    if missing:
        raise RuntimeError(f"chest checkpoint lacks {sorted(missing)[:5]} …")
    net.load_state_dict(picked)
    return net.eval()


def load_ct() -> CTEncoder:
    from safetensors.torch import load_file

    from services.segmentation.checkpoints import WEIGHTS, load_config

    folder = ct_checkpoint()
    net = CTEncoder(load_config(folder)["model"])
    state = load_file(str(folder / WEIGHTS))
    own = net.state_dict()
    picked = {k: state[k] for k in own if k in state and state[k].shape == own[k].shape}
    missing = set(own) - set(picked)
    if missing:
        raise RuntimeError(f"CT checkpoint {folder} does not fit the patch encoder: {sorted(missing)[:5]} …")
    net.load_state_dict(picked)
    return net.eval()


@cache
def _loaded(encoder: str) -> nn.Module:
    if encoder == "chest":
        net = load_chest()
    elif encoder == "chest-vlm":
        from services.fewshot.vlm import load_image_tower

        net = load_image_tower()
    elif encoder == "ct":
        net = load_ct()
    else:
        raise UnknownEncoderError(f"unknown encoder {encoder!r}; known: {', '.join(ENCODERS)}")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def load_encoder(encoder: str) -> nn.Module:
    """The frozen torch module ``(image, prompt) → features`` (eval mode), as exported to ``triton_model``.
    Cached: callers must not modify it."""
    info(encoder)
    return _loaded(encoder)


@torch.no_grad()
def features(encoder: str, images: np.ndarray, prompt: np.ndarray | None = None, batch: int = 64) -> np.ndarray:
    """``images (N, *input_shape)`` float32 → ``(N, feature_dim)`` float32 through the frozen encoder."""
    net = load_encoder(encoder)
    shape = info(encoder).input_shape
    p = torch.zeros((1, *shape)) if prompt is None else torch.from_numpy(np.asarray(prompt, np.float32))[None]
    out = [net(torch.from_numpy(np.ascontiguousarray(images[s:s + batch], dtype=np.float32)), p.expand(
        min(batch, len(images) - s), *shape)).numpy() for s in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, info(encoder).feature_dim), np.float32)
