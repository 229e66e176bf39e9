"""The encoders' networks (PyTorch): ``(image, prompt) → features`` modules, their checkpoint loading, and batched
feature extraction. The table, checkpoint paths and preprocessing are in ``encoders.py`` (no PyTorch at import).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn

from services.fewshot.encoders import (
    CT_PATCH_SHAPE,
    ENCODERS,
    UnknownEncoderError,
    chest_checkpoint,
    ct_checkpoint,
    info,
)


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
