"""CT tissue classes from Hounsfield units: a reference model with no learned weights.

It is served like every other model (ONNX through Triton) so that the platform has a model whose
output is known exactly: integration tests and the first demo check real numbers against it, and
it is the HU-threshold baseline the learned segmenters are compared with. Classes follow the usual
HU ranges after a 3×3×3 mean filter that suppresses noise:

    0 air (< -900)   1 lung / low density [-900, -200)   2 fat [-200, -30)
    3 soft tissue [-30, 200)   4 bone / contrast (>= 200)
"""

from __future__ import annotations

import torch
from torch import nn

TISSUE_CLASSES = ("air", "lung", "fat", "soft_tissue", "bone")
# class c covers [BOUNDS[c], BOUNDS[c + 1]) in HU
BOUNDS = (-1e4, -900.0, -200.0, -30.0, 200.0, 1e5)


class HUTissueClassifier(nn.Module):
    """Per-voxel tissue logits from HU.

    Shape contract: (N, 1, D, H, W) HU → (N, 5, D, H, W) logits, e.g.
    (2, 1, 32, 64, 64) → (2, 5, 32, 64, 64). The logit of a class is the signed distance (in
    hundreds of HU) of the smoothed voxel value to the nearer end of the class's interval, so it is
    positive for exactly one class and argmax is the interval the voxel falls in.
    """

    def __init__(self) -> None:
        super().__init__()
        bounds = torch.tensor(BOUNDS, dtype=torch.float32)
        self.register_buffer("low", bounds[:-1].view(1, -1, 1, 1, 1))
        self.register_buffer("high", bounds[1:].view(1, -1, 1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image (N, 1, D, H, W)`` float32 HU → ``(N, 5, D, H, W)`` float32 logits (any size).

        E.g. a batch of two served patches: ``(2, 1, 64, 128, 128) → (2, 5, 64, 128, 128)``.
        """
        smoothed = nn.functional.avg_pool3d(image, 3, stride=1, padding=1, count_include_pad=False)
        return torch.minimum(smoothed - self.low, self.high - smoothed) / 100.0
