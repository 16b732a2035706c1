"""The official eval lattices (`EvalOptions.eval_lattice="official"`, docs/evaluation.md).

The official depth eval renders NUM_RAYS = 450 x 800 rays over the ray crop of a 1600-wide image (`fixed`
sampling: ray (i, j) through (u, v) = (j W / 800, i H / 450), no pixel-centre offset, so the last row and column
stop one spacing short of the crop's far edges); the novel-depth eval renders 96 x 200 (its `--num-rays`
default). Other image widths scale both sizes by W / 1600. The lattice is read back with the official index
(`sample_depth_at_points(..., lattice="official")`).
"""

from __future__ import annotations

from typing import Tuple

import torch
from jaxtyping import Float
from torch import Tensor

OFFICIAL_IMAGE_WIDTH_PX = 1600
"""nuScenes image width the official lattice sizes refer to."""
OFFICIAL_DEPTH_LATTICE_HW: Tuple[int, int] = (450, 800)
"""Official NUM_RAYS of the depth eval (rows, columns) at 1600 px wide."""
OFFICIAL_NOVEL_DEPTH_LATTICE_HW: Tuple[int, int] = (96, 200)
"""Official `--num-rays` default of the novel-depth eval at 1600 px wide."""


def official_lattice_hw(base_hw: Tuple[int, int], image_width_px: int) -> Tuple[int, int]:
    """An official lattice size (`OFFICIAL_*_LATTICE_HW`) scaled to an image `image_width_px` wide (exact at 1600)."""
    scale = image_width_px / OFFICIAL_IMAGE_WIDTH_PX
    return max(1, round(base_hw[0] * scale)), max(1, round(base_hw[1] * scale))


def official_lattice_px(
    image_hw: Tuple[int, int], lattice_hw: Tuple[int, int], device: torch.device | str = "cpu"
) -> Float[Tensor, "h w 2"]:
    """Official fixed lattice in image pixels: (u, v) = (j W / w, i H / h), j < w, i < h (no +0.5)."""
    (height, width), (h, w) = image_hw, lattice_hw
    us = torch.arange(w, dtype=torch.float32, device=device) * (width / w)
    vs = torch.arange(h, dtype=torch.float32, device=device) * (height / h)
    return torch.stack(torch.meshgrid(us, vs, indexing="xy"), dim=-1)
