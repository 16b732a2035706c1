"""Signed distance functions of the world's solids (metres, negative inside), float64.

Each function is the exact Euclidean SDF of one solid. The world's SDF is the minimum over its
solids: exact outside all solids (distance to a union = min of distances) and of the right sign
inside, where its magnitude is the distance to the nearest boundary of the solid the point is in
(a lower bound of the true depth). Occupancy only uses the sign and small positive values.
"""

from __future__ import annotations

import numpy as np

from selfocc_ns.data.synthetic.raycast import BOX, CYLINDER, SPHERE, AnnularSlab


def _box_sdf_from_q(q: np.ndarray) -> np.ndarray:
    """SDF of an axis-aligned box from q = |p| - half per axis (..., k)."""
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(axis=-1), 0.0)
    return outside + inside


def sdf_box(p_rel: np.ndarray, yaw: float, half: np.ndarray) -> np.ndarray:
    """Yawed box; `p_rel` (N, 3) = points minus box centre."""
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.stack([c * p_rel[:, 0] + s * p_rel[:, 1], -s * p_rel[:, 0] + c * p_rel[:, 1], p_rel[:, 2]], -1)
    return _box_sdf_from_q(np.abs(local) - np.asarray(half))


def sdf_cylinder(p_rel: np.ndarray, radius: float, half_height: float) -> np.ndarray:
    """Vertical solid cylinder; `p_rel` = points minus its centre (mid height)."""
    q = np.stack([np.hypot(p_rel[:, 0], p_rel[:, 1]) - radius, np.abs(p_rel[:, 2]) - half_height], -1)
    return _box_sdf_from_q(q)


def sdf_sphere(p_rel: np.ndarray, radius: float) -> np.ndarray:
    return np.linalg.norm(p_rel, axis=-1) - radius


def sdf_primitive(shape: int, p_rel: np.ndarray, yaw: float, half: np.ndarray) -> np.ndarray:
    """Dispatch on the shape code of `raycast.Primitives`."""
    if shape == BOX:
        return sdf_box(p_rel, yaw, half)
    if shape == CYLINDER:
        return sdf_cylinder(p_rel, float(half[0]), float(half[2]))
    assert shape == SPHERE
    return sdf_sphere(p_rel, float(half[0]))


def sdf_annular_slab(p_rel: np.ndarray, slab: AnnularSlab) -> np.ndarray:
    """Sidewalk slab (see `AnnularSlab`).

    `p_rel` = points minus the circle centre (at z = 0). Exact within the angular span (a solid of
    revolution: the distance is the 2D box distance in the (r, z) half-plane); beyond the ends, the
    overshoot along the arc is treated as a third box axis (a close approximation; the ends lie far
    outside any sensor's range by construction).
    """
    r_inner, r_outer, height, mid_angle_rad, half_span_rad = slab
    r = np.hypot(p_rel[:, 0], p_rel[:, 1])
    angle = np.arctan2(p_rel[:, 1], p_rel[:, 0])
    off = np.abs(np.angle(np.exp(1j * (angle - mid_angle_rad))))
    q_arc = (off - half_span_rad) * r
    r_mid, half_w = 0.5 * (r_inner + r_outer), 0.5 * (r_outer - r_inner)
    q = np.stack([np.abs(r - r_mid) - half_w, np.abs(p_rel[:, 2] - 0.5 * height) - 0.5 * height, q_arc], -1)
    return _box_sdf_from_q(q)


def sdf_ground(points: np.ndarray) -> np.ndarray:
    """The ground half-space z <= 0."""
    return points[:, 2].copy()
