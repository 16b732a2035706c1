"""The datamanager's batches: geometry consistent with the world's truth, draws, sharding, resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfocc_ns.data.datamanager import SelfOccDataManagerConfig, StepSampler
from selfocc_ns.data.dataset import ImageGeometryConfig, SelfOccSampleDataset, collate_samples
from selfocc_ns.data.frames import neighbours
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.sampling import FrameSamplingConfig, draw_anchor, draw_sources, step_generator


def truth_depth(root: Path, image_path: Path) -> np.ndarray:
    """Ray-cast camera z-depth (m) the world generator wrote next to every keyframe image (0 = no hit)."""
    channel = image_path.parent.name
    png = root / "truth" / "depth" / channel / (image_path.stem + ".png")
    return np.asarray(Image.open(png), dtype=np.float64) / 256.0


@pytest.fixture(scope="module")
def datamanager(small_world):
    config = SelfOccDataManagerConfig(
        dataparser=SelfOccNuScenesDataParserConfig(data_dir=small_world), num_workers=0, use_semantics="on"
    )
    return config.setup(device="cpu", test_mode="val")


def test_train_batch_shapes_and_crops(datamanager):
    batch, extra = datamanager.next_train(0)
    b, n = 1, 6
    assert batch.images.shape == (b, n, 3, 38, 80)  # 90 * 768/900 = 77 rows, scaled by 0.5
    assert batch.anchor_images.shape == (b, n, 3, 77, 160)
    assert batch.source_images.shape == (b, 2, n, 3, 77, 160)
    assert batch.semantics.shape == (b, n, 77, 160) and batch.semantics.dtype == torch.int64
    assert batch.intrinsics.shape == (b, n, 3, 3) and batch.source_cam2ego.shape == (b, 2, n, 4, 4)
    # Scaling by 0.5 halves focal lengths and principal points (pixel centres at +0.5).
    torch.testing.assert_close(batch.intrinsics[..., :2, :], batch.anchor_intrinsics[..., :2, :] * torch.tensor([80 / 160, 38 / 77]).view(2, 1))
    assert extra["data_wait_s"] >= 0.0 and datamanager.data_wait_s == extra["data_wait_s"]
    # Input camera poses are near the ego origin (the reference frame of the keyframe).
    assert batch.cam2ego[0, :, :3, 3].norm(dim=-1).max() < 3.0


def test_eval_lidar_projects_onto_the_truth_depth(small_world, datamanager):
    """LiDAR of the keyframe, in the batch's ego frame, lands where the ray-cast depth agrees (< 5 cm median)."""
    index = datamanager.eval_index
    batch, _ = datamanager.next_eval_image(0)
    frame = index.sample_frame(0)
    pts = batch.lidar_points[0].double()
    errors = []
    for c, channel in enumerate(index.cameras):
        depth = truth_depth(small_world, frame.cameras[channel].image_path)
        ego2cam = torch.linalg.inv(batch.anchor_cam2ego[0, c].double())
        p = pts @ ego2cam[:3, :3].T + ego2cam[:3, 3]
        front = p[:, 2] > 1.0
        uvw = p[front] @ batch.anchor_intrinsics[0, c].double().T
        uv = uvw[:, :2] / uvw[:, 2:]
        h, w = batch.anchor_images.shape[-2:]
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        ij = uv[inside].floor().long()
        gt = torch.from_numpy(depth)[ij[:, 1], ij[:, 0]]
        ok = gt > 0
        errors.append((gt[ok] - p[front][inside][ok, 2]).abs())
    errors = torch.cat(errors)
    assert len(errors) > 500
    assert errors.median() < 0.05


def test_sources_warp_onto_the_anchor_with_the_true_depth(small_world):
    """Warping each camera's source images into the anchor with the ray-cast depth halves the photometric L1."""
    config = SelfOccDataManagerConfig(
        dataparser=SelfOccNuScenesDataParserConfig(data_dir=small_world), num_workers=0,
        sampling=FrameSamplingConfig(cur_prob=1.0),
    )
    dm = config.setup(device="cpu", test_mode="val")
    batch, _ = dm.next_train(3)
    index = dm.train_index
    t, anchor = batch.info["frame_indices"][0]
    assert t == anchor
    frame = index.scenes[index.samples[0][0]].frames[t]
    warped_l1, plain_l1 = [], []
    h, w = batch.anchor_images.shape[-2:]
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for c, channel in enumerate(index.cameras):
        depth = torch.from_numpy(truth_depth(small_world, frame.cameras[channel].image_path)[:h]).float()
        valid = depth > 0
        k_inv = torch.linalg.inv(batch.anchor_intrinsics[0, c])
        rays = torch.stack([u, v, torch.ones_like(u)], -1) @ k_inv.T
        cam_pts = rays * depth[..., None]
        ego = cam_pts @ batch.anchor_cam2ego[0, c, :3, :3].T + batch.anchor_cam2ego[0, c, :3, 3]
        target = batch.anchor_images[0, c]
        for side in (0, 1):
            src2ego = batch.source_cam2ego[0, side, c]
            ego2src = torch.linalg.inv(src2ego)
            p = ego @ ego2src[:3, :3].T + ego2src[:3, 3]
            uvw = p @ batch.source_intrinsics[0, side, c].T
            uv = uvw[..., :2] / uvw[..., 2:].clamp(min=1e-6)
            grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1)
            src = batch.source_images[0, side, c]
            warped = F.grid_sample(src[None], grid[None], align_corners=False)[0]
            ok = valid & (p[..., 2] > 0.5) & (grid.abs() < 1).all(-1)
            warped_l1.append((warped - target).abs().mean(0)[ok])
            plain_l1.append((src - target).abs().mean(0)[ok])
    warped_mean = torch.cat(warped_l1).mean()
    plain_mean = torch.cat(plain_l1).mean()
    assert warped_mean < 0.5 * plain_mean, (float(warped_mean), float(plain_mean))


def test_anchor_and_source_draws_follow_the_configured_distances(small_world):
    index = SelfOccNuScenesDataParserConfig(data_dir=small_world).setup().get_dataparser_outputs("train").metadata["selfocc"]
    frames = index.scenes[0].frames
    t = index.samples[1][1]
    cfg = FrameSamplingConfig(cur_prob=0.333, min_dist_m=0.4, max_dist_m=6.0, source_max_dist_m=6.0)
    current = 0
    allowed = {n.frame_index for side in neighbours(frames, t, 0.4, 6.0) for n in side}
    rng = np.random.default_rng(0)
    source_dists = []
    for _ in range(600):
        anchor = draw_anchor(frames, t, cfg, rng)
        current += anchor == t
        assert anchor == t or anchor in allowed
        for prev, nxt in draw_sources(frames, anchor, index.cameras, cfg, rng):
            for src, before in ((prev, True), (nxt, False)):
                d = np.linalg.norm(frames[src].front_position - frames[anchor].front_position)
                assert src != anchor
                source_dists.append(d)
    assert abs(current / 600 - 0.333) < 0.06
    assert min(source_dists) >= 0.4 - 0.3  # per-camera distances differ slightly from CAM_FRONT's
    assert max(source_dists) <= 6.0 + 0.3


def test_step_sampler_shards_by_rank_and_replays_on_resume():
    a = StepSampler(10, batch_size=1, seed=3, rank=0, world_size=2)
    b = StepSampler(10, batch_size=1, seed=3, rank=1, world_size=2)
    for epoch in (0, 1):
        ea, eb = a.epoch_order(epoch), b.epoch_order(epoch)
        assert len(ea) == len(eb) == 5 and not set(ea) & set(eb) and set(ea) | set(eb) == set(range(10))
    assert a.epoch_order(0) != a.epoch_order(1)
    stream = iter(a)
    first = [next(stream) for _ in range(12)]
    resumed = iter(StepSampler(10, batch_size=1, seed=3, rank=0, world_size=2, start_step=7))
    assert [next(resumed) for _ in range(5)] == first[7:]
    assert [step for _, step, _ in first] == list(range(12))


def test_resume_replays_the_same_frames(small_world):
    index = SelfOccNuScenesDataParserConfig(data_dir=small_world).setup().get_dataparser_outputs("train").metadata["selfocc"]
    dataset = SelfOccSampleDataset(index, ImageGeometryConfig(), FrameSamplingConfig(cur_prob=0.0), seed=5)
    one = dataset[(1, 17, 0)]
    two = dataset[(1, 17, 0)]
    other = [dataset[(1, s, 0)]["source_frames"] for s in range(18, 24)]
    assert one["frame_indices"] == two["frame_indices"] and one["source_frames"] == two["source_frames"]
    assert any(o != one["source_frames"] for o in other)
    assert step_generator(1, 2, 3).random() == step_generator(1, 2, 3).random()


def test_background_workers_deliver_the_same_batches(small_world):
    common = dict(dataparser=SelfOccNuScenesDataParserConfig(data_dir=small_world), seed=9)
    inline = SelfOccDataManagerConfig(num_workers=0, **common).setup(device="cpu", test_mode="val")
    workers = SelfOccDataManagerConfig(num_workers=2, **common).setup(device="cpu", test_mode="val")
    for step in (4, 5):
        x, _ = inline.next_train(step)
        y, _ = workers.next_train(step)
        assert x.info["frame_indices"] == y.info["frame_indices"]
        torch.testing.assert_close(x.source_images, y.source_images)
