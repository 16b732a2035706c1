"""Casting a regular grid of rays from one origin (a camera image or a LiDAR sweep) against many
primitives: each primitive only meets the rays of its window (projected bounding box for a camera,
azimuth interval for a LiDAR), and a primitive whose window is already entirely hit closer than the
primitive's nearest possible point is skipped.
"""

from __future__ import annotations

from typing import List, Tuple, Union

import numpy as np

from selfocc_ns.data.synthetic import raycast as rc
from selfocc_ns.data.synthetic.rig import LidarPattern

NO_HIT, GROUND = -1, -2
SIDEWALK_KINDS = (-3, -4)
"""`kind` codes of grid hits besides primitive indices (>= 0): left and right sidewalk slab."""

Window = Tuple[int, slice, Union[slice, np.ndarray], float]
"""(primitive index, rows, columns, lower bound of the distance from the origin to the primitive)."""

_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])
"""The 12 edges of a box between the corners of `Primitives.corners` (corner index bits = x, y, z signs)."""


def distance_lower_bounds(prims: rc.Primitives, order: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Exact distance from `origin` to each primitive's bounding box (a lower bound for the solid inside)."""
    rel = origin[None, :] - prims.centre[order]
    c, s = np.cos(prims.yaw[order]), np.sin(prims.yaw[order])
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], -1)
    return np.linalg.norm(np.maximum(np.abs(local) - prims.half[order], 0.0), axis=-1)


def camera_windows(prims: rc.Primitives, order: np.ndarray, cam2global: np.ndarray, intrinsics: np.ndarray,
                   width: int, height: int, near_m: float = 0.05) -> List[Window]:
    """Pixel rectangles that contain the projection of each primitive's bounding box.

    The box is clipped by the plane z_cam = near_m (corners behind are replaced by the points where
    the box edges cross that plane); the projection of the clipped convex box is the convex hull of
    the projected points, so their bounding rectangle is conservative.
    """
    if order.size == 0:
        return []
    corners = prims.corners()[order]  # (P, 8, 3)
    cam = (corners - cam2global[:3, 3]) @ cam2global[:3, :3]  # R^T (p - o), row vectors
    a, b = cam[:, _EDGES[:, 0]], cam[:, _EDGES[:, 1]]
    za, zb = a[..., 2], b[..., 2]
    crosses = (za - near_m) * (zb - near_m) < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(crosses, (near_m - za) / (zb - za), 0.0)
    cut = a + frac[..., None] * (b - a)
    pts = np.concatenate([cam, cut], axis=1)
    valid = np.concatenate([cam[..., 2] >= near_m, crosses], axis=1)
    z = np.where(valid, pts[..., 2], 1.0)
    u = intrinsics[0, 0] * pts[..., 0] / z + intrinsics[0, 2]
    v = intrinsics[1, 1] * pts[..., 1] / z + intrinsics[1, 2]
    big = np.float64(1e9)
    u_min, u_max = np.where(valid, u, big).min(1), np.where(valid, u, -big).max(1)
    v_min, v_max = np.where(valid, v, big).min(1), np.where(valid, v, -big).max(1)
    c0 = np.clip(np.floor(u_min), 0, width).astype(int)
    c1 = np.clip(np.floor(u_max) + 1, 0, width).astype(int)
    r0 = np.clip(np.floor(v_min), 0, height).astype(int)
    r1 = np.clip(np.floor(v_max) + 1, 0, height).astype(int)
    lower = distance_lower_bounds(prims, order, cam2global[:3, 3])
    keep = valid.any(1) & (c1 > c0) & (r1 > r0)
    return [(int(order[j]), slice(r0[j], r1[j]), slice(c0[j], c1[j]), float(lower[j])) for j in np.nonzero(keep)[0]]


def lidar_windows(prims: rc.Primitives, order: np.ndarray, lidar2global: np.ndarray,
                  pattern: LidarPattern) -> List[Window]:
    """Azimuth column ranges (all beams) containing each primitive's bounding box.

    Azimuth extremes of a convex box that does not surround the vertical axis through the sensor are
    reached at its corners; boxes around that axis get every column.
    """
    if order.size == 0:
        return []
    corners = prims.corners()[order]
    local = (corners - lidar2global[:3, 3]) @ lidar2global[:3, :3]
    centre = (prims.centre[order] - lidar2global[:3, 3]) @ lidar2global[:3, :3]
    az_c = np.arctan2(centre[:, 1], centre[:, 0])
    delta = np.angle(np.exp(1j * (np.arctan2(local[..., 1], local[..., 0]) - az_c[:, None])))
    lo, hi = delta.min(1), delta.max(1)
    footprint_radius = np.linalg.norm(prims.half[order, :2], axis=1)
    surrounds = (hi - lo > np.pi) | (np.hypot(centre[:, 0], centre[:, 1]) <= footprint_radius)
    step = np.deg2rad(pattern.azimuth_step_deg)
    start = pattern.azimuths_rad()[0]
    n = pattern.columns
    c0 = np.floor((az_c + lo - start) / step).astype(int)
    c1 = np.floor((az_c + hi - start) / step).astype(int) + 2
    lower = distance_lower_bounds(prims, order, lidar2global[:3, 3])
    rows = slice(0, pattern.beams)
    out: List[Window] = []
    for j in range(order.size):
        if surrounds[j]:
            cols: Union[slice, np.ndarray] = slice(0, n)
        elif c0[j] >= 0 and c1[j] <= n:
            cols = slice(int(c0[j]), int(c1[j]))
        else:
            cols = np.arange(c0[j], c1[j]) % n
        out.append((int(order[j]), rows, cols, float(lower[j])))
    return out


def cast_grid(prims: rc.Primitives, origin: np.ndarray, dirs: Tuple[np.ndarray, np.ndarray, np.ndarray],
              t: np.ndarray, kind: np.ndarray, windows: List[Window]) -> Tuple[np.ndarray, np.ndarray]:
    """Update the nearest hit `t` (A, B) and `kind` (A, B) of the ray grid with every window's primitive.

    `dirs` are the x, y, z components (each (A, B)) of the unit ray directions; windows should come near
    to far so that hidden primitives are skipped.
    """
    dx, dy, dz = dirs
    for index, rows, cols, lower in windows:
        if isinstance(cols, slice):
            t_win, k_win = t[rows, cols], kind[rows, cols]  # views: updated in place
            if t_win.size == 0 or t_win.max() < lower:
                continue
            ti = rc.intersect_primitive(prims, index, origin, dx[rows, cols], dy[rows, cols], dz[rows, cols])
            better = ti < t_win
            t_win[better] = ti[better]
            k_win[better] = index
        else:
            t_win = t[rows][:, cols]
            if t_win.max() < lower:
                continue
            ti = rc.intersect_primitive(prims, index, origin, dx[rows][:, cols], dy[rows][:, cols], dz[rows][:, cols])
            better = ti < t_win
            t[rows, cols] = np.where(better, ti, t_win)
            kind[rows, cols] = np.where(better, index, kind[rows][:, cols])
    return t, kind
