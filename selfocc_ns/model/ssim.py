"""Monodepth2's 3x3 SSIM dissimilarity and the 0.85 SSIM + 0.15 L1 photometric error."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def ssim(x: Float[Tensor, "N C H W"], y: Float[Tensor, "N C H W"]) -> Float[Tensor, "N C H W"]:
    """Per-pixel SSIM *dissimilarity* clamp((1 - SSIM) / 2, 0, 1) over 3x3 windows (Monodepth2).

    Reflection padding keeps the map the size of the input; identical images give exactly 0.
    """
    x, y = F.pad(x, (1, 1, 1, 1), mode="reflect"), F.pad(y, (1, 1, 1, 1), mode="reflect")
    mu_x, mu_y = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x**2
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y**2
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return torch.clamp((1 - numerator / denominator) / 2, 0, 1)


def photometric_error(
    pred: Float[Tensor, "N C H W"], target: Float[Tensor, "N C H W"], ssim_weight: float = 0.85
) -> Float[Tensor, "N H W"]:
    """Per-pixel 0.85 SSIM + 0.15 L1, both averaged over channels (Monodepth2 / SelfOcc)."""
    l1 = (pred - target).abs().mean(1)
    return ssim_weight * ssim(pred, target).mean(1) + (1.0 - ssim_weight) * l1


def lattice_to_nchw(image: Float[Tensor, "B N h w C"]) -> Float[Tensor, "BN C h w"]:
    """Channels-last lattice images (as rendered) to the NCHW layout the SSIM windows need."""
    return image.flatten(0, 1).permute(0, 3, 1, 2)
