"""TPV / BEV feature planes: the contract between the encoder (tpv.py) and the field (field.py).

Grid convention (shared by planes, decoded volume and queries): the volume has X x Y x Z *grid points*
spanning the scene range with the end points included (align_corners=True), index order [x, y, z],
index 0 at the minimum corner, ego frame of the input keyframe (x forward, y left, z up). Point i along
x sits at x_min + i * (x_max - x_min) / (X - 1). For the occ preset (257, 257, 25) over
[-40, 40] x [-40, 40] x [-1, 5.4] m that is 0.3125 m in x/y and 0.267 m in z, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor


@dataclass(frozen=True)
class SceneGrid:
    """The scene box and its grid points: set once on the model config, handed to the encoder and the field."""

    range_m: Tuple[float, float, float, float, float, float]
    """x_min, y_min, z_min, x_max, y_max, z_max in metres, reference frame of the input keyframe."""
    grid_xyz: Tuple[int, int, int]
    """Grid points along x, y, z, ends included."""


@dataclass
class TPVPlanes:
    """Three orthogonal feature planes (TPV) or the xy plane alone (BEV)."""

    xy: Float[Tensor, "B C X Y"]
    xz: Optional[Float[Tensor, "B C X Z"]] = None
    """None for BEV."""
    yz: Optional[Float[Tensor, "B C Y Z"]] = None
    """None for BEV."""

    @property
    def is_bev(self) -> bool:
        return self.xz is None

    def volume(self, z_embedding: Optional[Float[Tensor, "C Z"]] = None) -> Float[Tensor, "B C X Y Z"]:
        """Broadcast-sum the planes into a dense volume (TPV), or lift BEV with a per-height embedding."""
        if self.is_bev:
            if z_embedding is None:
                raise ValueError("a BEV volume needs a z embedding (C, Z) to tell heights apart")
            return self.xy[..., None] + z_embedding[None, :, None, None, :]
        assert self.xz is not None and self.yz is not None
        return self.xy[..., None] + self.xz[:, :, :, None, :] + self.yz[:, :, None, :, :]


def grid_points_m(
    range_m: Sequence[float], grid_xyz: Tuple[int, int, int], device: torch.device | str = "cpu"
) -> Tuple[Float[Tensor, "X"], Float[Tensor, "Y"], Float[Tensor, "Z"]]:
    """Metric coordinates of the grid points along x, y and z (end points included)."""
    x_min, y_min, z_min, x_max, y_max, z_max = range_m
    nx, ny, nz = grid_xyz
    return (
        torch.linspace(x_min, x_max, nx, device=device),
        torch.linspace(y_min, y_max, ny, device=device),
        torch.linspace(z_min, z_max, nz, device=device),
    )


def normalise_points(points_m: Float[Tensor, "*batch 3"], range_m: Sequence[float]) -> Float[Tensor, "*batch 3"]:
    """Map metric ego points to [-1, 1] per axis over the scene range (align_corners=True convention)."""
    lo = torch.tensor(range_m[:3], dtype=points_m.dtype, device=points_m.device)
    hi = torch.tensor(range_m[3:], dtype=points_m.dtype, device=points_m.device)
    return (points_m - lo) / (hi - lo) * 2.0 - 1.0
