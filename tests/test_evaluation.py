"""The Evaluator against exact answers: the synthetic world's own truth, a hand-made voxel shift, the
mirrored rig of flip TTA, novel depth end to end, and the depth-only render path of the real model."""

from __future__ import annotations

import dataclasses
import math
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from selfocc_ns.data.batch import SelfOccBatch
from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.data.frames import neighbours, reference_pose
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.sampling import FrameSamplingConfig
from selfocc_ns.data.occ3d import CLASS_ID, FREE_ID, OCC3D_SHAPE, OCC3D_VOXEL_M, voxel_centres_m
from selfocc_ns.data.synthetic import load_world
from selfocc_ns.eval.options import EvalOptions
from selfocc_ns.eval.runner import (
    Evaluator,
    depth_only_grid,
    mirror_rig,
    mirrored_camera_order,
)
from selfocc_ns.metrics import distance_bin
from selfocc_ns.model.field_grid import FieldGrid
from selfocc_ns.model.rays import eval_lattice_hw, fixed_lattice_px, rays_from_pixels

HALF_VOXEL_M = 0.5 * OCC3D_VOXEL_M
CENTRES_RANGE_M = (-39.8, -39.8, -0.8, 39.8, 39.8, 5.2)
"""A FieldGrid over this range with 200 x 200 x 16 points has its points exactly at the Occ3D voxel centres."""
NUM_SEMANTIC = 18
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def centres_grid(sdf: np.ndarray, classes: np.ndarray) -> FieldGrid:
    """FieldGrid at the voxel centres: SDF channel + one-hot semantic logits (10 on the class)."""
    logits = np.zeros((NUM_SEMANTIC,) + OCC3D_SHAPE, dtype=np.float32)
    np.put_along_axis(logits, np.minimum(classes, NUM_SEMANTIC - 1)[None].astype(np.int64), 10.0, axis=0)
    values = np.concatenate([sdf[None].astype(np.float32), logits])[None]
    return FieldGrid(torch.from_numpy(values), CENTRES_RANGE_M, 0, NUM_SEMANTIC)


@dataclasses.dataclass
class DepthRender:
    """What `render_depth` returns, as far as the evaluator reads it."""

    depth: torch.Tensor


class TruthModel:
    """A perfect 'model' of the synthetic world with the interface the Evaluator uses.

    `encode(batch)`: the world's exact SDF and class at the Occ3D voxel centres (FieldGrid points), in the
    batch keyframe's reference ego frame at its LiDAR time; mirrored (y -> -y) for a flip-TTA batch.
    `render_depth`: the world's ray-cast z-depth through the eval lattice points (no volume rendering), the
    cameras given in the `reference_frame` ("ego" or "lidar", as the datamanager's); a mirrored batch's rays
    are mirrored about the ego x-z plane (in that frame: ego2ref M ego2ref^-1).
    Deliberate errors: `depth_scale` multiplies the depth, `shift_voxels` rolls the grid along x.
    """

    semantic_channels = NUM_SEMANTIC
    semantic_label_space = "occ3d"
    eval_lattice_fraction = 0.5

    def __init__(self, data_dir: Path, index, depth_scale: float = 1.0, shift_voxels: int = 0,
                 reference_frame: str = "ego"):
        self.world = load_world(data_dir)
        samples = json.loads((Path(data_dir) / "v1.0-mini" / "sample.json").read_text())
        self.lidar_time_us = {s["token"]: s["timestamp"] for s in samples}
        self.frames = {index.sample_frame(i).sample_token: index.sample_frame(i) for i in range(len(index.samples))}
        self.depth_scale, self.shift_voxels = depth_scale, shift_voxels
        self.reference_frame = reference_frame
        self.encoded: List[SelfOccBatch] = []
        self.lattices: List[torch.Tensor] = []
        self._grids: Dict[str, FieldGrid] = {}
        self.current: Tuple[str, bool, torch.Tensor] = ("", False, torch.eye(4))

    def scene_at(self, token: str):
        """(scene world, ref2global of the keyframe, its LiDAR time)."""
        frame = self.frames[token]
        return self.world[frame.scene_name], reference_pose(frame, self.reference_frame), self.lidar_time_us[token]

    def truth_grid(self, token: str) -> FieldGrid:
        if token not in self._grids:
            scene, _, t_us = self.scene_at(token)
            pose = self.frames[token].ref_ego2global
            xs, ys, zs = voxel_centres_m()
            centres = np.stack(np.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
            sdf, cls = scene.sdf_and_class(centres @ pose[:3, :3].T + pose[:3, 3], t_us)
            self._grids[token] = centres_grid(sdf.reshape(OCC3D_SHAPE), cls.reshape(OCC3D_SHAPE))
        return self._grids[token]

    def encode(self, batch: SelfOccBatch) -> FieldGrid:
        mirrored = bool(batch.info.get("mirrored", False))
        self.current = (batch.sample_tokens[0], mirrored, batch.ego2ref_of(0).double())
        self.encoded.append(batch)
        grid = self.truth_grid(batch.sample_tokens[0])
        values = grid.values.flip(3) if mirrored else grid.values  # [B, K, X, Y, Z]: y -> -y
        if self.shift_voxels:
            values = values.roll(self.shift_voxels, dims=2)
        return FieldGrid(values, grid.range_m, 0, NUM_SEMANTIC)

    def render_depth(self, grid, intrinsics, cam2ego, image_hw, lattice_fraction=None, lattice_px=None, read_mask=None):
        token, mirrored, ego2ref = self.current
        scene, pose, t_us = self.scene_at(token)
        if lattice_px is None:
            lattice_hw = eval_lattice_hw(image_hw, lattice_fraction or self.eval_lattice_fraction)
            lattice_px = fixed_lattice_px(image_hw, lattice_hw)
        lattice_hw = tuple(lattice_px.shape[:2])
        self.lattices.append(lattice_px)
        b, n = intrinsics.shape[:2]
        origins, dirs, z_per_distance = rays_from_pixels(
            lattice_px.double().reshape(1, 1, -1, 2).expand(b, n, -1, 2), intrinsics.double(), cam2ego.double())
        if mirrored:  # a ray of the mirrored world is the mirror image of a ray of the real world
            m = ego2ref @ torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64)) @ torch.linalg.inv(ego2ref)
            origins, dirs = origins @ m[:3, :3].T + m[:3, 3], dirs @ m[:3, :3].T
        rot, trans = torch.from_numpy(pose[:3, :3]), torch.from_numpy(pose[:3, 3])
        hits = scene.cast_rays((origins.reshape(-1, 3) @ rot.T + trans).numpy(), (dirs.reshape(-1, 3) @ rot.T).numpy(),
                               t_us)
        distance = torch.from_numpy(np.where(np.isfinite(hits.distance_m), hits.distance_m, 1e3).astype(np.float64))
        depth = distance.reshape(z_per_distance.shape[:-1]) * z_per_distance[..., 0] * self.depth_scale
        return DepthRender(depth.reshape(b, n, *lattice_hw, 1).float())


def clean_lidar(scene, pose: np.ndarray, t_us: int, points_ego: torch.Tensor, intrinsics: torch.Tensor,
                cam2ego: torch.Tensor, image_hw: Tuple[int, int], spacing_px: float,
                max_step: float = 0.01) -> torch.Tensor:
    """The LiDAR points that every camera seeing them sees unoccluded and away from depth discontinuities.

    Per camera, a point p projecting to (u, v) with 1e-3 < z < 80 m inside the image is kept when the
    exact ray cast through (u, v) hits at z-depth within 1 mm (+ 1e-4 z) of p's (visible: not hidden
    behind another surface, not on an object that has moved) and the casts through (u +- s, v +- s),
    s = one lattice spacing, all lie within 1% of it (no depth edge inside the lattice cell that the
    bilinear read uses). What remains can be read off the lattice without discretisation error.
    """
    pts = points_ego.double()
    keep = torch.ones(len(pts), dtype=torch.bool)
    rot, trans = torch.from_numpy(pose[:3, :3]), torch.from_numpy(pose[:3, 3])
    offsets = torch.tensor([[0.0, 0.0], [-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64) * spacing_px
    height, width = image_hw
    for k, c2e in zip(intrinsics.double(), cam2ego.double()):
        ego2cam = torch.linalg.inv(c2e)
        cam = pts @ ego2cam[:3, :3].T + ego2cam[:3, 3]
        uv = (cam @ k.T)[:, :2] / cam[:, 2:3]
        seen = (cam[:, 2] > 1e-3) & (cam[:, 2] < 80) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (
            uv[:, 1] < height)
        idx = torch.nonzero(seen)[:, 0]
        if len(idx) == 0:
            continue
        probes = (uv[idx, None, :] + offsets[None]).reshape(-1, 2)
        probes[:, 0] = probes[:, 0].clamp(0, width - 1e-6)
        probes[:, 1] = probes[:, 1].clamp(0, height - 1e-6)
        origins, dirs, zpd = rays_from_pixels(probes, k, c2e)
        hits = scene.cast_rays((origins @ rot.T + trans).numpy(), (dirs @ rot.T).numpy(), t_us)
        z = (torch.from_numpy(hits.distance_m.astype(np.float64)) * zpd[:, 0]).reshape(-1, len(offsets))
        z_point = cam[idx, 2]
        visible = (z[:, 0] - z_point).abs() <= 1e-3 + 1e-4 * z_point
        smooth = ((z - z[:, :1]).abs() <= max_step * z[:, :1]).all(dim=1) & torch.isfinite(z).all(dim=1)
        keep[idx[~(visible & smooth)]] = False
    return points_ego[keep]


@pytest.fixture(scope="module")
def eval_dm(small_world):
    config = SelfOccDataManagerConfig(dataparser=SelfOccNuScenesDataParserConfig(data_dir=small_world), num_workers=0,
                                      sampling=FrameSamplingConfig(max_dist_m=6.0))
    return config.setup(device="cpu", test_mode="test")


@pytest.fixture(scope="module")
def truth_batches(small_world, eval_dm) -> List[SelfOccBatch]:
    """Two val keyframes; each carries `info['clean_lidar']` (see `clean_lidar`) beside its full LiDAR."""
    model = TruthModel(small_world, eval_dm.eval_index)
    batches = list(eval_dm.iter_eval_batches([0, 2]))
    for batch in batches:
        scene, pose, t_us = model.scene_at(batch.sample_tokens[0])
        image_hw = tuple(batch.anchor_images.shape[-2:])
        spacing = image_hw[1] / eval_lattice_hw(image_hw, 0.5)[1]
        sub = batch.lidar_points[0][::3]
        batch.info["clean_lidar"] = [clean_lidar(scene, pose, t_us, sub, batch.anchor_intrinsics[0],
                                                 batch.anchor_cam2ego[0], image_hw, spacing)]
        batch.info["num_lidar_in_sub"] = len(sub)
    return batches


def with_lidar(batch: SelfOccBatch, points: List[torch.Tensor]) -> SelfOccBatch:
    out = SelfOccBatch(**{f: getattr(batch, f) for f in batch.__dataclass_fields__})
    out.lidar_points = points
    return out


def test_world_truth_scores_perfectly_and_wrong_predictions_do_not(small_world, eval_dm, truth_batches):
    """Clean-protocol IoU / mIoU of the exact SDF and classes at the voxel centres (threshold half a voxel, the
    gts' own occupancy rule) is 1; depth abs_rel of the exact ray-cast lattice depth < 1e-3 on the LiDAR points
    away from depth edges (`clean_lidar`). Depth x1.2 and a 2-voxel shift are caught."""
    options = dict(occupancy_protocol="occ3d", occupancy_threshold=HALF_VOXEL_M)
    clean = [with_lidar(b, b.info["clean_lidar"]) for b in truth_batches]
    assert all(len(b.lidar_points[0]) > 0.3 * b.info["num_lidar_in_sub"] * 0.5 for b in clean)

    truth = Evaluator(TruthModel(small_world, eval_dm.eval_index), EvalOptions(("depth", "occupancy"), **options),
                      CAMERAS, baseline_depth_m=9.0)
    for batch in clean:
        truth.add(batch)
    r = truth.results()
    assert r["occ/protocol"] == "occ3d" and r["occ/num_samples"] == 2
    assert r["occ/iou"] >= 0.99 and r["occ/miou"] >= 0.99, (r["occ/iou"], r["occ/miou"])
    assert r["occ/num_classes_scored"] >= 8  # the val scene's classes, each IoU 1
    assert r["depth/num_images"] == 12 and r["depth/num_points"] > 2000
    assert r["depth/raw/abs_rel"] < 1e-3 and r["depth/raw/a1"] == 1.0, r["depth/raw/abs_rel"]
    assert r["depth/median/abs_rel"] < 1e-3
    # baselines scored on the same samples, and clearly worse
    assert r["depth/baseline/raw/abs_rel"] > 0.2 and r["depth/baseline/depth_m"] == 9.0
    assert r["occ/baseline/flat_ground/iou"] < 0.8

    # the whole LiDAR sweep: bilinear reads across depth edges, occlusion parallax (the protocol's floor)
    full = Evaluator(TruthModel(small_world, eval_dm.eval_index), EvalOptions(("depth",), **options), CAMERAS, 9.0)
    for batch in truth_batches:
        full.add(batch)
    floor = full.results()["depth/raw/abs_rel"]
    assert 1e-3 < floor < 0.1, floor

    scaled = Evaluator(TruthModel(small_world, eval_dm.eval_index, depth_scale=1.2, shift_voxels=2),
                       EvalOptions(("depth", "occupancy"), **options), CAMERAS, 9.0)
    for batch in clean:
        scaled.add(batch)
    s = scaled.results()
    assert s["depth/raw/abs_rel"] == pytest.approx(0.2, abs=1e-3)  # |1.2 z - z| / z
    assert s["depth/median/abs_rel"] < 1e-3  # median scaling undoes a global scale
    assert s["occ/iou"] < 0.7, s["occ/iou"]


def test_flip_tta_with_the_mirrored_truth_gives_the_same_depth(small_world, eval_dm, truth_batches):
    """The mirrored rig (flipped images, mirrored cameras, left/right slots swapped) sees the mirrored world:
    a perfect model rendering it, flipped back and averaged, reproduces the unflipped depth maps exactly."""
    batch = with_lidar(truth_batches[0], truth_batches[0].info["clean_lidar"])
    plain_model = TruthModel(small_world, eval_dm.eval_index)
    flip_model = TruthModel(small_world, eval_dm.eval_index)
    plain = Evaluator(plain_model, EvalOptions(("depth",)), CAMERAS)
    flip = Evaluator(flip_model, EvalOptions(("depth",), flip=True), CAMERAS)
    depth_plain, depth_flip = plain.add(batch)["depth"], flip.add(batch)["depth"]
    assert torch.allclose(depth_flip, depth_plain, rtol=1e-4, atol=1e-3)
    assert flip.results()["depth/raw/abs_rel"] == pytest.approx(plain.results()["depth/raw/abs_rel"], abs=1e-6)
    assert flip.results()["depth/flip"] == 1.0

    mirrored = flip_model.encoded[-1]
    assert mirrored.info["mirrored"] and mirrored.sample_tokens == batch.sample_tokens
    fl, fr = CAMERAS.index("CAM_FRONT_LEFT"), CAMERAS.index("CAM_FRONT_RIGHT")
    # slot FRONT_RIGHT holds the mirrored FRONT_LEFT camera: flipped image, pose mirrored to the right side
    assert torch.equal(mirrored.images[0, fr], batch.images[0, fl].flip(-1))
    assert batch.cam2ego[0, fl, 1, 3] > 0.3
    assert mirrored.cam2ego[0, fr, 1, 3] == pytest.approx(-float(batch.cam2ego[0, fl, 1, 3]))


def test_mirror_rig_projects_mirrored_points_to_mirrored_pixels():
    """p -> (u, v) in a camera  <=>  M_ego p -> (W - u, v) in the mirrored camera; mirrored rays are mirrored."""
    gen = torch.Generator().manual_seed(0)
    width, height = 160, 77
    k = torch.tensor([[[100.0, 0.0, 83.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]]])
    yaw = torch.tensor(0.9)
    cam2ego = torch.eye(4)[None].clone()
    cam2ego[0, :3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # OpenCV, facing +x
    rz = torch.tensor([[yaw.cos(), -yaw.sin(), 0], [yaw.sin(), yaw.cos(), 0], [0, 0, 1.0]])
    cam2ego[0, :3, :3] = rz @ cam2ego[0, :3, :3]
    cam2ego[0, :3, 3] = torch.tensor([1.2, 0.5, 1.6])
    images = torch.rand(1, 3, height, width, generator=gen)
    m_images, m_k, m_pose = mirror_rig(images, k, cam2ego)
    assert torch.equal(m_images[0, :, :, 0], images[0, :, :, width - 1])
    assert torch.linalg.det(m_pose[0, :3, :3]) == pytest.approx(1.0, abs=1e-6)

    cam_pts = torch.rand(50, 3, generator=gen) * torch.tensor([4.0, 2.0, 10.0]) + torch.tensor([-2.0, -1.0, 2.0])
    ego = cam_pts @ cam2ego[0, :3, :3].T + cam2ego[0, :3, 3]
    mirror = torch.tensor([1.0, -1.0, 1.0])

    def project(points, kk, pose):
        inv = torch.linalg.inv(pose)
        c = points @ inv[:3, :3].T + inv[:3, 3]
        uvw = c @ kk.T
        return uvw[:, :2] / uvw[:, 2:]

    uv = project(ego, k[0], cam2ego[0])
    m_uv = project(ego * mirror, m_k[0], m_pose[0])
    torch.testing.assert_close(m_uv[:, 0], width - uv[:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(m_uv[:, 1], uv[:, 1], atol=1e-3, rtol=0)
    o, d, _ = rays_from_pixels(uv[None], k, cam2ego)
    m_o, m_d, _ = rays_from_pixels(torch.stack([width - uv[:, 0], uv[:, 1]], -1)[None], m_k, m_pose)
    torch.testing.assert_close(m_o, o * mirror)
    torch.testing.assert_close(m_d, d * mirror, atol=1e-5, rtol=0)


def test_mirrored_camera_order_swaps_left_and_right():
    assert mirrored_camera_order(CAMERAS) == [0, 2, 1, 3, 5, 4]
    assert mirrored_camera_order(("CAM_FRONT", "CAM_FRONT_LEFT")) == [0, 1]  # no partner: stays


class BlockModel:
    """A 'model' whose field is a solid car block (SDF -1 inside, +1 outside at the voxel centres)."""

    semantic_channels = NUM_SEMANTIC
    semantic_label_space = "occ3d"
    eval_lattice_fraction = 0.5

    def __init__(self, block: Tuple[slice, slice, slice]):
        sdf = np.ones(OCC3D_SHAPE, dtype=np.float32)
        sdf[block] = -1.0
        self.grid = centres_grid(sdf, np.full(OCC3D_SHAPE, CLASS_ID["car"]))

    def encode(self, batch):
        return self.grid


def block_batch(block: Tuple[slice, slice, slice]) -> SelfOccBatch:
    sem = torch.full(OCC3D_SHAPE, FREE_ID, dtype=torch.int64)
    sem[block] = CLASS_ID["car"]
    z = torch.zeros(1, 6, 3, 4, 4)
    return SelfOccBatch(images=z, intrinsics=torch.eye(3).expand(1, 6, 3, 3), cam2ego=torch.eye(4).expand(1, 6, 4, 4),
                        anchor_images=z, anchor_intrinsics=torch.eye(3).expand(1, 6, 3, 3),
                        anchor_cam2ego=torch.eye(4).expand(1, 6, 4, 4), occ_semantics=sem[None],
                        occ_mask_camera=torch.ones(1, *OCC3D_SHAPE, dtype=torch.int64), sample_tokens=["block"])


@pytest.mark.parametrize("protocol", ["selfocc", "occ3d"])
def test_one_voxel_shift_through_the_evaluator(protocol):
    """GT car block 10 x 10 x 4 voxels; prediction the same block one voxel further in x. By hand:
    intersection 9 x 10 x 4 = 360, union 11 x 10 x 4 = 440, IoU = 360 / 440 = 9 / 11 (geometry and car).
    The official query points lie < 0.2 m from the voxel centres there, so both protocols agree."""
    gt_block = (slice(100, 110), slice(90, 100), slice(2, 6))
    pred_block = (slice(101, 111), slice(90, 100), slice(2, 6))
    evaluator = Evaluator(BlockModel(pred_block), EvalOptions(("occupancy",), occupancy_protocol=protocol), CAMERAS)
    out = evaluator.add(block_batch(gt_block))
    pred = out["occupancy"][0]
    assert int((pred != FREE_ID).sum()) == 400 and int((pred == CLASS_ID["car"]).sum()) == 400
    r = evaluator.results()
    assert r["occ/iou"] == pytest.approx(9 / 11, abs=1e-12)
    assert r["occ/iou/car"] == pytest.approx(9 / 11, abs=1e-12)
    assert r["occ/miou"] == pytest.approx(9 / 11, abs=1e-12)  # car is the only class with GT or prediction
    assert r["occ/num_classes_scored"] == 1
    if protocol == "selfocc":
        assert r["occ/miou_sum17"] == pytest.approx(9 / 11 / 17, abs=1e-12)


def test_novel_depth_end_to_end_on_the_small_world(small_world, eval_dm):
    """The keyframe's truth rendered from its neighbour frames' cameras against their own LiDAR (points
    visible and away from depth edges, see `clean_lidar`) scores abs_rel < 1e-3 in every distance bin;
    the bins hold exactly the neighbour frames' six cameras by ceil(distance); the baseline is beside."""
    model = TruthModel(small_world, eval_dm.eval_index)
    evaluator = Evaluator(model, EvalOptions(("novel-depth",)), CAMERAS, baseline_depth_m=9.0)
    index = eval_dm.eval_index
    batch = next(eval_dm.iter_eval_batches([1], novel_views=True))
    scene, pose, t_us = model.scene_at(batch.sample_tokens[0])
    views = batch.novel[0]
    spacing = views.image_hw[1] / eval_lattice_hw(views.image_hw, 0.5)[1]
    views.lidar_points = [clean_lidar(scene, pose, t_us, p[::3], k, c2e, views.image_hw, spacing)
                          for p, k, c2e in zip(views.lidar_points, views.intrinsics, views.cam2ego)]
    evaluator.add(batch)
    r = evaluator.results()

    s, t = index.samples[1]
    prev, nxt = neighbours(index.scenes[s].frames, t, 0.4, 6.0)
    expected: Dict[int, int] = {}
    for nb in prev + nxt:
        expected[distance_bin(nb.distance_m)] = expected.get(distance_bin(nb.distance_m), 0) + 6
    assert len(prev + nxt) >= 2 and len(views.distance_m) == len(prev + nxt)
    bins = {int(k.split("/")[1][len("bin_"):-1]): v for k, v in r.items()
            if k.startswith("novel_depth/bin_") and k.endswith("/num_images")}
    assert bins == expected
    assert r["novel_depth/abs_rel"] < 1e-3 and r["novel_depth/a1"] == 1.0, r["novel_depth/abs_rel"]
    for k in expected:
        assert r[f"novel_depth/bin_{k}m/abs_rel"] < 1e-3
    assert r["novel_depth_baseline/abs_rel"] > 0.2
    assert r["novel_depth_baseline/num_images"] == r["novel_depth/num_images"]


def test_missing_truth_raises_naming_the_sample():
    batch = block_batch((slice(0, 1),) * 3)
    evaluator = Evaluator(BlockModel((slice(0, 1),) * 3), EvalOptions(("depth",)), CAMERAS)
    with pytest.raises(ValueError, match="sample block has none"):
        evaluator.add(batch)
    with pytest.raises(ValueError, match="unknown eval task"):
        EvalOptions(("depht",))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# The real model (the session's tiny checkpoint)
# ----------------------------------------------------------------------------------------------



def test_depth_only_render_equals_the_full_render_and_chunks_rays(tiny_pipeline):
    """Rendering from the SDF channel alone gives the same depth as the full field; eval renders never
    put more than `eval_chunk_rays` rays through the field at once (memory flat in the lattice size)."""
    model = tiny_pipeline.model
    batch = next(tiny_pipeline.datamanager.iter_eval_batches([0]))
    image_hw = tuple(batch.anchor_images.shape[-2:])
    with torch.no_grad():
        grid = model.encode(batch)
        full = model.render_depth(grid, batch.anchor_intrinsics, batch.anchor_cam2ego, image_hw).depth
        fast = model.render_depth(depth_only_grid(grid), batch.anchor_intrinsics, batch.anchor_cam2ego, image_hw).depth
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    assert full.shape[2:4] == (round(image_hw[0] * 0.5), round(image_hw[1] * 0.5))

    rays_per_call: List[int] = []
    original = model.renderer.render_rays

    def spy(grid, origins, *args, **kwargs):
        rays_per_call.append(origins.shape[0] * origins.shape[1])
        return original(grid, origins, *args, **kwargs)

    model.renderer.render_rays = spy
    model.renderer.config.fast_eval = False  # the faithful render's chunks (the fast one's: test_fast_render.py)
    try:
        evaluator = Evaluator(model, EvalOptions(("depth",), lattice_fraction=1.0), CAMERAS)
        depth = evaluator.add(batch)["depth"]
    finally:
        del model.renderer.render_rays
        model.renderer.config.fast_eval = True
    assert depth.shape[2:] == image_hw
    chunk = model.config.renderer.eval_chunk_rays
    assert sum(rays_per_call) == 6 * image_hw[0] * image_hw[1] and max(rays_per_call) <= chunk < sum(rays_per_call)
    assert evaluator.results()["eval/lattice_fraction"] == 1.0


def test_pipeline_reports_floats_for_ns_eval_and_names_the_protocol(tiny_pipeline):
    configured = tiny_pipeline.config.evaluation
    tiny_pipeline.config.evaluation = dataclasses.replace(configured, tasks=("occupancy",))
    try:
        metrics = tiny_pipeline.get_average_eval_image_metrics(get_std=True)
    finally:
        tiny_pipeline.config.evaluation = configured
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["occ/protocol/selfocc"] == 1.0 and metrics["occ/threshold_m"] == 0.0
    assert metrics["occ/num_samples"] == 4.0 and 0.0 <= metrics["occ/iou"] <= 1.0
    assert "occ/baseline/flat_ground/iou" in metrics


# ----------------------------------------------------------------------------------------------
# The LiDAR reference frame and the official lattices
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lidar_dm(small_world):
    config = SelfOccDataManagerConfig(dataparser=SelfOccNuScenesDataParserConfig(data_dir=small_world), num_workers=0,
                                      sampling=FrameSamplingConfig(max_dist_m=6.0), reference_frame="lidar")
    return config.setup(device="cpu", test_mode="test")


def in_frame(points: torch.Tensor, ego2ref: torch.Tensor) -> torch.Tensor:
    return points @ ego2ref[:3, :3].T + ego2ref[:3, 3]


@pytest.mark.parametrize("flip", [False, True])
def test_depth_in_the_lidar_frame_equals_the_ego_frame(small_world, eval_dm, lidar_dm, truth_batches, flip):
    """The same keyframes loaded in the LIDAR_TOP frame (cameras, LiDAR) render the same depth maps from the truth
    and score the same metrics, also with flip TTA (the mirror plane is the ego x-z plane in either frame)."""
    results, depths = [], []
    for dm, frame, batches in (("ego", "ego", truth_batches), ("lidar", "lidar", None)):
        batches = batches or list(lidar_dm.iter_eval_batches([0, 2]))
        model = TruthModel(small_world, eval_dm.eval_index, reference_frame=frame)
        evaluator = Evaluator(model, EvalOptions(("depth",), flip=flip), CAMERAS)
        maps = []
        for batch, ego_batch in zip(batches, truth_batches):
            clean = [in_frame(p, batch.ego2ref_of(0)) for p in ego_batch.info["clean_lidar"]]
            maps.append(evaluator.add(with_lidar(batch, clean))["depth"])
        results.append(evaluator.results())
        depths.append(torch.cat(maps))
    assert not torch.allclose(lidar_dm.iter_eval_batches([0]).__next__().anchor_cam2ego,
                              truth_batches[0].anchor_cam2ego, atol=0.5)  # really another frame
    torch.testing.assert_close(depths[1], depths[0], atol=2e-3, rtol=1e-4)
    for key in ("depth/raw/abs_rel", "depth/raw/rmse", "depth/median/abs_rel", "depth/num_points"):
        assert results[1][key] == pytest.approx(results[0][key], abs=1e-5), key
    assert results[0]["depth/raw/abs_rel"] < 1e-3


def lidar_half_space_grid(lidar2ego: np.ndarray, x_ego_m: float) -> FieldGrid:
    """A LiDAR-frame grid over the depth presets' box holding the SDF x_ego - x_ego_m (linear, so trilinear reads
    are exact): in LiDAR coordinates p, x_ego = lidar2ego[0, :3] . p + lidar2ego[0, 3]."""
    range_m = (-51.2, -51.2, -4.0, 51.2, 51.2, 5.0)
    axes = [torch.linspace(range_m[i], range_m[i + 3], n, dtype=torch.float64) for i, n in enumerate((33, 33, 10))]
    p = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    sdf = p @ torch.from_numpy(lidar2ego[0, :3]) + float(lidar2ego[0, 3]) - x_ego_m
    return FieldGrid(sdf[None, None].float(), range_m, 0, 0)


def test_occupancy_of_a_lidar_frame_field_is_read_at_the_ego_voxels(lidar_dm):
    """Occ3D points are in the ego frame: a LiDAR-frame field is read at ego2ref of them. The half-space
    x_ego <= 10 m fills the voxel columns with centres -39.8 + 0.4 i <= 10, i.e. i = 0..124, exactly; read without
    the mapping it would be the half-space of LiDAR y instead."""
    from selfocc_ns.eval.runner import predict_occupancy
    from selfocc_ns.viewer.scene import field_at_voxels

    batch = next(lidar_dm.iter_eval_batches([0]))
    frame = lidar_dm.eval_index.sample_frame(0)
    grid = lidar_half_space_grid(frame.lidar2ego, 10.0)
    ego2ref = batch.ego2ref_of(0)
    torch.testing.assert_close(ego2ref.double(), torch.from_numpy(np.linalg.inv(frame.lidar2ego)), atol=1e-6, rtol=0)
    pred, sdf = predict_occupancy(grid, "occ3d", 0.0, ego2ref)
    occupied = pred != FREE_ID
    assert occupied[:125].all() and not occupied[125:].any()
    xs = torch.from_numpy(voxel_centres_m()[0]).float()
    torch.testing.assert_close(sdf, (xs - 10.0)[:, None, None].expand(OCC3D_SHAPE), atol=1e-4, rtol=0)
    unmapped, _ = predict_occupancy(grid, "occ3d", 0.0)
    assert not torch.equal(unmapped, pred)
    # the evaluator and the viewer read it the same way
    out = Evaluator(BlockModel((slice(0, 0),) * 3), EvalOptions(("occupancy",), occupancy_protocol="occ3d"), CAMERAS)
    out.model.grid = grid
    assert torch.equal(out.add(batch)["occupancy"][0], pred)
    voxels = field_at_voxels(grid, ego2ref)
    torch.testing.assert_close(voxels.sdf_m, sdf, atol=1e-5, rtol=1e-6)  # float32 rounding at 40 m


def test_official_lattice_renders_450x800_scaled_and_reads_it_officially(small_world, eval_dm, truth_batches):
    """On a 160-wide crop the official 450x800 lattice is 45x80 rays at (2 j, i 77 / 45). The official read
    stretches the lattice by one spacing to the crop's far edges (index u (w - 1) / W instead of u w / W), so the
    exact truth is read up to one spacing off: on the LiDAR points away from depth edges it scores abs_rel ~0.013
    (the pixel-centre lattice: < 1e-3); the eval records the lattice."""
    model = TruthModel(small_world, eval_dm.eval_index)
    evaluator = Evaluator(model, EvalOptions(("depth",), eval_lattice="official"), CAMERAS)
    batch = with_lidar(truth_batches[0], truth_batches[0].info["clean_lidar"])
    depth = evaluator.add(batch)["depth"]
    assert depth.shape[-2:] == (45, 80)
    lattice = model.lattices[-1]
    torch.testing.assert_close(lattice[0, :3, 0], torch.tensor([0.0, 2.0, 4.0]))
    torch.testing.assert_close(lattice[:3, 0, 1], torch.tensor([0.0, 77 / 45, 2 * 77 / 45]))
    r = evaluator.results()
    assert r["eval/lattice"] == "official" and "eval/lattice_fraction" not in r
    assert 2e-3 < r["depth/raw/abs_rel"] < 0.02, r["depth/raw/abs_rel"]
    flip = Evaluator(TruthModel(small_world, eval_dm.eval_index),
                     EvalOptions(("depth",), eval_lattice="official", flip=True), CAMERAS)
    torch.testing.assert_close(flip.add(batch)["depth"], depth, atol=1e-3, rtol=1e-4)  # mirrored points, not a flip
    with pytest.raises(ValueError, match="drop one of the two"):
        EvalOptions(("depth",), eval_lattice="official", lattice_fraction=0.5)


def test_keyframe_rig_lidar_places_a_neighbours_sweep_on_the_keyframes_lidar():
    from selfocc_ns.data.batch import NovelViews
    from selfocc_ns.eval.runner import keyframe_rig_lidar

    own = torch.eye(4)
    own[:3, 3] = torch.tensor([5.0, 0.0, 2.0])  # the neighbour's LiDAR sits 5 m ahead of t's reference origin
    key = torch.eye(4)
    key[:3, 3] = torch.tensor([0.0, 0.0, 2.0])
    points_ref = torch.tensor([[15.0, 1.0, 2.0]])  # 10 m ahead of the neighbour's LiDAR, at its height
    views = NovelViews(torch.eye(3).expand(1, 6, 3, 3), torch.eye(4).expand(1, 6, 4, 4), [points_ref],
                       torch.tensor([5.0]), (9, 16), lidar2ref=own[None], keyframe_lidar2ref=key)
    torch.testing.assert_close(keyframe_rig_lidar(views, 0), torch.tensor([[10.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="LIDAR_TOP poses"):
        keyframe_rig_lidar(NovelViews(views.intrinsics, views.cam2ego, [points_ref], views.distance_m), 0)


def test_novel_depth_with_the_official_truth_and_lattice(small_world, lidar_dm):
    """In the LiDAR frame: the neighbour's sweep projected through t's lidar2img (official truth) instead of its own
    cameras. On the points each neighbour camera sees cleanly, the exact truth scores abs_rel ~3e-5 with its own
    cameras and ~3e-4 through t's rig (the rig is rigid, but each camera fires at its own ego pose, a few ms
    from the LiDAR's). The official 96x200 lattice (10x20 at 160 px) is read up to one 8-px spacing off, which
    costs the exact truth far more than either."""
    batch = next(lidar_dm.iter_eval_batches([1], novel_views=True))
    model = TruthModel(small_world, lidar_dm.eval_index, reference_frame="lidar")
    scene, pose, t_us = model.scene_at(batch.sample_tokens[0])
    views = batch.novel[0]
    views.lidar_points = [clean_lidar(scene, pose, t_us, p[::3], k, c2e, views.image_hw, 2.0)
                          for p, k, c2e in zip(views.lidar_points, views.intrinsics, views.cam2ego)]
    results = {}
    for lattice in ("pixel_centre", "official"):
        for gt in ("own_cameras", "keyframe_lidar2img"):
            model = TruthModel(small_world, lidar_dm.eval_index, reference_frame="lidar")
            evaluator = Evaluator(model, EvalOptions(("novel-depth",), eval_lattice=lattice, novel_depth_gt=gt),
                                  CAMERAS)
            evaluator.add(batch)
            results[lattice, gt] = evaluator.results()
            if lattice == "official":
                assert {tuple(lat.shape[:2]) for lat in model.lattices} == {(10, 20)}
    own, rig = results["pixel_centre", "own_cameras"], results["pixel_centre", "keyframe_lidar2img"]
    assert own["novel_depth/abs_rel"] < 1e-4 < rig["novel_depth/abs_rel"] < 1e-3
    assert rig["novel_depth/gt"] == "keyframe_lidar2img" and "novel_depth/gt" not in own
    assert rig["novel_depth/num_images"] == own["novel_depth/num_images"] > 0
    official = results["official", "keyframe_lidar2img"]
    assert official["eval/lattice"] == "official" and official["novel_depth/abs_rel"] > 0.05


@pytest.mark.parametrize("flip", [False, True])
def test_fast_eval_reproduces_the_faithful_depth_metrics(tiny_pipeline, flip):
    """The default fast eval (empty-space skipping, only the lattice points the LiDAR reads) against the faithful
    renderer (`renderer.fast_eval False`) on the session checkpoint: the same depth metrics, also with the flip TTA
    (its mirrored render reads the mirrored mask)."""
    model = tiny_pipeline.model
    batches = list(tiny_pipeline.datamanager.iter_eval_batches([0, 1]))
    results = {}
    for fast in (False, True):
        model.renderer.config.fast_eval = fast
        try:
            evaluator = Evaluator(model, EvalOptions(("depth",), flip=flip, baseline=False), CAMERAS)
            depth = [evaluator.add(batch)["depth"] for batch in batches]
        finally:
            model.renderer.config.fast_eval = True
        results[fast] = evaluator.results()
        if fast:  # only what the LiDAR reads was rendered
            assert 0.0 < float(torch.isnan(depth[0]).float().mean()) < 1.0
    keys = [k for k in results[False] if k.startswith("depth/") and isinstance(results[False][k], float)]
    assert any(k.endswith("abs_rel") for k in keys) and any(k.endswith("/a1") for k in keys)
    for key in keys:
        assert results[True][key] == pytest.approx(results[False][key], rel=1e-4, abs=1e-6), key


def test_occupancy_lattice_read_equals_the_per_point_read():
    """`predict_occupancy` reads (separable lattice read vs one `grid_sample` per point) give the same classes and
    SDF, in an ego frame, a LiDAR-like frame (90 deg about z, shifted) and a rotated one (falls back to points)."""
    from selfocc_ns.eval.runner import predict_occupancy

    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 19, 6, 6, 3, generator=generator)
    values = torch.nn.functional.interpolate(coarse, size=(41, 41, 9), mode="trilinear", align_corners=True)
    grid = FieldGrid(values, (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), 0, 18)
    lidar_like = torch.tensor([[0.0, 1.0, 0.0, 0.9], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.8], [0, 0, 0, 1.0]])
    c, s = math.cos(0.3), math.sin(0.3)
    rotated = torch.tensor([[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    for protocol in ("selfocc", "occ3d"):
        for ego2ref in (None, lidar_like, rotated):
            fast, fast_sdf = predict_occupancy(grid, protocol, 0.0, ego2ref)
            reference, sdf = predict_occupancy(grid, protocol, 0.0, ego2ref, reads="points")
            torch.testing.assert_close(fast_sdf, sdf, atol=1e-5, rtol=1e-5)
            near_tie = (sdf.abs() < 1e-5)  # the occupancy threshold can flip within float rounding
            assert ((fast == reference) | near_tie).all() and (fast != FREE_ID).any() and (fast == FREE_ID).any()
