"""Surface attributes of ray hits (what shading and LiDAR intensity need), as a struct of 1D arrays
over the K rays that hit something: cheaper than (K, 3) gathers and scatters on every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selfocc_ns.data.occ3d import CLASS_ID
from selfocc_ns.data.synthetic import raycast as rc
from selfocc_ns.data.synthetic import shading
from selfocc_ns.data.synthetic.grid_cast import GROUND, NO_HIT, SIDEWALK_KINDS
from selfocc_ns.data.synthetic.road import ground_class_sd

SIDEWALK_ID = CLASS_ID["sidewalk"]


@dataclass
class Surface:
    """Attributes of K hits; every field is a 1D array of length K."""

    ray: np.ndarray
    """int64 index of the ray in its batch."""
    distance_m: np.ndarray
    kind: np.ndarray
    """int32: -2 ground, -3/-4 left/right sidewalk, >= 0 primitive index."""
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    """float64 global hit point."""
    nx: np.ndarray
    ny: np.ndarray
    nz: np.ndarray
    """float32 unit outward normal."""
    u: np.ndarray
    v: np.ndarray
    """float32 surface texture coordinates in metres (object-local for objects, (x, y) for the ground)."""
    offset_u: np.ndarray
    offset_v: np.ndarray
    """float32 per-object texture shift (0 for ground and sidewalks)."""
    face: np.ndarray
    """int8: 0 side, 1 top, 2 bottom."""
    material: np.ndarray
    red: np.ndarray
    green: np.ndarray
    blue: np.ndarray
    """float32 base colour."""
    class_id: np.ndarray
    object_id: np.ndarray
    road_s: np.ndarray
    road_d: np.ndarray
    """float32 road coordinates (s, d) of ground and sidewalk hits (0 elsewhere)."""


def primitive_surface(prims: rc.Primitives, index: np.ndarray, rx: np.ndarray, ry: np.ndarray, rz: np.ndarray):
    """Normals (nx, ny, nz), texture coordinates (u, v) and face kind of hits on primitives.

    `index` (K,) is the primitive hit and (rx, ry, rz) the hit point minus its centre (float32). Boxes use
    the two in-face local axes, cylinders (arc length, z) on the side and local (x, y) on the caps, spheres
    a planar projection along the dominant normal axis.
    """
    cos_yaw, sin_yaw = np.cos(prims.yaw).astype(np.float32), np.sin(prims.yaw).astype(np.float32)
    c, s = cos_yaw[index], sin_yaw[index]
    lx, ly, lz = c * rx + s * ry, c * ry - s * rx, rz
    k = index.shape[0]
    nlx, nly, nlz = (np.zeros(k, np.float32) for _ in range(3))
    u, v = np.zeros(k, np.float32), np.zeros(k, np.float32)
    face = np.zeros(k, np.int8)
    shape = prims.shape[index]
    half = prims.half.astype(np.float32)

    sel = np.nonzero(shape == rc.BOX)[0]
    if sel.size:
        i = index[sel]
        bx, by, bz = lx[sel], ly[sel], lz[sel]
        ax, ay, az = np.abs(bx) / half[i, 0], np.abs(by) / half[i, 1], np.abs(bz) / half[i, 2]
        on_x = (ax >= ay) & (ax >= az)
        on_z = ~on_x & (az >= ay)
        on_y = ~on_x & ~on_z
        nlx[sel] = np.where(on_x, np.sign(bx), 0.0)
        nly[sel] = np.where(on_y, np.sign(by), 0.0)
        nlz[sel] = np.where(on_z, np.sign(bz), 0.0)
        u[sel] = np.where(on_x, by, bx)
        v[sel] = np.where(on_z, by, bz)
        face[sel] = np.where(on_z, np.where(bz > 0, 1, 2), 0)

    sel = np.nonzero(shape == rc.CYLINDER)[0]
    if sel.size:
        i = index[sel]
        cx, cy, cz = lx[sel], ly[sel], lz[sel]
        radius, half_h = half[i, 0], half[i, 2]
        radial = np.maximum(np.hypot(cx, cy), 1e-6)
        on_cap = np.abs(np.abs(cz) - half_h) < np.abs(radial - radius)
        nlx[sel] = np.where(on_cap, 0.0, cx / radial)
        nly[sel] = np.where(on_cap, 0.0, cy / radial)
        nlz[sel] = np.where(on_cap, np.sign(cz), 0.0)
        u[sel] = np.where(on_cap, cx, np.arctan2(cy, cx) * radius)
        v[sel] = np.where(on_cap, cy, cz)
        face[sel] = np.where(on_cap, np.where(cz > 0, 1, 2), 0)

    sel = np.nonzero(shape == rc.SPHERE)[0]
    if sel.size:
        sx, sy, sz = lx[sel], ly[sel], lz[sel]
        norm = np.maximum(np.sqrt(sx * sx + sy * sy + sz * sz), 1e-6)
        nlx[sel], nly[sel], nlz[sel] = sx / norm, sy / norm, sz / norm
        ax, ay, az = np.abs(sx), np.abs(sy), np.abs(sz)
        dom_x = (ax >= ay) & (ax >= az)
        dom_z = ~dom_x & (az >= ay)
        u[sel] = np.where(dom_x, sy, sx)
        v[sel] = np.where(dom_z, sy, sz)
        face[sel] = np.where(sz > 0.7 * norm, 1, 0)

    nx, ny = c * nlx - s * nly, s * nlx + c * nly
    return nx, ny, nlz, u, v, face


def surface_of_hits(world, prims: rc.Primitives, origin: np.ndarray, dirs: np.ndarray, t: np.ndarray,
                    kind: np.ndarray) -> Surface:
    """Attributes of the rays that hit something. `origin` (3,) or (N, 3) float64, `dirs` (N, 3) float32 unit,
    `t`, `kind` (N,) from the casters; `world` is the SceneWorld (road, ground patches, sidewalk slabs)."""
    ray = np.nonzero(kind != NO_HIT)[0]
    k = ray.size
    dist = t[ray].astype(np.float32)
    kd = kind[ray].astype(np.int32)
    dx, dy, dz = (np.ascontiguousarray(dirs[ray, a]) for a in range(3))
    o = np.asarray(origin, dtype=np.float64)
    ox, oy, oz = (o[a] if o.ndim == 1 else o[ray, a] for a in range(3))
    x, y, z = ox + dist * dx.astype(np.float64), oy + dist * dy.astype(np.float64), oz + dist * dz.astype(np.float64)
    f32 = np.float32
    surf = Surface(
        ray=ray, distance_m=dist, kind=kd, x=x, y=y, z=z,
        nx=np.zeros(k, f32), ny=np.zeros(k, f32), nz=np.ones(k, f32), u=x.astype(f32), v=y.astype(f32),
        offset_u=np.zeros(k, f32), offset_v=np.zeros(k, f32), face=np.ones(k, np.int8),
        material=np.full(k, shading.PAVING, np.int16), red=np.zeros(k, f32), green=np.zeros(k, f32),
        blue=np.zeros(k, f32), class_id=np.full(k, SIDEWALK_ID, np.uint8), object_id=np.full(k, -1, np.int32),
        road_s=np.zeros(k, f32), road_d=np.zeros(k, f32),
    )
    flat = np.nonzero(kd < 0)[0]
    if flat.size:
        s, d = world.road.sd(x[flat], y[flat])
        surf.road_s[flat], surf.road_d[flat] = s, d
        ground = flat[kd[flat] == GROUND]
        cls = ground_class_sd(world.road, world.patches, surf.road_s[ground], surf.road_d[ground])
        surf.class_id[ground] = cls
        surf.material[ground] = shading.ground_material(cls)
        wall = flat[(kd[flat] != GROUND) & (np.abs(z[flat] - world.road.kerb_height_m) >= 1e-3)]
        if wall.size:
            rel_x, rel_y = x[wall] - world._circle_centre[0], y[wall] - world._circle_centre[1]
            r = np.hypot(rel_x, rel_y)
            slab = SIDEWALK_KINDS[0] - kd[wall]
            r_in = np.array([sl.r_inner for sl in world._slabs])[slab]
            r_out = np.array([sl.r_outer for sl in world._slabs])[slab]
            outward = np.where(np.abs(r - r_out) < np.abs(r - r_in), 1.0, -1.0) / r
            surf.nx[wall], surf.ny[wall], surf.nz[wall] = rel_x * outward, rel_y * outward, 0.0
            surf.u[wall], surf.v[wall] = surf.road_s[wall], z[wall]
            surf.face[wall] = 0
            surf.material[wall] = shading.KERB
        colour = shading.ground_colour(surf.material[flat])
        surf.red[flat], surf.green[flat], surf.blue[flat] = colour[:, 0], colour[:, 1], colour[:, 2]
    solid = np.nonzero(kd >= 0)[0]
    if solid.size:
        i = kd[solid]
        centre = prims.centre
        # hit point relative to the primitive in float32 without a float64 round trip: t d + (o - c)
        rel = [(ox if o.ndim == 1 else ox[solid]) - centre[i, a] if a == 0 else
               (oy if o.ndim == 1 else oy[solid]) - centre[i, a] if a == 1 else
               (oz if o.ndim == 1 else oz[solid]) - centre[i, a] for a in range(3)]
        rx = dist[solid] * dx[solid] + rel[0].astype(f32)
        ry = dist[solid] * dy[solid] + rel[1].astype(f32)
        rz = dist[solid] * dz[solid] + rel[2].astype(f32)
        nx, ny, nz, u, v, face = primitive_surface(prims, i, rx, ry, rz)
        surf.nx[solid], surf.ny[solid], surf.nz[solid] = nx, ny, nz
        surf.u[solid], surf.v[solid], surf.face[solid] = u, v, face
        surf.offset_u[solid], surf.offset_v[solid] = prims.texture_offset[i, 0], prims.texture_offset[i, 1]
        surf.material[solid], surf.class_id[solid] = prims.material[i], prims.class_id[i]
        surf.red[solid], surf.green[solid], surf.blue[solid] = (prims.colour[i, a] for a in range(3))
        surf.object_id[solid] = prims.object_id[i]
    return surf
