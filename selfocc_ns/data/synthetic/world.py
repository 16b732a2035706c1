"""The analytic world of a scene, rebuilt from its JSON description: solids at any time, exact ray
casting (cameras, LiDAR, arbitrary rays), and the signed distance / class of any point.

Ray casting of a camera or LiDAR uses the regular ray grid: every primitive is tested only against
the rays inside its projected bounding box (camera) or azimuth interval (LiDAR), near to far, and
skipped when already hidden; the ground plane and the sidewalk slabs are tested against all rays.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from selfocc_ns.data.occ3d import CLASS_ID, FREE_ID, SKY_ID
from selfocc_ns.data.synthetic import raycast as rc
from selfocc_ns.data.synthetic import shading
from selfocc_ns.data.synthetic.grid_cast import GROUND, NO_HIT, SIDEWALK_KINDS, camera_windows, cast_grid, lidar_windows
from selfocc_ns.data.synthetic.rig import LidarPattern, rotation_z
from selfocc_ns.data.synthetic.road import ArcRoad, GroundPatches, ground_class
from selfocc_ns.data.synthetic.sdf import sdf_annular_slab, sdf_ground, sdf_primitive
from selfocc_ns.data.synthetic.surface import Surface, surface_of_hits

MAX_RAY_DISTANCE_M = 250.0
"""Rays end here: farther ground counts as no hit (sky colour, depth 0, semantics 17)."""
MAX_OBJECT_DISTANCE_M = 160.0
"""Objects farther than this from a sensor are not cast (they would cover at most a few pixels)."""


@dataclass
class RayHits:
    """What each of N rays hit first (global frame)."""

    distance_m: np.ndarray
    """(N,) float32 along the unit ray, +inf for no hit."""
    class_id: np.ndarray
    """(N,) uint8 Occ3D class of the surface hit, 17 where nothing is hit."""
    point: np.ndarray
    """(N, 3) float64 hit points (NaN where nothing is hit)."""
    normal: np.ndarray
    """(N, 3) float32 outward unit normals (0 where nothing is hit)."""
    object_id: np.ndarray
    """(N,) int32 index into the description's `objects`; -1 for ground, sidewalks and no hit."""
    kind: np.ndarray
    """(N,) int32: -1 nothing, -2 ground, -3/-4 left/right sidewalk, >= 0 primitive of that instant."""

    @staticmethod
    def from_surface(surf: Surface, n: int) -> "RayHits":
        hits = RayHits(distance_m=np.full(n, np.inf, np.float32), class_id=np.full(n, FREE_ID, np.uint8),
                       point=np.full((n, 3), np.nan), normal=np.zeros((n, 3), np.float32),
                       object_id=np.full(n, -1, np.int32), kind=np.full(n, NO_HIT, np.int32))
        r = surf.ray
        hits.distance_m[r], hits.class_id[r], hits.object_id[r], hits.kind[r] = (
            surf.distance_m, surf.class_id, surf.object_id, surf.kind)
        hits.point[r] = np.stack([surf.x, surf.y, surf.z], -1)
        hits.normal[r] = np.stack([surf.nx, surf.ny, surf.nz], -1)
        return hits


@dataclass
class CameraRender:
    """A rendered camera image with its exact truth (H x W)."""

    rgb: np.ndarray
    """uint8 (H, W, 3)."""
    depth_z_m: np.ndarray
    """float32 z-depth along the optical axis, 0 where nothing is hit."""
    distance_m: np.ndarray
    """float32 distance along each pixel's ray, +inf where nothing is hit."""
    class_id: np.ndarray
    """uint8 Occ3D class of the surface seen, 17 = sky."""
    object_id: np.ndarray
    """int32 object index (-1 ground, sidewalk or sky)."""


@dataclass
class LidarScan:
    """One LiDAR sweep (P returns, no-hit rays dropped)."""

    points_sensor: np.ndarray
    """(P, 3) float32 in the LiDAR frame."""
    intensity: np.ndarray
    ring: np.ndarray
    """(P,) ring (beam) index 0..beams-1, 0 lowest."""
    class_id: np.ndarray
    object_id: np.ndarray
    points_global: np.ndarray
    """(P, 3) float64."""


@functools.lru_cache(maxsize=32)
def _pixel_rays_cached(key: bytes, width: int, height: int) -> Tuple[np.ndarray, ...]:
    intrinsics = np.frombuffer(key, dtype=np.float64).reshape(3, 3)
    # Pixel (i, j) covers [j, j + 1) x [i, i + 1): its centre is (j + 0.5, i + 0.5), as in nerfstudio.
    u, v = np.meshgrid(np.arange(width, dtype=np.float64) + 0.5, np.arange(height, dtype=np.float64) + 0.5)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(intrinsics).T
    norm = np.linalg.norm(rays, axis=-1)
    unit = rays / norm[..., None]
    return tuple(np.ascontiguousarray(unit[..., a], dtype=np.float32) for a in range(3)) + (
        (1.0 / norm).astype(np.float32),)


def pixel_rays(intrinsics: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, ...]:
    """Unit ray directions through the pixel centres in the camera frame as three (H, W) planes x, y, z
    (the z plane is also the z-depth per unit distance)."""
    return _pixel_rays_cached(np.ascontiguousarray(intrinsics, dtype=np.float64).tobytes(), width, height)[:3]


def rotate_planes(rotation: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Rotate direction planes (any shape) by a 3x3 matrix; float32 out."""
    r = rotation.astype(np.float32)
    return tuple(r[a, 0] * x + r[a, 1] * y + r[a, 2] * z for a in range(3))


class SceneWorld:
    """One scene's solids, ego path and moving objects; see the module docstring."""

    def __init__(self, description: Dict):
        self.description = description
        self.name: str = description["name"]
        self.road = ArcRoad.from_dict(description["road"])
        self.patches = GroundPatches.from_dict(description["ground_patches"])
        self.markings: Dict = description["markings"]
        self.objects: List[Dict] = description["objects"]
        self.tracks: List[Dict] = description["tracks"]
        self.ego: Dict = description["ego"]
        parts = [(i, p) for i, obj in enumerate(self.objects) for p in obj["parts"]]
        self._part_object = np.array([i for i, _ in parts], dtype=np.int32)
        self._local = rc.Primitives(
            shape=np.array([p["shape"] for _, p in parts], dtype=np.int8),
            centre=np.array([p["centre"] for _, p in parts], dtype=np.float64).reshape(-1, 3),
            yaw=np.array([p["yaw"] for _, p in parts], dtype=np.float64),
            half=np.array([p["half"] for _, p in parts], dtype=np.float64).reshape(-1, 3),
            class_id=np.array([p["class_id"] for _, p in parts], dtype=np.uint8),
            material=np.array([p["material"] for _, p in parts], dtype=np.int16),
            colour=np.array([p["colour"] for _, p in parts], dtype=np.float32).reshape(-1, 3),
            object_id=self._part_object.copy(),
            texture_offset=np.array([self.objects[i]["texture_offset"] for i, _ in parts], np.float32).reshape(-1, 2),
        )
        self._is_static = np.array([self.objects[i]["track"] < 0 for i, _ in parts], dtype=bool)
        self._static = self._place(self._local.take(self._is_static), {})
        r = self.road
        slab_mid = float(r.theta(0.5 * (r.s_min_m + r.s_max_m)))
        slab_half_span = (r.s_max_m - r.s_min_m) / (2.0 * r.radius_m)
        self._slabs = [rc.AnnularSlab(r_in, r_out, r.kerb_height_m, slab_mid, slab_half_span)
                       for r_in, r_out in r.sidewalk_radii()]
        self._circle_centre = np.array([r.centre_x_m, r.centre_y_m, 0.0])

    # ------------------------------------------------------------------ poses

    def _track_pose(self, track: Dict, timestamp_us: int) -> Tuple[float, float, float]:
        s = track["s0_m"] + track["speed_mps"] * (timestamp_us - track["t0_us"]) * 1e-6
        x, y = self.road.xy(np.array(s), np.array(track["d_m"]))
        yaw = float(self.road.heading(np.array(s))) + (math.pi if track["speed_mps"] < 0 else 0.0)
        return float(x), float(y), yaw

    def object_pose(self, index: int, timestamp_us: int) -> Tuple[float, float, float, float]:
        """(x, y, z, yaw) of object `index` at a time (static objects ignore the time)."""
        obj = self.objects[index]
        if obj["track"] < 0:
            return tuple(obj["pose"])  # type: ignore[return-value]
        x, y, yaw = self._track_pose(self.tracks[obj["track"]], timestamp_us)
        return x, y, float(obj["pose"][2]), yaw

    def ego_pose(self, timestamp_us: int) -> np.ndarray:
        """4x4 ego -> global at a time: on the ego lane, heading along the road, origin on the ground."""
        x, y, yaw = self._track_pose(self.ego, timestamp_us)
        pose = np.eye(4)
        pose[:3, :3] = rotation_z(yaw)
        pose[:3, 3] = (x, y, 0.0)
        return pose

    def _place(self, local: rc.Primitives, poses: Dict[int, Tuple[float, float, float, float]]) -> rc.Primitives:
        obj = local.object_id
        pose = np.array([poses.get(int(i)) or self.objects[int(i)]["pose"] for i in obj], dtype=np.float64)
        pose = pose.reshape(-1, 4)
        c, s = np.cos(pose[:, 3]), np.sin(pose[:, 3])
        lc = local.centre
        centre = np.stack([pose[:, 0] + c * lc[:, 0] - s * lc[:, 1], pose[:, 1] + s * lc[:, 0] + c * lc[:, 1],
                           pose[:, 2] + lc[:, 2]], -1)
        return rc.Primitives(local.shape, centre, local.yaw + pose[:, 3], local.half, local.class_id, local.material,
                             local.colour, local.object_id, local.texture_offset)

    def primitives_at(self, timestamp_us: int) -> rc.Primitives:
        """All bounded solids at a time (static ones first, then the moving objects' parts)."""
        moving = self._local.take(~self._is_static)
        if len(moving) == 0:
            return self._static
        poses = {int(i): self.object_pose(int(i), timestamp_us) for i in np.unique(moving.object_id)}
        return rc.Primitives.concat([self._static, self._place(moving, poses)])

    # ------------------------------------------------------------------ ray casting

    def _cast_unbounded(self, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray,
                        max_distance_m: float) -> Tuple[np.ndarray, np.ndarray]:
        """Ground and sidewalks for rays from `origin` (3,) or (..., 3), direction components of any shape."""
        origin = np.asarray(origin, dtype=np.float64)
        t = rc.intersect_ground(origin[..., 2], dz, max_distance_m)
        kind = np.where(np.isfinite(t), GROUND, NO_HIT).astype(np.int32)
        # Sensors are above the kerb: only rays going down can reach a sidewalk slab.
        down = np.nonzero(dz.reshape(-1) < 0)[0]
        oc = origin - self._circle_centre
        if oc.ndim > 1:
            oc = oc.reshape(-1, 3)[down]
        sub = [a.reshape(-1)[down] for a in (dx, dy, dz)]
        t_flat, kind_flat = t.reshape(-1), kind.reshape(-1)
        for k, slab in enumerate(self._slabs):
            ts = rc.intersect_annular_slab(oc, *sub, slab)
            closer = ts < t_flat[down]
            t_flat[down[closer]] = ts[closer]
            kind_flat[down[closer]] = SIDEWALK_KINDS[k]
        return t_flat.reshape(t.shape), kind_flat.reshape(kind.shape)

    def _near_primitives(self, prims: rc.Primitives, origin: np.ndarray, max_distance_m: float) -> np.ndarray:
        """Indices of primitives within reach of a sensor at `origin`, sorted near to far."""
        dist = np.linalg.norm(prims.centre - origin, axis=-1) - prims.bounding_radius()
        near = np.nonzero(dist < max_distance_m)[0]
        return near[np.argsort(dist[near], kind="stable")]

    def render_camera(self, cam2global: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                      timestamp_us: int) -> CameraRender:
        """Render an OpenCV pinhole camera (pixel (i, j) centre at (j + 0.5, i + 0.5)) at a time."""
        planes = _pixel_rays_cached(np.ascontiguousarray(intrinsics, dtype=np.float64).tobytes(), width, height)
        z_per_distance = planes[3]
        dirs = rotate_planes(cam2global[:3, :3], *planes[:3])
        origin = cam2global[:3, 3].astype(np.float64)
        prims = self.primitives_at(timestamp_us)
        near = self._near_primitives(prims, origin, MAX_OBJECT_DISTANCE_M)
        windows = camera_windows(prims, near, cam2global, intrinsics, width, height)
        t, kind = self._cast_unbounded(origin, *dirs, MAX_RAY_DISTANCE_M)
        t, kind = cast_grid(prims, origin, dirs, t, kind, windows)
        flat_dirs = np.stack([d.reshape(-1) for d in dirs], -1)
        surf = surface_of_hits(self, prims, origin, flat_dirs, t.reshape(-1), kind.reshape(-1))
        n = width * height
        rgb = np.empty((n, 3), np.float32)
        miss = np.nonzero(kind.reshape(-1) == NO_HIT)[0]
        rgb[miss] = shading.sky_colour(flat_dirs[miss])
        rgb[surf.ray] = shading.shade(surf, flat_dirs[surf.ray], 1.0 / float(intrinsics[0, 0]), self.markings)
        distance = np.full(n, np.inf, np.float32)
        distance[surf.ray] = surf.distance_m
        distance = distance.reshape(height, width)
        class_id = np.full(n, SKY_ID, np.uint8)
        class_id[surf.ray] = surf.class_id
        object_id = np.full(n, -1, np.int32)
        object_id[surf.ray] = surf.object_id
        depth = np.where(np.isfinite(distance), distance * z_per_distance, 0.0).astype(np.float32)
        return CameraRender(
            rgb=np.round(rgb * 255.0).astype(np.uint8).reshape(height, width, 3), depth_z_m=depth,
            distance_m=distance, class_id=class_id.reshape(height, width), object_id=object_id.reshape(height, width),
        )

    def scan_lidar(self, lidar2global: np.ndarray, timestamp_us: int, pattern: LidarPattern = LidarPattern()
                   ) -> LidarScan:
        """One instantaneous 360-degree sweep from the LiDAR pose (no rolling shutter: nuScenes sweeps are
        motion-compensated to their timestamp)."""
        dirs_sensor = pattern.directions().astype(np.float32)  # (beams, columns, 3)
        dirs = rotate_planes(lidar2global[:3, :3], *(dirs_sensor[..., a] for a in range(3)))
        origin = lidar2global[:3, 3].astype(np.float64)
        prims = self.primitives_at(timestamp_us)
        near = self._near_primitives(prims, origin, pattern.max_range_m)
        windows = lidar_windows(prims, near, lidar2global, pattern)
        t, kind = self._cast_unbounded(origin, *dirs, pattern.max_range_m)
        t, kind = cast_grid(prims, origin, dirs, t, kind, windows)
        t, kind = t.reshape(-1), kind.reshape(-1)
        flat_dirs = np.stack([d.reshape(-1) for d in dirs], -1)
        in_range = (t >= pattern.min_range_m) & (t <= pattern.max_range_m)
        kind = np.where(in_range, kind, NO_HIT)
        surf = surface_of_hits(self, prims, origin, flat_dirs, t, kind)
        ring = surf.ray // pattern.columns  # rays are stored beam-major
        return LidarScan(
            points_sensor=(surf.distance_m[:, None] * dirs_sensor.reshape(-1, 3)[surf.ray]).astype(np.float32),
            intensity=shading.lidar_intensity(surf, flat_dirs[surf.ray], self.markings),
            ring=ring.astype(np.float32), class_id=surf.class_id, object_id=surf.object_id,
            points_global=np.stack([surf.x, surf.y, surf.z], -1),
        )

    def cast_rays(self, origins: np.ndarray, directions: np.ndarray, timestamp_us: int,
                  max_distance_m: float = MAX_RAY_DISTANCE_M, chunk: int = 65536) -> RayHits:
        """First hit of arbitrary rays (global frame; directions need not be unit) at a time."""
        origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), np.shape(directions))
        dirs64 = np.asarray(directions, dtype=np.float64)
        dirs = (dirs64 / np.linalg.norm(dirs64, axis=-1, keepdims=True)).astype(np.float32)
        prims = self.primitives_at(timestamp_us)
        radius = prims.bounding_radius()
        ts, kinds = [], []
        for a in range(0, dirs.shape[0], chunk):
            o, d = origins[a:a + chunk], dirs[a:a + chunk]
            t, kind = self._cast_unbounded(o, d[:, 0], d[:, 1], d[:, 2], max_distance_m)
            for i in range(len(prims)):
                w = prims.centre[i] - o
                along = (w * d).sum(-1)
                perp2 = (w * w).sum(-1) - along**2
                cand = np.nonzero((perp2 <= radius[i] ** 2) & (along + radius[i] > 0)
                                  & (along - radius[i] < np.minimum(t, max_distance_m)))[0]
                if cand.size == 0:
                    continue
                dc = d[cand]
                ti = rc.intersect_primitive(prims, i, o[cand], dc[:, 0], dc[:, 1], dc[:, 2])
                better = ti < t[cand]
                t[cand[better]] = ti[better]
                kind[cand[better]] = i
            ts.append(t)
            kinds.append(kind)
        surf = surface_of_hits(self, prims, origins, dirs, np.concatenate(ts), np.concatenate(kinds))
        return RayHits.from_surface(surf, dirs.shape[0])

    # ------------------------------------------------------------------ signed distance

    def sdf_and_class(self, points_global: np.ndarray, timestamp_us: int,
                      primitives: Optional[rc.Primitives] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Signed distance (N,) float64 to the nearest solid and that solid's Occ3D class (N,) uint8.

        Ties go to objects (earlier primitives first), then sidewalks, then the ground (objects are sunk
        into what they stand on, so ties are rare anyway). The flat solids are evaluated everywhere; an
        object only at points within its bounding box grown by their flat distance (bucketed), and exactly
        only where its bounding-sphere lower bound can still win.
        """
        p = np.asarray(points_global, dtype=np.float64).reshape(-1, 3)
        prims = self.primitives_at(timestamp_us) if primitives is None else primitives
        flat = sdf_ground(p)
        flat_cls = ground_class(self.road, self.patches, p[:, 0], p[:, 1])
        for slab in reversed(self._slabs):  # reversed + '<=' keeps the left slab first on ties
            d = sdf_annular_slab(p - self._circle_centre, slab)
            better = d <= flat
            flat[better] = d[better]
            flat_cls[better] = CLASS_ID["sidewalk"]
        best = np.full(p.shape[0], np.inf)
        cls = np.full(p.shape[0], FREE_ID, dtype=np.uint8)
        if len(prims) and p.shape[0]:
            corners = prims.corners()
            box_lo, box_hi = corners.min(1), corners.max(1)
            # Points are bucketed by their flat distance: an object farther from a point than the flat
            # solids cannot be its nearest solid, so near-ground points only meet nearby objects.
            tiers = np.digitize(flat, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
            for tier in np.unique(tiers):
                members = np.nonzero(tiers == tier)[0]
                self._objects_sdf(prims, p, members, float(flat[members].max()), box_lo, box_hi, flat, best, cls)
        use_flat = flat < best
        return np.where(use_flat, flat, best), np.where(use_flat, flat_cls, cls).astype(np.uint8)

    @staticmethod
    def _objects_sdf(prims: rc.Primitives, p: np.ndarray, members: np.ndarray, reach: float, box_lo: np.ndarray,
                     box_hi: np.ndarray, flat: np.ndarray, best: np.ndarray, cls: np.ndarray) -> None:
        """Update `best` / `cls` of the points `members` with every object within `reach` (x-sorted slices)."""
        order = members[np.argsort(p[members, 0], kind="stable")]
        xs = p[order, 0]
        radius = prims.bounding_radius()
        lo, hi = box_lo - reach, box_hi + reach
        for i in range(len(prims)):
            cand = order[np.searchsorted(xs, lo[i, 0]):np.searchsorted(xs, hi[i, 0], side="right")]
            if cand.size == 0:
                continue
            q = p[cand]
            cand = cand[(q[:, 1] >= lo[i, 1]) & (q[:, 1] <= hi[i, 1]) & (q[:, 2] >= lo[i, 2]) & (q[:, 2] <= hi[i, 2])]
            rel = p[cand] - prims.centre[i]
            keep = np.linalg.norm(rel, axis=-1) - radius[i] <= np.minimum(best[cand], flat[cand])
            cand, rel = cand[keep], rel[keep]
            if cand.size == 0:
                continue
            d = sdf_primitive(int(prims.shape[i]), rel, float(prims.yaw[i]), prims.half[i])
            better = d < best[cand]
            best[cand[better]] = d[better]
            cls[cand[better]] = prims.class_id[i]

    def sdf(self, points_global: np.ndarray, timestamp_us: int) -> np.ndarray:
        """Signed distance (N,) in metres to the nearest solid at a time (< 0 inside)."""
        return self.sdf_and_class(points_global, timestamp_us)[0]
