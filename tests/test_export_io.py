"""Occupancy writers: npz round trip, voxel PLY (points and cubes), BEV PNG, marching-cubes mesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

from selfocc_ns.data.occ3d import CLASS_ID, FREE_ID, OCC3D_PALETTE, OCC3D_SHAPE, load_labels
from selfocc_ns.eval.export_io import bev_image, write_bev_png, write_mesh_ply, write_occ3d_npz, write_voxel_ply

CAR, ROAD, TREE = CLASS_ID["car"], CLASS_ID["driveable_surface"], CLASS_ID["vegetation"]


def _grid() -> np.ndarray:
    sem = np.full(OCC3D_SHAPE, FREE_ID, dtype=np.uint8)
    sem[199, 199, 0] = ROAD  # front-left corner column: road under a car
    sem[199, 199, 3] = CAR
    sem[0, 0, 5] = TREE  # back-right corner column
    sem[100, 100, 1] = ROAD
    return sem


def test_occ3d_npz_round_trip(tmp_path):
    sem = _grid()
    mask = np.zeros(OCC3D_SHAPE, dtype=np.uint8)
    mask[:100] = 1
    path = write_occ3d_npz(tmp_path / "scene-0061" / "tok" / "labels.npz", torch.from_numpy(sem), mask_camera=mask)
    back = load_labels(path)
    assert np.array_equal(back["semantics"], sem) and back["semantics"].dtype == np.uint8
    assert np.array_equal(back["mask_camera"], mask)
    assert back["mask_lidar"].all()  # unknown mask: all ones
    default = load_labels(write_occ3d_npz(tmp_path / "b.npz", sem))
    assert default["mask_camera"].all()


def test_voxel_ply_points_and_cubes(tmp_path):
    sem = _grid()
    n = write_voxel_ply(tmp_path / "points.ply", sem)
    assert n == 4
    ply = PlyData.read(str(tmp_path / "points.ply"))
    assert ply.text is False
    v = ply["vertex"].data
    assert len(v) == 4
    car = v[v["label"] == CAR][0]
    # centre of voxel (199, 199, 3): -40 + 199.5 * 0.4 = 39.8, z = -1 + 3.5 * 0.4 = 0.4
    assert (car["x"], car["y"], car["z"]) == pytest.approx((39.8, 39.8, 0.4), abs=1e-5)
    assert (car["red"], car["green"], car["blue"]) == tuple(OCC3D_PALETTE[CAR])
    assert sorted(v["label"].tolist()) == sorted([ROAD, CAR, TREE, ROAD])

    n = write_voxel_ply(tmp_path / "cubes.ply", sem, as_cubes=True)
    cubes = PlyData.read(str(tmp_path / "cubes.ply"))
    assert len(cubes["vertex"].data) == 8 * n and len(cubes["face"].data) == 12 * n
    xyz = np.stack([cubes["vertex"].data[a] for a in "xyz"], axis=1)
    tree = xyz[cubes["vertex"].data["label"] == TREE]
    assert tree.min(0) == pytest.approx([-40.0, -40.0, 1.0], abs=1e-5)  # voxel (0, 0, 5) spans z 1.0..1.4
    assert tree.max(0) == pytest.approx([-39.6, -39.6, 1.4], abs=1e-5)
    # every cube triangle faces outwards: normal . (triangle centre - cube centre) > 0
    faces = np.stack(cubes["face"].data["vertex_indices"])
    tri = xyz[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centres = xyz.reshape(-1, 8, 3).mean(1)[np.arange(len(faces)) // 12]
    assert (np.einsum("ij,ij->i", normals, tri.mean(1) - centres) > 0).all()


def test_voxel_ply_opens_in_open3d(tmp_path):
    try:
        import open3d as o3d  # a nerfstudio dependency; it loads libusb-1.0 (Debian: libusb-1.0-0)
    except ImportError as err:
        pytest.fail(f"open3d does not import ({err}); install libusb-1.0-0 (.ci/run does)")
    write_voxel_ply(tmp_path / "points.ply", _grid())
    cloud = o3d.io.read_point_cloud(str(tmp_path / "points.ply"))
    assert len(cloud.points) == 4 and cloud.has_colors()


def test_bev_png_orientation_and_colours(tmp_path):
    rgb = write_bev_png(tmp_path / "bev.png", _grid(), background_rgb=(1, 2, 3))
    png = np.asarray(Image.open(tmp_path / "bev.png").convert("RGB"))
    assert np.array_equal(png, rgb) and png.shape == (200, 200, 3)
    # x forward = up, y left = left: the front-left column (199, 199) is the top-left pixel, showing its top (the car)
    assert tuple(png[0, 0]) == tuple(OCC3D_PALETTE[CAR])
    assert tuple(png[199, 199]) == tuple(OCC3D_PALETTE[TREE])  # back-right column
    assert tuple(png[99, 99]) == tuple(OCC3D_PALETTE[ROAD])  # column (100, 100)
    assert tuple(png[0, 199]) == (1, 2, 3)  # front-right: empty
    assert int((png != np.array([1, 2, 3])).any(-1).sum()) == 3
    assert bev_image(_grid(), pixels_per_voxel=2).shape == (400, 400, 3)


def test_mesh_ply_of_a_sphere_sdf(tmp_path):
    spacing, origin = 0.4, np.array([-8.0, -8.0, -8.0])
    axis = origin[0] + spacing * np.arange(41)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    centre = np.array([1.0, -2.0, 0.5])
    sdf = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) - 5.0
    n_verts, n_faces = write_mesh_ply(tmp_path / "mesh.ply", torch.from_numpy(sdf), spacing, origin)
    assert n_verts > 500 and n_faces > 1000
    mesh = PlyData.read(str(tmp_path / "mesh.ply"))
    xyz = np.stack([mesh["vertex"].data[a] for a in "xyz"], axis=1).astype(np.float64)
    radius = np.linalg.norm(xyz - centre, axis=1)
    assert np.abs(radius - 5.0).max() < 0.05  # vertices in metres, on the zero level set
    faces = np.stack(mesh["face"].data["vertex_indices"])
    tri = xyz[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    solid = np.linalg.norm(normals, axis=1) > 1e-9  # marching cubes may emit zero-area triangles
    assert (np.einsum("ij,ij->i", normals[solid], tri.mean(1)[solid] - centre) > 0).all()  # outward
    # an SDF that never crosses the level: an empty, still readable mesh
    assert write_mesh_ply(tmp_path / "empty.ply", np.ones((4, 4, 4)), 0.4, (0, 0, 0)) == (0, 0)
    assert len(PlyData.read(str(tmp_path / "empty.ply"))["vertex"].data) == 0
