"""PCT-Net: a 3-D segmentation network with parallel convolution and (shifted-)window transformer blocks.

Re-implementation of the architecture described for MIS-FM (``net/pct_net.py`` in the public code,
see ../shared/METHODS.md §1b), written for a fixed patch size so it exports to ONNX with a dynamic
batch axis:

* stem: full-resolution projection + ConvBlock (``x0``), a first down-sampling + ConvBlock (``x1``),
  a second down-sampling (``x2``); ``resolution_mode`` chooses the anisotropy of the two
  down-samplings (0 → total ``[4, 4, 4]``, 1 → ``[2, 4, 4]``, 2 → ``[1, 4, 4]``);
* a pyramid of three PCT blocks (``ConvBlock(x) + SwinLayer(x)``, summed) at ``x2``, ``x2/2``,
  ``x2/4``;
* a decoder (transposed-conv up-sampling, concatenation with the skip, conv, PCT block) back to
  ``x2``;
* a head that up-samples through ``x1`` and ``x0`` (with their skips) to full resolution, then a
  1×1×1 convolution to class logits.

Differences from the public code, on purpose: only the stem/head of the chosen ``resolution_mode``
is built (the public model builds all three); the relative-position index is the standard 3-D one
(the public code's index collapses offsets, METHODS.md §1b), so the released weights do not load;
the shifted-window attention mask is computed once at construction and kept as a buffer, so the
traced graph has no Python-side shape logic and the batch axis stays dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PCTNet", "PCTNetConfig", "PAPER_CONFIG", "CPU_CONFIG", "build_pctnet", "count_parameters"]

_STEM_SCALES = {0: ((2, 2, 2), (2, 2, 2)), 1: ((1, 2, 2), (2, 2, 2)), 2: ((1, 2, 2), (1, 2, 2))}


def _kernel(two_d: bool) -> tuple[int, int, int]:
    return (1, 3, 3) if two_d else (3, 3, 3)


def _padding(two_d: bool) -> tuple[int, int, int]:
    return (0, 1, 1) if two_d else (1, 1, 1)


class ConvBlock(nn.Module):
    """Pre-activation unit: BN → PReLU → Conv → BN → PReLU → Dropout → Conv (no residual)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float, two_d: bool = False) -> None:
        super().__init__()
        k, p = _kernel(two_d), _padding(two_d)
        self.body = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.PReLU(),
            nn.Conv3d(in_channels, out_channels, k, padding=p),
            nn.BatchNorm3d(out_channels),
            nn.PReLU(),
            nn.Dropout(dropout),
            nn.Conv3d(out_channels, out_channels, k, padding=p),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, D, H, W) → (N, out_channels, D, H, W)``, size kept (padded convolutions).

        E.g. the served net's ``stem1`` (``ConvBlock(16, 16, 0.0)``): ``(2, 16, 32, 48, 48) → (2, 16, 32, 48, 48)``.
        """
        return self.body(x)


class PreActConv(nn.Sequential):
    """BN → PReLU → Conv, used after pooling and after concatenation."""

    def __init__(self, in_channels: int, out_channels: int, two_d: bool = False) -> None:
        super().__init__(
            nn.BatchNorm3d(in_channels),
            nn.PReLU(),
            nn.Conv3d(in_channels, out_channels, _kernel(two_d), padding=_padding(two_d)),
        )


class DownSample(nn.Module):
    """Max-pool by ``scale`` then BN → PReLU → Conv to the next width."""

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int]) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(tuple(scale), stride=tuple(scale))
        self.conv = PreActConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, D, H, W) → (N, out_channels, D/sd, H/sh, W/sw)`` for ``scale = (sd, sh, sw)``.

        E.g. the served net's ``down1`` (8 → 16 channels, scale ``(1, 2, 2)``):
        ``(2, 8, 32, 96, 96) → (2, 16, 32, 48, 48)``.
        """
        return self.conv(self.pool(x))


class UpCat(nn.Module):
    """BN → PReLU → transposed conv by ``scale``, concatenate the skip, BN → PReLU → Conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scale: Sequence[int],
                 two_d: bool = False) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.BatchNorm3d(in_channels),
            nn.PReLU(),
            nn.ConvTranspose3d(in_channels, skip_channels, tuple(scale), stride=tuple(scale)),
        )
        self.fuse = PreActConv(2 * skip_channels, out_channels, two_d=two_d)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x (N, in_channels, D/sd, H/sh, W/sw)``, ``skip (N, skip_channels, D, H, W)`` →
        ``(N, out_channels, D, H, W)`` for ``scale = (sd, sh, sw)``.

        E.g. the served net's ``up1`` (16 → 8 channels, scale ``(1, 2, 2)``): ``x (2, 16, 32, 48, 48)``,
        ``skip (2, 8, 32, 96, 96) → (2, 8, 32, 96, 96)``.
        """
        return self.fuse(torch.cat([skip, self.up(x)], dim=1))


class DropPath(nn.Module):
    """Stochastic depth per sample; identity in eval mode (and therefore in the exported graph)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, ...) → (N, ...)``, same shape; in training each sample is zeroed with probability ``p`` and
        the others scaled by ``1 / (1 - p)``.

        E.g. on the served net's level-2 tokens: ``(2, 9216, 32) → (2, 9216, 32)``.
        """
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def _window_geometry(
    size: Sequence[int], window: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]:
    """Per-axis window (clipped to the feature size), shift (0 where the axis fits in one window), and
    padded size (a multiple of the window)."""
    win = tuple(min(int(w), int(s)) for w, s in zip(window, size, strict=True))
    shift = tuple(0 if s <= w else w // 2 for w, s in zip(win, size, strict=True))
    padded = tuple(int(np.ceil(s / w)) * w for s, w in zip(size, win, strict=True))
    return win, shift, padded  # type: ignore[return-value]


def _shift_mask(padded: Sequence[int], win: Sequence[int], shift: Sequence[int]) -> torch.Tensor:
    """Additive attention mask (n_windows, N, N) for shifted windows: -100 between tokens that came from
    different regions of the un-rolled volume, 0 otherwise."""
    region = np.zeros(tuple(padded), dtype=np.int64)
    count = 0
    slices_per_axis = []
    for p, w, s in zip(padded, win, shift, strict=True):
        if s == 0:
            slices_per_axis.append([slice(0, p)])
        else:
            slices_per_axis.append([slice(0, p - w), slice(p - w, p - s), slice(p - s, p)])
    for sd in slices_per_axis[0]:
        for sh in slices_per_axis[1]:
            for sw in slices_per_axis[2]:
                region[sd, sh, sw] = count
                count += 1
    d, h, w = padded
    wd, wh, ww = win
    windows = region.reshape(d // wd, wd, h // wh, wh, w // ww, ww).transpose(0, 2, 4, 1, 3, 5)
    windows = windows.reshape(-1, wd * wh * ww)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.from_numpy(np.where(diff != 0, -100.0, 0.0).astype(np.float32))


def _relative_index(win: Sequence[int]) -> torch.Tensor:
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in win], indexing="ij")).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    rel = rel + np.array([w - 1 for w in win])[:, None, None]
    wd, wh, ww = win
    idx = rel[0] * (2 * wh - 1) * (2 * ww - 1) + rel[1] * (2 * ww - 1) + rel[2]
    return torch.from_numpy(idx.astype(np.int64))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside 3-D windows with a learned relative-position bias."""

    def __init__(self, dim: int, heads: int, win: Sequence[int], attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        n_rel = int(np.prod([2 * w - 1 for w in win]))
        self.bias_table = nn.Parameter(torch.zeros(n_rel, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("rel_index", _relative_index(win), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x (B·nW, N, C)`` tokens grouped by window (``N = wd·wh·ww``), ``mask (nW, N, N)`` additive (0 or -100)
        or ``None`` → ``(B·nW, N, C)``.

        E.g. the served net's level 2 (window 4³, 144 windows on 16×24×24, ``dim=32``, 2 heads) at batch 2:
        ``x (288, 64, 32)``, ``mask (144, 64, 64) → (288, 64, 32)``.
        """
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.bias_table[self.rel_index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            n_win = mask.shape[0]
            attn = attn.reshape(-1, n_win, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape(-1, self.heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(-1, n, c)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """Pre-norm Swin block over a fixed feature size (D, H, W); ``shifted`` selects SW-MSA."""

    def __init__(self, dim: int, heads: int, size: Sequence[int], window: Sequence[int], shifted: bool,
                 mlp_ratio: float, dropout: float, drop_path: float) -> None:
        super().__init__()
        self.size = tuple(int(s) for s in size)
        win, shift, padded = _window_geometry(self.size, window)
        self.win, self.padded = win, padded
        self.shift = shift if shifted else (0, 0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, win, attn_drop=dropout, proj_drop=dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.has_mask = any(self.shift)
        mask = _shift_mask(padded, win, self.shift) if self.has_mask else torch.zeros(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D·H·W, C) → (B, D·H·W, C)`` with ``(D, H, W) == size`` (tokens in z, y, x order).

        E.g. the served net's level 2 (size ``(16, 24, 24)``, ``dim=32``): ``(2, 9216, 32) → (2, 9216, 32)``.
        """
        d, h, w = self.size
        pd, ph, pw = self.padded
        wd, wh, ww = self.win
        c = x.shape[-1]
        y = self.norm1(x).reshape(-1, d, h, w, c)
        if (pd, ph, pw) != (d, h, w):
            y = F.pad(y, (0, 0, 0, pw - w, 0, ph - h, 0, pd - d))
        if self.has_mask:
            y = torch.roll(y, shifts=tuple(-s for s in self.shift), dims=(1, 2, 3))
        y = y.reshape(-1, pd // wd, wd, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        y = y.reshape(-1, wd * wh * ww, c)
        y = self.attn(y, self.attn_mask if self.has_mask else None)
        y = y.reshape(-1, pd // wd, ph // wh, pw // ww, wd, wh, ww, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        y = y.reshape(-1, pd, ph, pw, c)
        if self.has_mask:
            y = torch.roll(y, shifts=self.shift, dims=(1, 2, 3))
        y = y[:, :d, :h, :w, :].reshape(-1, d * h * w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinLayer(nn.Module):
    """``depth`` Swin blocks alternating W-MSA and SW-MSA on a (B, C, D, H, W) map."""

    def __init__(self, dim: int, heads: int, size: Sequence[int], window: Sequence[int], depth: int,
                 dropout: float, drop_path: float, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, size, window, shifted=i % 2 == 1, mlp_ratio=mlp_ratio, dropout=dropout,
                      drop_path=drop_path)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W) → (B, C, D, H, W)`` with ``(D, H, W) == size``.

        E.g. the served net's level 2: ``(2, 32, 16, 24, 24) → (2, 32, 16, 24, 24)``.
        """
        c, d, h, w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        t = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            t = block(t)
        return t.transpose(1, 2).reshape(-1, c, d, h, w)


class PCTBlock(nn.Module):
    """Parallel convolution–transformer block: ``ConvBlock(x) + SwinLayer(x)``."""

    def __init__(self, dim: int, heads: int, size: Sequence[int], window: Sequence[int], depth: int,
                 dropout: float, drop_path: float) -> None:
        super().__init__()
        self.conv = ConvBlock(dim, dim, dropout)
        self.swin = SwinLayer(dim, heads, size, window, depth, dropout, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, D, H, W) → (B, dim, D, H, W)`` with ``(D, H, W) == size``.

        E.g. the served net's ``enc2``: ``(2, 32, 16, 24, 24) → (2, 32, 16, 24, 24)``.
        """
        return self.conv(x) + self.swin(x)


@dataclass(frozen=True)
class PCTNetConfig:
    """Everything needed to rebuild a PCT-Net; written next to every checkpoint."""

    in_channels: int = 1
    out_channels: int = 2
    input_size: tuple[int, int, int] = (64, 128, 128)
    feature_channels: tuple[int, int, int, int, int] = (24, 48, 128, 256, 512)
    dropout: tuple[float, float, float, float, float] = (0.0, 0.0, 0.2, 0.2, 0.2)
    resolution_mode: int = 1
    depths: tuple[int, int, int] = (2, 2, 2)
    num_heads: tuple[int, int, int] = (4, 8, 16)
    window_size: tuple[int, int, int] = (6, 6, 6)
    drop_path: float = 0.2
    spatial_dims: int = 3
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PCTNetConfig:
        tuples = {"input_size", "feature_channels", "dropout", "depths", "num_heads", "window_size"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


#: The configuration of the public MIS-FM demo (about 20 M parameters at 2 classes).
PAPER_CONFIG = PCTNetConfig()

#: The configuration we train on 2 CPU cores and serve (see docs/segmentation.md).
CPU_CONFIG = PCTNetConfig(
    input_size=(32, 96, 96),
    feature_channels=(8, 16, 32, 64, 128),
    dropout=(0.0, 0.0, 0.0, 0.1, 0.1),
    resolution_mode=1,
    depths=(2, 2, 2),
    num_heads=(2, 4, 8),
    window_size=(4, 4, 4),
    drop_path=0.0,
)


class PCTNet(nn.Module):
    """PCT-Net for 3-D segmentation at a fixed patch size.

    Shape contract: ``(N, in_channels, D, H, W) → (N, out_channels, D, H, W)`` with
    ``(D, H, W) == input_size``; e.g. with :data:`CPU_CONFIG` and 12 classes
    ``(2, 1, 32, 96, 96) → (2, 12, 32, 96, 96)``.

    ``input_size`` must be divisible by the total down-sampling: ``stem scale × 4`` per axis, where the
    stem scale is ``[4, 4, 4]``, ``[2, 4, 4]`` or ``[1, 4, 4]`` for ``resolution_mode`` 0, 1, 2.

    Example::

        >>> net = PCTNet(spatial_dims=3, in_channels=1, out_channels=3, input_size=(16, 32, 32),
        ...              feature_channels=(4, 8, 16, 16, 16), num_heads=(1, 1, 1), window_size=(2, 2, 2))
        >>> net(torch.zeros(2, 1, 16, 32, 32)).shape
        torch.Size([2, 3, 16, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        input_size: Sequence[int] = (64, 128, 128),
        feature_channels: Sequence[int] = (24, 48, 128, 256, 512),
        dropout: Sequence[float] = (0.0, 0.0, 0.2, 0.2, 0.2),
        resolution_mode: int = 1,
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (4, 8, 16),
        window_size: Sequence[int] = (6, 6, 6),
        drop_path: float = 0.2,
    ) -> None:
        super().__init__()
        _validate(spatial_dims, in_channels, out_channels, input_size, feature_channels, dropout,
                  resolution_mode, depths, num_heads, window_size, drop_path)
        self.input_size = tuple(int(s) for s in input_size)
        self.out_channels = out_channels
        c0, c1, c2, c3, c4 = (int(c) for c in feature_channels)
        p0, p1, p2, p3, p4 = (float(p) for p in dropout)
        s1, s2 = _STEM_SCALES[resolution_mode]
        two_d0 = resolution_mode in (1, 2)  # full-resolution level of an anisotropic stem: in-plane kernels
        two_d1 = resolution_mode == 2
        size2 = tuple(s // (a * b) for s, a, b in zip(self.input_size, s1, s2, strict=True))
        size3 = tuple(s // 2 for s in size2)
        size4 = tuple(s // 4 for s in size2)

        self.proj = nn.Conv3d(in_channels, c0, _kernel(two_d0), padding=_padding(two_d0))
        self.stem0 = ConvBlock(c0, c0, p0, two_d=two_d0)
        self.down1 = DownSample(c0, c1, s1)
        self.stem1 = ConvBlock(c1, c1, p1, two_d=two_d1)
        self.down2 = DownSample(c1, c2, s2)

        def pct(dim: int, heads: int, size: Sequence[int], depth: int, p: float) -> PCTBlock:
            return PCTBlock(dim, heads, size, window_size, depth, p, drop_path)

        self.enc2 = pct(c2, num_heads[0], size2, depths[0], p2)
        self.down3 = DownSample(c2, c3, (2, 2, 2))
        self.enc3 = pct(c3, num_heads[1], size3, depths[1], p3)
        self.down4 = DownSample(c3, c4, (2, 2, 2))
        self.enc4 = pct(c4, num_heads[2], size4, depths[2], p4)
        self.up4 = UpCat(c4, c3, c3, (2, 2, 2))
        self.dec3 = pct(c3, num_heads[1], size3, depths[1], p3)
        self.up3 = UpCat(c3, c2, c2, (2, 2, 2))
        self.dec2 = pct(c2, num_heads[0], size2, depths[0], p2)
        self.up2 = UpCat(c2, c1, c1, s2, two_d=two_d1)
        self.dec1 = ConvBlock(c1, c1, p1, two_d=two_d1)
        self.up1 = UpCat(c1, c0, c0, s1, two_d=two_d0)
        self.dec0 = ConvBlock(c0, c0, p0, two_d=two_d0)
        self.head = nn.Sequential(nn.BatchNorm3d(c0), nn.PReLU(), nn.Conv3d(c0, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_channels, D, H, W)`` float32 → ``(N, out_channels, D, H, W)`` class logits, with
        ``(D, H, W) == input_size`` (a ``ValueError`` otherwise, except while tracing, compiling or exporting).

        E.g. the served model (:data:`CPU_CONFIG`, 12 classes): ``(2, 1, 32, 96, 96) → (2, 12, 32, 96, 96)``.
        """
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            if tuple(x.shape[2:]) != self.input_size:
                raise ValueError(f"PCTNet expects spatial size {self.input_size}, got {tuple(x.shape[2:])}")
        x0 = self.stem0(self.proj(x))
        x1 = self.stem1(self.down1(x0))
        e2 = self.enc2(self.down2(x1))
        e3 = self.enc3(self.down3(e2))
        e4 = self.enc4(self.down4(e3))
        d3 = self.dec3(self.up4(e4, e3))
        d2 = self.dec2(self.up3(d3, e2))
        d1 = self.dec1(self.up2(d2, x1))
        d0 = self.dec0(self.up1(d1, x0))
        return self.head(d0)


def _validate(spatial_dims: int, in_channels: int, out_channels: int, input_size: Sequence[int],
              feature_channels: Sequence[int], dropout: Sequence[float], resolution_mode: int,
              depths: Sequence[int], num_heads: Sequence[int], window_size: Sequence[int],
              drop_path: float) -> None:
    if spatial_dims != 3:
        raise ValueError(f"spatial_dims must be 3 (PCT-Net is a 3-D network), got {spatial_dims}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if out_channels < 2:
        raise ValueError(f"out_channels must be >= 2 (background + at least one class), got {out_channels}")
    if resolution_mode not in _STEM_SCALES:
        raise ValueError(f"resolution_mode must be one of {sorted(_STEM_SCALES)}, got {resolution_mode}")
    if len(input_size) != 3 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"input_size must be three positive sizes (D, H, W), got {tuple(input_size)}")
    s1, s2 = _STEM_SCALES[resolution_mode]
    total = tuple(a * b * 4 for a, b in zip(s1, s2, strict=True))
    if any(int(s) % t for s, t in zip(input_size, total, strict=True)):
        raise ValueError(
            f"input_size {tuple(input_size)} must be divisible by {total} per axis for resolution_mode "
            f"{resolution_mode}"
        )
    if len(feature_channels) != 5 or any(int(c) < 1 for c in feature_channels):
        raise ValueError(f"feature_channels must be five positive widths, got {tuple(feature_channels)}")
    if len(dropout) != 5 or any(not 0.0 <= float(p) < 1.0 for p in dropout):
        raise ValueError(f"dropout must be five probabilities in [0, 1), got {tuple(dropout)}")
    if len(depths) != 3 or any(int(d) < 1 for d in depths):
        raise ValueError(f"depths must be three positive block counts, got {tuple(depths)}")
    if len(num_heads) != 3 or any(int(h) < 1 for h in num_heads):
        raise ValueError(f"num_heads must be three positive head counts, got {tuple(num_heads)}")
    for level, (c, h) in enumerate(zip(feature_channels[2:], num_heads, strict=True)):
        if int(c) % int(h):
            raise ValueError(f"num_heads[{level}]={h} must divide feature_channels[{level + 2}]={c}")
    if len(window_size) != 3 or any(int(w) < 1 for w in window_size):
        raise ValueError(f"window_size must be three positive sizes, got {tuple(window_size)}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")


def build_pctnet(config: PCTNetConfig) -> PCTNet:
    """Build a network from a config (as written into config.json next to a checkpoint)."""
    return PCTNet(
        spatial_dims=config.spatial_dims,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        input_size=config.input_size,
        feature_channels=config.feature_channels,
        dropout=config.dropout,
        resolution_mode=config.resolution_mode,
        depths=config.depths,
        num_heads=config.num_heads,
        window_size=config.window_size,
        drop_path=config.drop_path,
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
