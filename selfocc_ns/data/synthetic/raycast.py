"""Exact ray casting of the world's primitives: yawed boxes, vertical cylinders, spheres, the ground
plane z = 0 and the two sidewalk slabs (annular sectors of the arc road).

Every function takes rays that share one origin, given *relative to the primitive* (float64 origin
minus primitive centre, so global coordinates of hundreds of metres keep full precision), and unit
directions (M, 3) float32; it returns the ray parameter t (M,) float32 of the first entry point,
+inf where the ray misses. Rays start outside every solid (sensors are never inside objects).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple, Sequence, Tuple

import numpy as np

BOX, CYLINDER, SPHERE = 0, 1, 2
"""Shape codes of `Primitives.shape`."""

_INF = np.float32(np.inf)


class AnnularSlab(NamedTuple):
    """A sidewalk slab {r_inner <= r <= r_outer, 0 <= z <= height, |angle - mid| <= half_span} in polar
    coordinates (r, angle) around a circle centre at z = 0 (metres, rad)."""

    r_inner: float
    r_outer: float
    height: float
    mid_angle_rad: float
    half_span_rad: float


@dataclass
class Primitives:
    """Bounded solids of one instant, struct-of-arrays over P primitives (global frame, metres).

    Every shape is described by a yawed bounding box: `centre`, `yaw`, `half` (half sizes along the
    local x, y, z). A box is that box; a cylinder (vertical axis) has radius half[0] and half height
    half[2]; a sphere has radius half[0].
    """

    shape: np.ndarray
    """(P,) int8 shape code."""
    centre: np.ndarray
    """(P, 3) float64."""
    yaw: np.ndarray
    """(P,) float64, rad."""
    half: np.ndarray
    """(P, 3) float64."""
    class_id: np.ndarray
    """(P,) uint8 Occ3D class."""
    material: np.ndarray
    """(P,) int16 material code (see shading.py)."""
    colour: np.ndarray
    """(P, 3) float32 base colour in [0, 1]."""
    object_id: np.ndarray
    """(P,) int32 index of the object the primitive belongs to."""
    texture_offset: np.ndarray
    """(P, 2) float32 per-object shift of the texture coordinates (decorrelates look-alike objects)."""

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def take(self, index: np.ndarray) -> "Primitives":
        return Primitives(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: Sequence["Primitives"]) -> "Primitives":
        return Primitives(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Primitives)})

    def corners(self) -> np.ndarray:
        """(P, 8, 3) float64 corners of the bounding boxes."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        local = signs[None] * self.half[:, None, :]
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        x = c * local[..., 0] - s * local[..., 1]
        y = s * local[..., 0] + c * local[..., 1]
        return self.centre[:, None, :] + np.stack([x, y, local[..., 2]], axis=-1)

    def bounding_radius(self) -> np.ndarray:
        """(P,) radius of a sphere around `centre` containing the primitive."""
        return np.linalg.norm(self.half, axis=-1)


def _components(oc: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, z of origin offsets (3,) -> float32 scalars, or (..., 3) -> float32 arrays."""
    o = np.asarray(oc, dtype=np.float64)
    return o[..., 0].astype(np.float32), o[..., 1].astype(np.float32), o[..., 2].astype(np.float32)


def intersect_box(oc: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, yaw: float, half: np.ndarray
                  ) -> np.ndarray:
    """Slab test of a yawed box; `oc` = ray origin minus box centre; directions as component arrays.

    A direction component of exactly 0 gives +-inf slab parameters, which the min/max handle; a ray
    exactly on a slab plane gives NaN and counts as a miss (measure zero).
    """
    ox, oy, oz = _components(oc)
    c, s = np.float32(np.cos(yaw)), np.float32(np.sin(yaw))
    hx, hy, hz = (np.float32(h) for h in half)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_near = t_far = None
        for o, d, h in ((c * ox + s * oy, c * dx + s * dy, hx), (c * oy - s * ox, c * dy - s * dx, hy), (oz, dz, hz)):
            inv = np.float32(1.0) / d
            t1, t2 = (-h - o) * inv, (h - o) * inv
            lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
            t_near = lo if t_near is None else np.maximum(t_near, lo)
            t_far = hi if t_far is None else np.minimum(t_far, hi)
        return np.where((t_near <= t_far) & (t_near > 0), t_near, _INF)


def intersect_cylinder(oc: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, radius: float,
                       half_height: float) -> np.ndarray:
    """First entry into a vertical solid cylinder (side or caps); `oc` = ray origin minus centre."""
    ox, oy, oz = _components(oc)
    r2 = np.float32(radius * radius)
    hh = np.float32(half_height)
    a = dx * dx + dy * dy
    outside = ox * ox + oy * oy > r2
    with np.errstate(invalid="ignore", divide="ignore"):
        # closest approach of the ray's xy projection to the axis, then back off along the ray (stable in float32)
        tc = -(ox * dx + oy * dy) / a
        qx, qy = ox + tc * dx, oy + tc * dy
        half_chord2 = (r2 - (qx * qx + qy * qy)) / a
        t_side = tc - np.sqrt(half_chord2)
        z_side = oz + t_side * dz
        side_ok = (half_chord2 >= 0) & (a > 1e-12) & outside & (t_side > 0) & (np.abs(z_side) <= hh)
        t_cap = np.where(oz > hh, (hh - oz) / dz, (-hh - oz) / dz)
        cx, cy = ox + t_cap * dx, oy + t_cap * dy
        cap_ok = (np.abs(oz) > hh) & (t_cap > 0) & (cx * cx + cy * cy <= r2)
    t = np.where(side_ok, t_side, _INF)
    return np.minimum(t, np.where(cap_ok, t_cap, _INF)).astype(np.float32)


def intersect_sphere(oc: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, radius: float) -> np.ndarray:
    """First entry into a sphere (unit directions); `oc` = ray origin minus centre."""
    ox, oy, oz = _components(oc)
    r2 = np.float32(radius * radius)
    tc = -(dx * ox + dy * oy + dz * oz)  # closest approach to the centre (stable in float32)
    qx, qy, qz = ox + tc * dx, oy + tc * dy, oz + tc * dz
    half_chord2 = r2 - (qx * qx + qy * qy + qz * qz)
    with np.errstate(invalid="ignore"):
        t = tc - np.sqrt(half_chord2)
    outside = ox * ox + oy * oy + oz * oz > r2
    return np.where((half_chord2 >= 0) & (t > 0) & outside, t, _INF).astype(np.float32)


def intersect_primitive(prims: Primitives, index: int, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                        dz: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit of primitive `index` for rays from `origin` (3,) or (..., 3) global float64
    with unit directions given as component arrays (any shape)."""
    oc = np.asarray(origin, dtype=np.float64) - prims.centre[index]
    shape = prims.shape[index]
    half = prims.half[index]
    if shape == BOX:
        return intersect_box(oc, dx, dy, dz, float(prims.yaw[index]), half)
    if shape == CYLINDER:
        return intersect_cylinder(oc, dx, dy, dz, float(half[0]), float(half[2]))
    return intersect_sphere(oc, dx, dy, dz, float(half[0]))


def intersect_ground(origin_z: np.ndarray, dz: np.ndarray, max_distance_m: float) -> np.ndarray:
    """Hits of the ground plane z = 0 from above, up to `max_distance_m` along the ray."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-np.asarray(origin_z, dtype=np.float32)) / dz
    return np.where((dz < 0) & (t > 0) & (t <= max_distance_m), t, _INF).astype(np.float32)


def intersect_annular_slab(
    oc: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, slab: AnnularSlab
) -> np.ndarray:
    """First entry into the slab.

    `oc` is the ray origin minus the circle centre (z of the centre = 0). Candidate entries are the
    top face (from above), the outer wall (from outside) and the inner wall (from inside); the flat
    end faces of the sector are ignored (they lie far beyond sensor range by construction).
    """
    r_inner, r_outer, height, mid_angle_rad, half_span_rad = slab
    ox, oy, oz = _components(oc)
    ri2, ro2 = np.float32(r_inner**2), np.float32(r_outer**2)
    h = np.float32(height)
    cos_mid, sin_mid = np.float32(np.cos(mid_angle_rad)), np.float32(np.sin(mid_angle_rad))
    cos_span = np.float32(np.cos(half_span_rad))

    def in_sector(px, py, r):
        return (px * cos_mid + py * sin_mid) >= cos_span * r

    with np.errstate(divide="ignore", invalid="ignore"):
        # top face
        t_top = (h - oz) / dz
        px, py = ox + t_top * dx, oy + t_top * dy
        rr = px * px + py * py
        ok = (oz > h) & (dz < 0) & (rr >= ri2) & (rr <= ro2) & in_sector(px, py, np.sqrt(rr))
        best = np.where(ok, t_top, _INF)
        # walls: |o + t d|_xy = r
        a = dx * dx + dy * dy
        o2 = ox * ox + oy * oy
        tc = -(ox * dx + oy * dy) / a  # closest approach to the circle centre, then +- the half chord
        qx, qy = ox + tc * dx, oy + tc * dy
        q2 = qx * qx + qy * qy
        for r2, root_sign, from_outside in ((ro2, -1.0, True), (ri2, 1.0, False)):
            half_chord2 = (r2 - q2) / a
            t = tc + np.float32(root_sign) * np.sqrt(half_chord2)
            pz = oz + t * dz
            px, py = ox + t * dx, oy + t * dy
            valid = (half_chord2 >= 0) & (a > 1e-12) & (t > 0) & (pz >= 0) & (pz <= h)
            valid &= in_sector(px, py, np.float32(np.sqrt(r2)))
            if from_outside:
                valid &= o2 > r2
            best = np.where(valid & (t < best), t, best)
    return best.astype(np.float32)
