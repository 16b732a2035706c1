"""Writers for occupancy grids: Occ3D labels.npz, coloured voxel PLY, bird's-eye-view PNG, SDF mesh PLY.

Grids are Occ3D-format class grids: [200, 200, 16] (or any [X, Y, Z]) indexed [x, y, z] in the
ego frame (x forward, y left, z up), index 0 at the minimum corner, 17 = free. Every writer
creates the parent folder and returns what it wrote, so callers can report counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from plyfile import PlyData, PlyElement

from selfocc_ns.data.occ3d import FREE_ID, OCC3D_PALETTE, OCC3D_RANGE_M, OCC3D_VOXEL_M, save_labels

PathLike = Union[str, Path]
OCC3D_ORIGIN_M: Tuple[float, float, float] = tuple(OCC3D_RANGE_M[:3])  # type: ignore[assignment]
"""Minimum corner of the Occ3D grid (metres, ego frame)."""

# the 8 corners of a unit cube and its 12 triangles (outward-facing, counter-clockwise seen from outside)
_CUBE_CORNERS = np.array(
    [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=np.float32
)
_CUBE_TRIANGLES = np.array(
    [
        [0, 2, 1], [0, 3, 2],  # bottom (z = 0), normal -z
        [4, 5, 6], [4, 6, 7],  # top (z = 1), normal +z
        [0, 1, 5], [0, 5, 4],  # y = 0, normal -y
        [2, 3, 7], [2, 7, 6],  # y = 1, normal +y
        [1, 2, 6], [1, 6, 5],  # x = 1, normal +x
        [3, 0, 4], [3, 4, 7],  # x = 0, normal -x
    ],
    dtype=np.int32,
)  # fmt: skip


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _parent(path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_occ3d_npz(
    path: PathLike,
    semantics,
    mask_camera: Optional[np.ndarray] = None,
    mask_lidar: Optional[np.ndarray] = None,
) -> Path:
    """Write an Occ3D `labels.npz` (uint8 `semantics` with 17 = free, `mask_lidar`, `mask_camera`).

    Masks that are not known are written as all ones (every voxel "observed"), so Occ3D readers
    that require the keys work and an evaluation with the mask scores every voxel.
    """
    sem = _as_numpy(semantics).astype(np.uint8)
    ones = np.ones(sem.shape, dtype=np.uint8)
    mask_camera_np = ones if mask_camera is None else _as_numpy(mask_camera).astype(np.uint8)
    mask_lidar_np = ones if mask_lidar is None else _as_numpy(mask_lidar).astype(np.uint8)
    save_labels(_parent(path), sem, mask_lidar_np, mask_camera_np)
    return Path(path)


def occupied_voxels(semantics, free_id: int = FREE_ID) -> Tuple[np.ndarray, np.ndarray]:
    """Indices [N, 3] (x, y, z order, C order of the grid) and class ids [N] of the non-free voxels."""
    sem = _as_numpy(semantics)
    idx = np.argwhere(sem != free_id)
    return idx, sem[tuple(idx.T)].astype(np.uint8)


def write_voxel_ply(
    path: PathLike,
    semantics,
    palette: np.ndarray = OCC3D_PALETTE,
    voxel_size_m: Union[float, Sequence[float]] = OCC3D_VOXEL_M,
    origin_m: Sequence[float] = OCC3D_ORIGIN_M,
    as_cubes: bool = False,
    free_id: int = FREE_ID,
) -> int:
    """Binary PLY of the occupied voxels, coloured by class; returns the number of voxels written.

    Points (default): one vertex per voxel at its centre, origin_m + (index + 0.5) * voxel_size_m,
    with uchar `red, green, blue` from `palette[class]` and uchar `label` (the class id). Cubes:
    8 vertices and 12 triangles per voxel (faces `vertex_indices`), vertex colours and labels as
    for points, so mesh viewers show solid voxels. Readable by plyfile and open3d
    (`read_point_cloud` / `read_triangle_mesh`).
    """
    idx, labels = occupied_voxels(semantics, free_id)
    size = np.broadcast_to(np.asarray(voxel_size_m, dtype=np.float64), (3,))
    origin = np.asarray(origin_m, dtype=np.float64)
    colours = np.asarray(palette, dtype=np.uint8)[labels]
    if as_cubes:
        corners = origin + (idx[:, None, :] + _CUBE_CORNERS[None]) * size  # [N, 8, 3]
        xyz = corners.reshape(-1, 3)
        colours = np.repeat(colours, 8, axis=0)
        labels_v = np.repeat(labels, 8)
        faces = (_CUBE_TRIANGLES[None] + 8 * np.arange(len(idx), dtype=np.int32)[:, None, None]).reshape(-1, 3)
    else:
        xyz = origin + (idx + 0.5) * size
        labels_v = labels
        faces = None
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("label", "u1")]
    vertex = np.empty(len(xyz), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vertex["red"], vertex["green"], vertex["blue"] = colours[:, 0], colours[:, 1], colours[:, 2]
    vertex["label"] = labels_v
    elements = [PlyElement.describe(vertex, "vertex")]
    if faces is not None:
        elements.append(_face_element(faces))
    PlyData(elements, text=False).write(str(_parent(path)))
    return int(len(idx))


def _face_element(faces: np.ndarray) -> PlyElement:
    face = np.empty(len(faces), dtype=[("vertex_indices", "i4", (3,))])
    face["vertex_indices"] = faces
    return PlyElement.describe(face, "face")


def bev_image(
    semantics,
    palette: np.ndarray = OCC3D_PALETTE,
    free_id: int = FREE_ID,
    background_rgb: Tuple[int, int, int] = (255, 255, 255),
    pixels_per_voxel: int = 1,
) -> np.ndarray:
    """Top-down RGB image [X * s, Y * s, 3] (uint8) of a class grid: the highest occupied voxel per column.

    Orientation: x forward points up and y left points left, as seen from above, so the ego
    vehicle sits at the image centre facing up: pixel (row r, col c) shows the column
    (x index X - 1 - r, y index Y - 1 - c). Columns with no occupied voxel get `background_rgb`.
    """
    sem = _as_numpy(semantics)
    occupied = sem != free_id
    nz = sem.shape[2]
    # index of the highest occupied z per column (argmax over the reversed z axis finds it first)
    top_z = nz - 1 - np.argmax(occupied[:, :, ::-1], axis=2)
    top_class = np.take_along_axis(sem, top_z[..., None], axis=2)[..., 0]
    rgb = np.asarray(palette, dtype=np.uint8)[np.clip(top_class, 0, len(palette) - 1)]
    rgb[~occupied.any(axis=2)] = np.asarray(background_rgb, dtype=np.uint8)
    rgb = rgb[::-1, ::-1]  # x up, y left
    if pixels_per_voxel > 1:
        rgb = np.repeat(np.repeat(rgb, pixels_per_voxel, axis=0), pixels_per_voxel, axis=1)
    return np.ascontiguousarray(rgb)


def write_bev_png(path: PathLike, semantics, **bev_options: Any) -> np.ndarray:
    """Write `bev_image(semantics, **bev_options)` (palette, free_id, background_rgb, pixels_per_voxel) as an
    RGB PNG; returns the image array."""
    from PIL import Image

    rgb = bev_image(semantics, **bev_options)
    Image.fromarray(rgb, mode="RGB").save(_parent(path))
    return rgb


def write_mesh_ply(
    path: PathLike,
    sdf,
    spacing_m: Union[float, Sequence[float]],
    origin_m: Sequence[float],
    level: float = 0.0,
    pose: Optional[np.ndarray] = None,
) -> Tuple[int, int]:
    """Marching-cubes mesh of the `level` set of an SDF grid as a binary PLY; returns (vertices, faces).

    Args:
        sdf: [X, Y, Z] SDF samples (negative inside), indexed [x, y, z].
        spacing_m: distance between neighbouring samples per axis (metres).
        origin_m: position of sample [0, 0, 0] (metres). For Occ3D voxel centres: origin
            (-39.8, -39.8, -0.8), spacing 0.4; for the official linspace points: origin
            (-40, -40, -1), spacing (80 / 199, 80 / 199, 6.4 / 15).
        level: iso-level (the occupancy threshold).
        pose: rigid 4x4 applied to the vertices (e.g. a LiDAR-frame grid's ref -> ego); None: the grid's frame.

    Vertices are in metres (ego frame, or the grid's frame moved by `pose`); triangles face outwards
    (towards increasing SDF). A grid that never crosses `level` gives an empty mesh (0, 0) instead of an
    error, so an export over many samples does not stop at an untrained model.
    """
    from skimage import measure

    values = _as_numpy(sdf).astype(np.float32)
    spacing = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing_m, dtype=np.float64), (3,)))
    if not (values.min() < level < values.max()):
        verts = np.zeros((0, 3), dtype=np.float32)
        faces = np.zeros((0, 3), dtype=np.int32)
    else:
        # 'descent' winds the triangles counter-clockwise seen from the side of larger values: for an
        # SDF (negative inside) their normals point out of the surface (checked on a sphere in the tests)
        verts, faces, _, _ = measure.marching_cubes(values, level=level, spacing=spacing, gradient_direction="descent")
        verts = verts + np.asarray(origin_m, dtype=np.float64)
        if pose is not None:  # rigid: the winding (and so the outward normals) is kept
            verts = verts @ np.asarray(pose, dtype=np.float64)[:3, :3].T + np.asarray(pose, dtype=np.float64)[:3, 3]
    vertex = np.empty(len(verts), dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    vertex["x"], vertex["y"], vertex["z"] = verts[:, 0], verts[:, 1], verts[:, 2]
    PlyData([PlyElement.describe(vertex, "vertex"), _face_element(faces.astype(np.int32))], text=False).write(
        str(_parent(path))
    )
    return int(len(verts)), int(len(faces))
