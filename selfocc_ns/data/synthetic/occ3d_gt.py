"""Occ3D-style ground truth of a keyframe from the exact world: semantics, mask_lidar, mask_camera.

All three live on the Occ3D grid (occ3d.py) in the ego frame of the keyframe's LIDAR_TOP sample_data.

- semantics: a voxel is occupied by class c when the solid of class c comes within half a voxel of
  its centre, i.e. the world's SDF at the centre is <= 0.2 m and c is the class of the nearest solid
  (ties: objects, then sidewalks, then the ground); otherwise 17 (free).
- mask_lidar: the voxels traversed by the keyframe's LiDAR rays (returns only), from the sensor up
  to and including the voxel of the return (exact grid traversal of each segment).
- mask_camera: see `camera_visibility_mask`.
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple

import numpy as np

from selfocc_ns.data.occ3d import CLASS_ID, FREE_ID, OCC3D_RANGE_M, OCC3D_SHAPE, OCC3D_VOXEL_M, voxel_centres_m
from selfocc_ns.data.synthetic.road import ground_class_sd
from selfocc_ns.data.synthetic.sdf import sdf_annular_slab, sdf_primitive

HALF_VOXEL_M = 0.5 * OCC3D_VOXEL_M


@functools.lru_cache(maxsize=1)
def _voxel_centres_ego() -> np.ndarray:
    xs, ys, zs = voxel_centres_m()
    centres = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), axis=-1)
    centres.flags.writeable = False
    return centres


def voxel_centres_ego() -> np.ndarray:
    """(200, 200, 16, 3) float64 voxel centres in the ego frame (read-only, shared)."""
    return _voxel_centres_ego()


def _index_range(lo: float, hi: float, axis: int) -> Tuple[int, int]:
    """Voxel indices [i0, i1) along `axis` whose centres may lie within [lo, hi]."""
    v, start, n = OCC3D_VOXEL_M, OCC3D_RANGE_M[axis], OCC3D_SHAPE[axis]
    i0 = int(np.floor((lo - start) / v - 0.5))
    i1 = int(np.ceil((hi - start) / v - 0.5)) + 1
    return max(i0, 0), min(i1, n)


def occupancy_semantics(world, ego2global: np.ndarray, timestamp_us: int) -> np.ndarray:
    """(200, 200, 16) uint8 Occ3D semantics of `world` (a SceneWorld) at a time, in the ego frame `ego2global`.

    Equivalent to thresholding `world.sdf_and_class` at every voxel centre, but each primitive is only
    evaluated on the block of voxels within half a voxel of its bounding box (elsewhere it is farther
    than half a voxel and cannot make the voxel occupied).
    """
    centres = voxel_centres_ego()
    rot, trans = ego2global[:3, :3], ego2global[:3, 3]
    best = np.full(OCC3D_SHAPE, np.inf)
    cls = np.full(OCC3D_SHAPE, FREE_ID, dtype=np.uint8)
    prims = world.primitives_at(timestamp_us)
    corners_ego = (prims.corners() - trans) @ rot  # (P, 8, 3)
    lo, hi = corners_ego.min(1) - HALF_VOXEL_M, corners_ego.max(1) + HALF_VOXEL_M
    for i in range(len(prims)):
        (x0, x1), (y0, y1), (z0, z1) = (_index_range(lo[i, a], hi[i, a], a) for a in range(3))
        if x0 >= x1 or y0 >= y1 or z0 >= z1:
            continue
        block = centres[x0:x1, y0:y1, z0:z1].reshape(-1, 3) @ rot.T + trans
        d = sdf_primitive(int(prims.shape[i]), block - prims.centre[i], float(prims.yaw[i]), prims.half[i])
        d = d.reshape(x1 - x0, y1 - y0, z1 - z0)
        b, c = best[x0:x1, y0:y1, z0:z1], cls[x0:x1, y0:y1, z0:z1]
        better = d < b
        b[better] = d[better]
        c[better] = prims.class_id[i]
    # Flat solids: only the rows whose centres lie within half a voxel above the kerb top can be reached.
    # Road coordinates depend on (x, y) only, so they are computed once per voxel column.
    road = world.road
    z0, z1 = _index_range(OCC3D_RANGE_M[2], road.kerb_height_m + HALF_VOXEL_M, 2)
    columns = centres[:, :, 0].reshape(-1, 3) @ rot.T + trans
    s, d = road.sd(columns[:, 0], columns[:, 1])
    column_class = ground_class_sd(road, world.patches, s, d)
    # a sidewalk slab can only be within half a voxel of columns near the sidewalk band
    near_walk = np.nonzero((np.abs(d) > road.half_width_m - 1.0)
                           & (np.abs(d) < road.half_width_m + road.sidewalk_width_m + 1.0))[0]
    for zi in range(z0, z1):
        rows = centres[:, :, zi].reshape(-1, 3) @ rot.T + trans
        b, c = best[:, :, zi].reshape(-1), cls[:, :, zi].reshape(-1)  # copies of the (strided) row
        for slab in world._slabs:
            dw = sdf_annular_slab(rows[near_walk] - world._circle_centre, slab)
            better = dw < b[near_walk]
            b[near_walk[better]] = dw[better]
            c[near_walk[better]] = CLASS_ID["sidewalk"]
        better = rows[:, 2] < b
        b[better] = rows[better, 2]
        c[better] = column_class[better]
        best[:, :, zi] = b.reshape(OCC3D_SHAPE[:2])
        cls[:, :, zi] = c.reshape(OCC3D_SHAPE[:2])
    return np.where(best <= HALF_VOXEL_M, cls, FREE_ID).astype(np.uint8)


def traversed_voxels(origin_ego: np.ndarray, points_ego: np.ndarray) -> np.ndarray:
    """(200, 200, 16) bool: voxels crossed by the segments origin -> point (each point's voxel included).

    Exact traversal without marching: a segment enters a new voxel exactly where it crosses a voxel
    boundary plane, so the set of voxels is the start voxel plus, for every boundary crossing, the
    voxel on the far side of that plane (whose other two indices are read at the crossing point).
    """
    lo = np.array(OCC3D_RANGE_M[:3])
    shape = np.array(OCC3D_SHAPE)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    v = OCC3D_VOXEL_M
    flat = np.zeros(int(np.prod(shape)), dtype=bool)
    o = np.asarray(origin_ego, dtype=np.float64)
    d = np.asarray(points_ego, dtype=np.float64) - o
    # clip each segment (parameter s in [0, 1]) to the grid box
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(d == 0, 1e-300, d)
        s1, s2 = (lo - o) * inv, (lo + shape * v - o) * inv
    s_in = np.maximum(np.minimum(s1, s2).max(1), 0.0)
    s_out = np.minimum(np.maximum(s1, s2).min(1), 1.0)
    keep = s_in < s_out
    d, s_in, s_out = d[keep], s_in[keep], s_out[keep]

    def cell(coord: np.ndarray, axis: int) -> np.ndarray:
        return np.clip(np.floor((coord - lo[axis]) / v).astype(np.int64), 0, shape[axis] - 1)

    start = np.stack([cell(o[a] + s_in * d[:, a], a) for a in range(3)], -1)
    end = np.stack([cell(o[a] + s_out * d[:, a], a) for a in range(3)], -1)
    flat[start @ strides] = True
    flat[end @ strides] = True
    for axis in range(3):
        count = np.abs(end[:, axis] - start[:, axis])
        total = int(count.sum())
        if total == 0:
            continue
        ray = np.repeat(np.arange(count.size), count)
        j = np.arange(1, total + 1) - np.repeat(np.cumsum(count) - count, count)  # 1..count per ray
        step = np.where(d[ray, axis] > 0, 1, -1)
        entered = start[ray, axis] + step * j  # index of the voxel entered along this axis
        boundary = entered + (step < 0)  # index of the boundary plane crossed
        s = (lo[axis] + boundary * v - o[axis]) / d[ray, axis]
        index = entered * strides[axis]
        for other in range(3):
            if other != axis:
                index += cell(o[other] + s * d[ray, other], other) * strides[other]
        flat[index] = True
    return flat.reshape(OCC3D_SHAPE)


def camera_visibility_mask(
    centres_global: np.ndarray,
    cam2globals: Sequence[np.ndarray],
    intrinsics: Sequence[np.ndarray],
    depth_maps_m: Sequence[np.ndarray],
) -> np.ndarray:
    """Voxels seen by the keyframe cameras up to the first surface: bool array of `centres_global`'s leading shape.

    Definition: a voxel is visible when, for at least one camera, its centre p has camera depth
    z = (R^T (p - o))_z > 0, projects (OpenCV pinhole; pixel (i, j) covers [j, j + 1) x [i, i + 1)) to the
    pixel (col, row) = (floor(u), floor(v)) inside the image, and z <= D[row, col] + 0.2 m,
    where D is that camera's truth depth map as stored on disk (uint16 / 256 m, 0 = nothing hit =
    +infinity). Using the stored, quantised depth makes the mask reproducible from the files alone.
    """
    points = centres_global.reshape(-1, 3)
    px, py, pz = (np.ascontiguousarray(points[:, a]) for a in range(3))
    seen = np.zeros(points.shape[0], dtype=bool)
    for cam2global, k, depth in zip(cam2globals, intrinsics, depth_maps_m):
        rot, origin = cam2global[:3, :3], cam2global[:3, 3]
        h, w = depth.shape
        # camera coordinates R^T (p - o), one axis at a time on the shrinking set of candidates
        def axis(a: int, i=None):
            x, y, zz = (px, py, pz) if i is None else (px[i], py[i], pz[i])
            return (x - origin[0]) * rot[0, a] + (y - origin[1]) * rot[1, a] + (zz - origin[2]) * rot[2, a]

        z = axis(2)
        idx = np.nonzero(z > 0)[0]
        z = z[idx]
        col = np.floor(k[0, 0] * axis(0, idx) / z + k[0, 2])
        ok = np.nonzero((col >= 0) & (col < w))[0]
        idx, z, col = idx[ok], z[ok], col[ok]
        row = np.floor(k[1, 1] * axis(1, idx) / z + k[1, 2])
        ok = np.nonzero((row >= 0) & (row < h))[0]
        idx, z, col, row = idx[ok], z[ok], col[ok], row[ok]
        d = depth[row.astype(np.int64), col.astype(np.int64)]
        d = np.where(d > 0, d, np.inf)
        seen[idx[z <= d + HALF_VOXEL_M]] = True
    return seen.reshape(centres_global.shape[:-1])


def depth_png_to_m(depth_u16: np.ndarray) -> np.ndarray:
    """Truth depth PNG (uint16, metres * 256, 0 = no hit) -> float64 metres (0 kept for no hit)."""
    return depth_u16.astype(np.float64) / 256.0


def depth_m_to_png(depth_m: np.ndarray) -> np.ndarray:
    """float depth in metres (0 = no hit) -> uint16 metres * 256 (KITTI convention), saturating at 255.99 m."""
    return np.clip(np.round(depth_m * 256.0), 0, 65535).astype(np.uint16)
