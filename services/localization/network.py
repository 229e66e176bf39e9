"""MedLAM network, CPU configuration: a 3D U-Net-like encoder/decoder on a fixed cubic crop with two
heads — RDR (a 3-vector whose differences give physical offsets) and MSS (voxel features at ¼, ½
and full resolution for similarity matching).

Layout as in MedLSAM's ``networks/medlam.py`` (conv 3³ → InstanceNorm → ReLU, max-pool ×2, trilinear
upsampling + concatenation); channels and crop are smaller (32³ input, base 8 channels).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    layers = []
    for c in (cin, cout):
        layers += [nn.Conv3d(c, cout, 3, padding=1), nn.InstanceNorm3d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MedLAM(nn.Module):
    """MedLAM, the localiser of MedLSAM: a 3D encoder/decoder whose bottleneck regresses an RDR 3-vector
    (relative distance regression) and whose decoder gives MSS features (multi-scale similarity) at ¼, ½ and
    full resolution.

    ``crop``: side of the cubic input (a multiple of 8; the RDR head is sized for it); ``base``: channels of
    the first encoder level (doubled per level); ``feature_channels``: widths of the ¼, ½ and full-resolution
    features.
    """

    def __init__(self, crop: int = 32, base: int = 8, feature_channels: tuple[int, int, int] = (24, 16, 12)) -> None:
        super().__init__()
        c = (base, base * 2, base * 4, base * 8)
        self.crop = crop
        self.enc0, self.enc1, self.enc2, self.enc3 = _block(1, c[0]), _block(c[0], c[1]), _block(c[1], c[2]), \
            _block(c[2], c[3])
        self.pool = nn.MaxPool3d(2)
        bottom = crop // 8
        self.rdr = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c[3] * bottom**3, 128), nn.Linear(128, 64),
                                 nn.Linear(64, 3))
        f_quarter, f_half, f_full = feature_channels
        self.dec2 = _block(c[3] + c[2], f_quarter)
        self.dec1 = _block(f_quarter + c[1], f_half)
        self.dec0 = _block(f_half + c[0], f_full)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image (N, 1, c, c, c)`` float32 in ``[0, 1]`` (``c = crop``) → (``rdr (N, 3)``, features
        ``(N, 24, c/4, c/4, c/4)``, ``(N, 16, c/2, c/2, c/2)``, ``(N, 12, c, c, c)`` with the default widths).

        E.g. the ``localization_medlam`` export example (two 32³ crops):
        ``(2, 1, 32, 32, 32) → (2, 3), (2, 24, 8, 8, 8), (2, 16, 16, 16, 16), (2, 12, 32, 32, 32)``.
        """
        e0 = self.enc0(image)
        e1 = self.enc1(self.pool(e0))
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        rdr = self.rdr(e3)
        d2 = self.dec2(torch.cat([_up(e3), e2], 1))
        d1 = self.dec1(torch.cat([_up(d2), e1], 1))
        d0 = self.dec0(torch.cat([_up(d1), e0], 1))
        return rdr, d2, d1, d0


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
