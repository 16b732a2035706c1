"""`reference_frame`: the same samples in the keyframe's ego frame and in its LIDAR_TOP frame (the official depth
presets' frame), with a known point in both, and every pose, LiDAR point and novel view transformed alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.data.dataset import load_lidar_points
from selfocc_ns.data.frames import reference_pose
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.sampling import FrameSamplingConfig
from selfocc_ns.data.synthetic.rig import LIDAR_TRANSLATION_M, LIDAR_YAW_DEG
from selfocc_ns.eval.runner import mirror_rig
from selfocc_ns.viewer.render import EgoCamera, in_reference_frame


def managers(world):
    def make(frame):
        config = SelfOccDataManagerConfig(dataparser=SelfOccNuScenesDataParserConfig(data_dir=world), num_workers=0,
                                          sampling=FrameSamplingConfig(max_dist_m=6.0), reference_frame=frame)
        return config.setup(device="cpu", test_mode="test")

    return make("ego"), make("lidar")


@pytest.fixture(scope="module")
def ego_and_lidar(small_world):
    return managers(small_world)


def transform(pose: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points @ pose[:3, :3].T + pose[:3, 3]


def test_a_known_point_in_both_frames(ego_and_lidar):
    """The synthetic LIDAR_TOP is mounted as on the real car: yawed -90 deg, at (0.943713, 0, 1.84023) m. The ego
    point (10, 2, 0.5) (10 m ahead, 2 m left, 0.5 m up) is (-2, 9.056287, -1.34023) in the LiDAR frame: x right,
    y forward, z up from the sensor."""
    assert LIDAR_YAW_DEG == -90.0 and LIDAR_TRANSLATION_M == (0.943713, 0.0, 1.84023)
    ego_dm, lidar_dm = ego_and_lidar
    frame = lidar_dm.eval_index.sample_frame(0)
    np.testing.assert_allclose(reference_pose(frame, "lidar"), frame.lidar_ego2global @ frame.lidar2ego)
    np.testing.assert_allclose(reference_pose(frame, "ego"), frame.ref_ego2global)
    ego_batch = next(ego_dm.iter_eval_batches([0]))
    lidar_batch = next(lidar_dm.iter_eval_batches([0]))
    torch.testing.assert_close(ego_batch.ego2ref_of(0), torch.eye(4))
    point = transform(lidar_batch.ego2ref_of(0).double(), torch.tensor([[10.0, 2.0, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(point, torch.tensor([[-2.0, 10.0 - 0.943713, 0.5 - 1.84023]], dtype=torch.float64),
                               atol=1e-5, rtol=0)
    # the LiDAR frame's own points are the raw sweep, untouched
    raw = torch.from_numpy(load_lidar_points(frame.lidar_path, "test"))
    torch.testing.assert_close(lidar_batch.lidar_points[0], raw, atol=1e-5, rtol=0)
    assert math.isclose(float(lidar_batch.cam2ego[0, 0, 2, 3]), float(ego_batch.cam2ego[0, 0, 2, 3]) - 1.84023,
                        abs_tol=0.05)  # CAM_FRONT ~1.5 m above the ground is ~0.3 m below the LiDAR


def test_every_pose_point_and_novel_view_moves_alike(ego_and_lidar):
    """Eval batch with novel views, and a training batch: lidar-frame quantity = ego2ref @ ego-frame quantity."""
    ego_dm, lidar_dm = ego_and_lidar
    e = next(ego_dm.iter_eval_batches([1], novel_views=True))
    lid = next(lidar_dm.iter_eval_batches([1], novel_views=True))
    m = lid.ego2ref_of(0)
    for name in ("cam2ego", "anchor_cam2ego"):
        torch.testing.assert_close(getattr(lid, name), m @ getattr(e, name), atol=1e-4, rtol=0)
    torch.testing.assert_close(lid.lidar_points[0], transform(m, e.lidar_points[0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(lid.images, e.images)
    torch.testing.assert_close(lid.occ_semantics, e.occ_semantics)
    ve, vl = e.novel[0], lid.novel[0]
    assert len(vl.lidar_points) == len(ve.lidar_points) >= 2
    torch.testing.assert_close(vl.cam2ego, m @ ve.cam2ego, atol=1e-4, rtol=0)
    torch.testing.assert_close(vl.lidar2ref, m @ ve.lidar2ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(vl.keyframe_lidar2ref, torch.eye(4), atol=1e-5, rtol=0)  # t's LiDAR is the frame
    for p_e, p_l in zip(ve.lidar_points, vl.lidar_points):
        torch.testing.assert_close(p_l, transform(m, p_e), atol=1e-3, rtol=0)
    te, _ = ego_dm.next_train(2)
    tl, _ = lidar_dm.next_train(2)
    assert te.info["frame_indices"] == tl.info["frame_indices"]
    torch.testing.assert_close(tl.source_cam2ego, tl.ego2ref[:, None, None] @ te.source_cam2ego, atol=1e-4, rtol=0)


def test_mirror_plane_and_viewer_cameras_follow_the_reference_frame():
    """The flip-TTA mirror of LiDAR-frame cameras is the LiDAR-frame image of the mirrored ego-frame cameras;
    a viewer camera placed in the ego frame renders from ego2ref @ cam2ego."""
    gen = torch.Generator().manual_seed(0)
    yaw = torch.tensor(-math.pi / 2)
    ego2ref = torch.eye(4)
    ego2ref[:2, :2] = torch.tensor([[yaw.cos(), yaw.sin()], [-yaw.sin(), yaw.cos()]])
    ego2ref[:3, 3] = torch.tensor([0.0, -0.94, -1.84])
    cam2ego = torch.eye(4).repeat(2, 1, 1)
    cam2ego[:, :3, 3] = torch.rand(2, 3, generator=gen)
    k = torch.tensor([[50.0, 0, 40.0], [0, 50.0, 20.0], [0, 0, 1.0]]).expand(2, 3, 3)
    images = torch.rand(2, 3, 9, 16, generator=gen)
    _, _, mirrored_ego = mirror_rig(images, k, cam2ego)
    _, _, mirrored_ref = mirror_rig(images, k, ego2ref @ cam2ego, ego2ref)
    torch.testing.assert_close(mirrored_ref, ego2ref @ mirrored_ego, atol=1e-5, rtol=0)
    view = EgoCamera(k[0], cam2ego[0], (9, 16))
    torch.testing.assert_close(in_reference_frame(view, ego2ref).cam2ego, ego2ref @ cam2ego[0])
    assert in_reference_frame(view, None) is view


def test_mesh_vertices_return_to_the_ego_frame(tmp_path):
    """A LiDAR-frame SDF grid (plane x_lidar = 1) exported with pose = ref -> ego lies at ego y = -1 (x_lidar is
    ego -y)."""
    from plyfile import PlyData

    from selfocc_ns.eval.export_io import write_mesh_ply

    xs = np.linspace(-2, 2, 9)
    sdf = np.broadcast_to((xs - 1.0)[:, None, None], (9, 9, 9)).copy()
    ref2ego = np.eye(4)
    ref2ego[:2, :2] = [[0.0, 1.0], [-1.0, 0.0]]  # yaw -90 deg: lidar x -> ego -y, lidar y -> ego x
    ref2ego[:3, 3] = [0.94, 0.0, 1.84]
    write_mesh_ply(tmp_path / "m.ply", sdf, 0.5, (-2.0, -2.0, -2.0), 0.0, pose=ref2ego)
    vertices = PlyData.read(str(tmp_path / "m.ply"))["vertex"]
    np.testing.assert_allclose(np.asarray(vertices["y"]), -1.0, atol=1e-5)
    assert np.ptp(np.asarray(vertices["x"])) > 3.0
