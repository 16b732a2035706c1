"""Geometry of the TPV / BEV lifting: plane cells, pillars, camera projection, cross-plane reference points.

Conventions (planes.py): the volume has X x Y x Z grid *points* spanning ``range_m`` with the ends included,
index order [x, y, z], ego frame of the input keyframe. A plane is stored as an image (rows, cols):
xy = (X, Y), xz = (X, Z), yz = (Y, Z); its queries are flattened row-major, so query ``r * cols + c`` is
the cell (row r, col c). Sampling a plane with ``F.grid_sample(..., align_corners=True)`` takes
grid[..., 0] = normalised column coordinate, grid[..., 1] = normalised row coordinate, -1 and +1 being
the first and last grid point.

Images are sampled with ``align_corners=False``: a pixel coordinate u in [0, w) maps to 2 u / w - 1, so a
feature-map cell at any stride covers the image pixels it was computed from (the official mmcv
convention). A point behind a camera is sent to ``OUTSIDE_IMAGE`` so that it samples zeros.

Official conventions (flags of `TPVEncoderConfig`, on in the presets named after official configs):

- ``image_visibility="official"``: a point is seen when p2 > 1e-5 and 0 < u / w < 1 and 0 < v / h < 1
  (strict), and a point behind the camera keeps its projection divided by 1e-5 (normally far outside).
- ``self_attn_reference="official"``: the official cross-plane references are i / n on an axis of n cells
  (pillars linspace(0, n - 1, P) / n) read with ``align_corners=False``, i.e. at index i - 0.5 (half a cell
  before the grid point); offsets are in cells (1 / n). `cross_plane_reference_grid(..., "official")` returns
  those [0, 1] values; the attention computes 2 (ref + offset / n) - 1 as mmcv does.
- ``pe_layout="interleaved"``: sin and cos interleaved per frequency (official TPVPositionalEncoding), of
  coordinates computed with the official float32 arithmetic (`official_plane_cells_unit`): the frequencies
  reach pi 2^10, which turns the last-bit difference between linspace and the official grid-to-metre mapping
  into ~2e-4 in the features.
"""

from __future__ import annotations

import math
from typing import Dict, List, Literal, Sequence, Tuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from selfocc_ns.model.planes import grid_points_m

PLANE_AXES: Dict[str, Tuple[int, int]] = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}
"""(row axis, column axis) of each plane, axes numbered x=0, y=1, z=2."""
MISSING_AXIS: Dict[str, int] = {"xy": 2, "xz": 1, "yz": 0}
"""The axis a plane collapses: its pillars run along it."""
ImageVisibility = Literal["inclusive", "official"]
SelfAttnReference = Literal["grid_point", "official"]
PeLayout = Literal["blocked", "interleaved"]
OUTSIDE_IMAGE = -10.0
"""Normalised image coordinate for points behind a camera: far enough outside [-1, 1] that learned offsets
of a few cells cannot bring it back, so such points read zeros (zero padding)."""


def plane_shape(grid_xyz: Sequence[int], plane: str) -> Tuple[int, int]:
    """(rows, cols) of a plane in grid points."""
    row_axis, col_axis = PLANE_AXES[plane]
    return grid_xyz[row_axis], grid_xyz[col_axis]


def plane_cells_m(range_m: Sequence[float], grid_xyz: Sequence[int], plane: str) -> Float[Tensor, "Q 2"]:
    """Metric (row-axis, col-axis) coordinates of a plane's cells, flattened row-major."""
    axes_m = grid_points_m(range_m, tuple(grid_xyz))
    row_axis, col_axis = PLANE_AXES[plane]
    rows_m, cols_m = torch.meshgrid(axes_m[row_axis], axes_m[col_axis], indexing="ij")
    return torch.stack([rows_m.reshape(-1), cols_m.reshape(-1)], dim=-1)


def pillar_points_m(
    range_m: Sequence[float], grid_xyz: Sequence[int], plane: str, num_anchors: int
) -> Float[Tensor, "Q D 3"]:
    """3D reference points of each plane cell: ``num_anchors`` points along the plane's missing axis,
    evenly spaced over the scene range with both ends included (the official `linspace(0, size - 1, D)`)."""
    cells_m = plane_cells_m(range_m, grid_xyz, plane)
    missing = MISSING_AXIS[plane]
    anchors_m = torch.linspace(range_m[missing], range_m[missing + 3], num_anchors)
    points = torch.empty(cells_m.shape[0], num_anchors, 3)
    row_axis, col_axis = PLANE_AXES[plane]
    points[:, :, row_axis] = cells_m[:, None, 0]
    points[:, :, col_axis] = cells_m[:, None, 1]
    points[:, :, missing] = anchors_m[None, :]
    return points


def project_to_images(
    points_m: Float[Tensor, "Q D 3"],
    ego2img: Float[Tensor, "B N 4 4"],
    image_hw: Tuple[int, int],
    eps: float = 1e-5,
    visibility: ImageVisibility = "inclusive",
) -> Tuple[Float[Tensor, "B N Q D 2"], Bool[Tensor, "B N Q D"]]:
    """Project ego points into every camera.

    Returns the normalised image coordinates (x from u, y from v, align_corners=False) and whether each
    point is seen. "inclusive": p2 > eps and 0 <= u < w and 0 <= v < h, points behind the camera at
    OUTSIDE_IMAGE. "official": p2 > eps and 0 < u / w < 1 and 0 < v / h < 1, and points behind the camera keep
    their projection divided by max(p2, eps) (the official point_sampling).
    """
    height, width = image_hw
    ego2img = ego2img.to(points_m.dtype)
    # p = K [R|t] [X; 1] for all cameras at once, without building (B N Q D 4) homogeneous copies.
    projected = torch.einsum("bnij,qdj->bnqdi", ego2img[..., :3, :3], points_m) + ego2img[:, :, None, None, :3, 3]
    depth = projected[..., 2]
    in_front = depth > eps
    uv = projected[..., :2] / depth.clamp(min=eps)[..., None]
    size = torch.tensor([width, height], dtype=uv.dtype, device=uv.device)
    if visibility == "official":
        uv01 = uv / size
        visible = in_front & (uv01 > 0.0).all(-1) & (uv01 < 1.0).all(-1)
        return 2.0 * uv01 - 1.0, visible
    if visibility != "inclusive":
        raise ValueError(f"unknown image visibility {visibility!r}; expected 'inclusive' or 'official'")
    visible = in_front & (uv[..., 0] >= 0) & (uv[..., 0] < width) & (uv[..., 1] >= 0) & (uv[..., 1] < height)
    grid = 2.0 * uv / size - 1.0
    grid = torch.where(in_front[..., None], grid, torch.full_like(grid, OUTSIDE_IMAGE))
    return grid, visible


def normalised_axis_coords(n: int) -> Tensor:
    """Grid-point coordinates (n,) along one axis in grid_sample's align_corners=True convention."""
    return torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)


def official_axis_refs(n: int, num: int) -> Tensor:
    """Official reference coordinates in [0, 1) on an axis of n cells: ``num`` evenly spread cell indices
    (both ends included) divided by n (the official i / n convention, index i - 0.5 under align_corners=False)."""
    return torch.linspace(0.0, n - 1, num) / n


def cross_plane_reference_grid(
    grid_xyz: Sequence[int], planes: Sequence[str], num_points: int, convention: SelfAttnReference = "grid_point"
) -> Float[Tensor, "Qtot L P 2"]:
    """Reference points of every plane query on every plane ("level") for cross-plane self-attention.

    A query of plane A lies on the pillar through its cell along A's missing axis. On a plane B it reads the
    points of that pillar: its own coordinates on the axes it shares with B, and ``num_points`` values
    evenly spread over B's other axis (the one A collapses). On its own plane all points start at the cell.
    Queries are the planes' queries concatenated in ``planes`` order; levels are ``planes``.

    "grid_point": normalised coordinates in [-1, 1] for align_corners=True (exactly on the grid points).
    "official": the official i / n values in [0, 1) (see the module docstring), for align_corners=False.
    """
    if convention not in ("grid_point", "official"):
        raise ValueError(f"unknown self-attention reference convention {convention!r}")

    def axis(n: int, num: int) -> Tensor:
        """``num`` references spread over an axis of ``n`` grid points (num = n: every point)."""
        return official_axis_refs(n, num) if convention == "official" else normalised_axis_coords(num)

    per_plane: List[Tensor] = []
    for query_plane in planes:
        rows, cols = plane_shape(grid_xyz, query_plane)
        row_axis, col_axis = PLANE_AXES[query_plane]
        row_n, col_n = torch.meshgrid(axis(rows, rows), axis(cols, cols), indexing="ij")
        known = {row_axis: row_n.reshape(-1), col_axis: col_n.reshape(-1)}
        num_queries = rows * cols
        levels = []
        for level_plane in planes:
            level_row_axis, level_col_axis = PLANE_AXES[level_plane]
            coords = []
            for level_axis in (level_col_axis, level_row_axis):  # grid_sample wants (x = column, y = row)
                if level_axis in known:
                    coords.append(known[level_axis][:, None].expand(num_queries, num_points))
                else:
                    pillar = axis(grid_xyz[level_axis], num_points)
                    coords.append(pillar[None, :].expand(num_queries, num_points))
            levels.append(torch.stack(coords, dim=-1))
        per_plane.append(torch.stack(levels, dim=1))
    return torch.cat(per_plane, dim=0)


def fourier_features(
    coords01: Float[Tensor, "Q K"], num_freqs: int, layout: PeLayout = "blocked"
) -> Float[Tensor, "Q 2*K*F"]:
    """sin/cos of coordinates in [0, 1] at frequencies pi * 2^k, k = -1 .. num_freqs - 2 (as the official
    TPVPositionalEncoding: the lowest frequency spans the whole range without wrapping).

    Column of coordinate c, frequency j: "blocked" sin at c 2F + j, cos at c 2F + F + j; "interleaved" (official)
    sin at c 2F + 2 j, cos at c 2F + 2 j + 1.
    """
    freqs = math.pi * (2.0 ** torch.arange(-1, num_freqs - 1, dtype=coords01.dtype))
    angles = coords01[..., None] * freqs
    if layout == "interleaved":
        return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)
    if layout != "blocked":
        raise ValueError(f"unknown positional-encoding layout {layout!r}; expected 'blocked' or 'interleaved'")
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)


def plane_cells_unit(range_m: Sequence[float], grid_xyz: Sequence[int], plane: str) -> Float[Tensor, "Q 2"]:
    """A plane's cell coordinates normalised to [0, 1] over the scene range (input of the positional code)."""
    cells_m = plane_cells_m(range_m, grid_xyz, plane)
    row_axis, col_axis = PLANE_AXES[plane]
    lo = torch.tensor([range_m[row_axis], range_m[col_axis]])
    hi = torch.tensor([range_m[row_axis + 3], range_m[col_axis + 3]])
    return (cells_m - lo) / (hi - lo)


def official_axis_m(n: int, lo: float, hi: float, centred: bool) -> Float[Tensor, "n"]:
    """Grid-point coordinates of one axis in metres, in the official float32 arithmetic (linear grid2meter).

    ``centred`` (x, y): sign(i - c) (|i - c| / c) r about the centre, c = (n - 1) / 2, r = (hi - lo) / 2;
    otherwise (z): (i / (n - 1)) (hi - lo) + lo. Mathematically both are lo + i (hi - lo) / (n - 1).
    """
    index = torch.arange(n, dtype=torch.float32)
    if centred:
        half_cells, half_range, centre = (n - 1) / 2, (hi - lo) / 2, (hi + lo) / 2
        offset = index - half_cells
        return torch.sign(offset) * (offset.abs() / half_cells * half_range) + centre
    return torch.sign(index) * (index.abs() / (n - 1) * (hi - lo)) + lo


def official_plane_cells_unit(range_m: Sequence[float], grid_xyz: Sequence[int], plane: str) -> Float[Tensor, "Q 2"]:
    """`plane_cells_unit` with the official float32 arithmetic: metric grid points by `official_axis_m`,
    then (p - min) / (max - min) with the range as Python floats (as the official TPVPositionalEncoding)."""
    row_axis, col_axis = PLANE_AXES[plane]
    units = []
    for axis in (row_axis, col_axis):
        lo, hi = float(range_m[axis]), float(range_m[axis + 3])
        units.append((official_axis_m(grid_xyz[axis], lo, hi, centred=axis < 2) - lo) / (hi - lo))
    rows, cols = torch.meshgrid(units[0], units[1], indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)
