"""The two umcam networks: a VGG-style CAM classifier with three heads, and a 2-D U-Net.

`CamClassifier` (METHODS §4a, CPU-sized): VGG-style blocks of 3×3 conv + BatchNorm + ReLU at
widths (w, 2w, 4w, 4w), max-pooling after blocks 1-3 and none after block 4, whose convs are
dilated (d = 2) with Dropout — output stride 8. Each of blocks 2, 3 and 4 (1/2, 1/4, 1/8 of the
slice) ends in its own head: a 1×1 conv to one "brain" class map, global-average-pooled to a
logit. Trained with a loss on all three logits, so every resolution has a classifier of its own.

Grad-CAM in a forward pass: with logit = mean_xy(Σ_k w_k A_k + b), the gradient of the logit with
respect to A_k is w_k / (H W) at every pixel, so Grad-CAM's channel weights are w_k / (H W) and
the map is ReLU(Σ_k w_k A_k) up to a positive factor that the min-max normalisation removes. No
backward pass is needed and the whole thing exports to ONNX (`CamExport`). (The paper runs Grad-CAM
through the rest of one VGG16 for its intermediate layers; here each layer has its own head.)

    model = CamClassifier(in_channels=1, width=16)
    logits = model(x)                   # (N, 1, 128, 128) -> (N, 3): 1/2, 1/4, 1/8 heads
    presence, cams = CamExport(model)(x)  # (N, 1), (N, 3, 128, 128) in [0, 1]

`UNet` (METHODS §4d): a plain 2-D U-Net, ``(N, 1, 128, 128) → (N, 2, 128, 128)`` logits
(background, brain), four resolutions, widths (w, 2w, 4w, 8w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CamClassifier", "CamExport", "UNet"]


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _check_input(x: torch.Tensor, in_channels: int) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    if x.ndim != 4 or x.shape[1] != in_channels or x.shape[2] % 8 or x.shape[3] % 8:
        raise ValueError(f"input must be (N, {in_channels}, H, W) with H, W multiples of 8, got {tuple(x.shape)}")


class CamClassifier(nn.Module):
    """Slice classifier "brain present" with class-map heads at 1/2, 1/4 and 1/8 resolution.

    ``(N, 1, H, W) → (N, 3)`` logits; `class_maps` gives the heads' maps before pooling.
    Example: ``(2, 1, 128, 128) → (2, 3)``.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, dropout: float = 0.5) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be positive, got {in_channels}, {width}")
        self.in_channels = in_channels
        w = width
        self.block1 = nn.Sequential(_conv(in_channels, w), _conv(w, w))
        self.block2 = nn.Sequential(nn.MaxPool2d(2), _conv(w, 2 * w), _conv(2 * w, 2 * w))
        self.block3 = nn.Sequential(nn.MaxPool2d(2), _conv(2 * w, 4 * w), _conv(4 * w, 4 * w), _conv(4 * w, 4 * w))
        # block 4: a stride-1 stage (no pooling after it) of dilated convs, each followed by Dropout
        self.block4 = nn.Sequential(nn.MaxPool2d(2), *[m for _ in range(3) for m in
                                                       (_conv(4 * w, 4 * w, dilation=2), nn.Dropout(dropout))])
        self.heads = nn.ModuleList([nn.Conv2d(c, 1, 1) for c in (2 * w, 4 * w, 4 * w)])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input(x, self.in_channels)
        f2 = self.block2(self.block1(x))
        f3 = self.block3(f2)
        f4 = self.block4(f3)
        return [f2, f3, f4]

    def class_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per head, Σ_k w_k A_k (bias excluded): ``(N, 1, h, w)`` at 1/2, 1/4, 1/8."""
        return [F.conv2d(f, head.weight) for f, head in zip(self.features(x), self.heads, strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [head(f).mean(dim=(2, 3)) for f, head in zip(self.features(x), self.heads, strict=True)]
        return torch.cat(logits, dim=1)


class CamExport(nn.Module):
    """What ``umcam_cam`` serves: ``image (N, 1, H, W) → presence (N, 1), cams (N, 3, H, W)``.

    presence: sigmoid of the 1/8 head's logit; cams: Grad-CAM of each head (ReLU of its class map),
    bilinearly upsampled to H×W, min-max normalised to [0, 1] per slice and map.
    """

    def __init__(self, classifier: CamClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.classifier.features(image)
        size = image.shape[-2:]
        cams = []
        for f, head in zip(features, self.classifier.heads, strict=True):
            raw = F.conv2d(f, head.weight)
            cam = F.interpolate(torch.relu(raw), size=size, mode="bilinear", align_corners=False)
            lo = cam.amin(dim=(2, 3), keepdim=True)
            hi = cam.amax(dim=(2, 3), keepdim=True)
            cams.append((cam - lo) / (hi - lo + 1e-6))
        last = self.classifier.heads[-1]
        logit = last(features[-1]).mean(dim=(2, 3))
        return torch.sigmoid(logit), torch.cat(cams, dim=1)


class UNet(nn.Module):
    """2-D U-Net. ``(N, in_channels, H, W) → (N, out_channels, H, W)``, H and W multiples of 8.

    Example: ``UNet(1, 2, width=16)``: ``(2, 1, 128, 128) → (2, 2, 128, 128)``.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, width: int = 16) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or width < 1:
            raise ValueError(f"in_channels, out_channels, width must be positive, got "
                             f"{in_channels}, {out_channels}, {width}")
        self.in_channels = in_channels
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in widths:
            self.down.append(nn.Sequential(_conv(cin, c), _conv(c, c)))
            cin = c
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for c_low, c in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose2d(c_low, c, 2, stride=2))
            self.fuse.append(nn.Sequential(_conv(2 * c, c), _conv(c, c)))
        self.out = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse, strict=True):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
        return self.out(x)
