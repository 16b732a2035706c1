"""SelfOcc's evaluation protocols run over an eval split (DESIGN.md section 5).

- depth: expected depth on the eval lattice of every camera of the keyframe, read bilinearly at the
  projections of its LiDAR points (1 < d < 80 m), prediction clamped to [1e-3, 80]; 7 metrics raw and
  median-scaled, overall and per camera; optional horizontal-flip test-time augmentation;
- novel depth: the keyframe's field rendered from the cameras of the frames in its neighbour lists,
  against their LiDAR, binned by ceil(distance between the frames);
- occupancy: the field's SDF at the protocol's 200x200x16 points, SDF <= threshold, official crops
  (or the clean Occ3D variant), IoU / per-class IoU / mIoU against Occ3D gts within mask_camera.

Every report carries the trivial baselines scored on the same samples (constant median depth, flat
ground). Used by the pipeline (`ns-eval`, eval during training) and by `selfocc-eval`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from selfocc_ns.data.batch import SelfOccBatch
from selfocc_ns.data.dataset import load_lidar_points, transform_points
from selfocc_ns.data.frames import SelfOccIndex
from selfocc_ns.metrics import (
    DepthHistogramMedian,
    DepthMetricAccumulator,
    NovelDepthAccumulator,
    OccupancyMetricAccumulator,
    occupancy_prediction,
    project_lidar,
    query_points,
    sample_depth_at_points,
)
from selfocc_ns.model.field_grid import FieldGrid, query_field

EvalTask = Literal["depth", "novel-depth", "occupancy"]


@dataclass
class EvalOptions:
    tasks: Tuple[EvalTask, ...] = ("depth",)
    occupancy_protocol: Literal["selfocc", "occ3d"] = "selfocc"
    occupancy_threshold: float = 0.0
    flip: bool = False
    """Horizontal-flip test-time augmentation of the depth task (official --flip)."""
    baseline_depth_m: Optional[float] = None
    """Constant of the constant-median-depth baseline (median training LiDAR depth); None: no baseline."""
    lattice_fraction: Optional[float] = None
    """Eval lattice as a fraction of the ray crop (None: the model's, 0.5 = the official 450x800)."""


def mirror_rig(
    images: Tensor, intrinsics: Tensor, cam2ego: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """The rig mirrored about the ego x-z plane: flipped images seen by mirrored cameras.

    A horizontally flipped image is what the camera mirrored about its own y-z plane sees of the world
    mirrored about the ego x-z plane (y -> -y); both mirrors together keep a right-handed camera.
    """
    width = images.shape[-1]
    flip_ego = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=cam2ego.dtype, device=cam2ego.device))
    flip_cam = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=cam2ego.dtype, device=cam2ego.device))
    k = intrinsics.clone()
    k[..., 0, 2] = width - intrinsics[..., 0, 2]  # u -> W - u (pixel-centre convention +0.5)
    return images.flip(-1), k, flip_ego @ cam2ego @ flip_cam


class Evaluator:
    """Accumulates the chosen tasks' metrics over batches; `results()` gives one flat dict."""

    def __init__(self, model, options: EvalOptions, camera_names: Sequence[str]):
        self.model = model
        self.options = options
        self.camera_names = tuple(camera_names)
        self.depth = DepthMetricAccumulator(self.camera_names, baseline_depth_m=options.baseline_depth_m)
        self.novel = NovelDepthAccumulator(self.camera_names)
        self.occ = OccupancyMetricAccumulator(
            options.occupancy_protocol, semantic=model.config.field.num_semantic_classes > 0
        )
        self.samples = 0
        self.seconds = {"encode": 0.0, "depth": 0.0, "novel-depth": 0.0, "occupancy": 0.0}
        self.occ_samples = 0

    def _timed(self, key: str, start: float) -> None:
        self.seconds[key] += time.perf_counter() - start

    @torch.no_grad()
    def add(self, batch: SelfOccBatch) -> Dict[str, Any]:
        """Evaluate one batch (B = 1); returns per-sample outputs for image writers."""
        start = time.perf_counter()
        grid = self.model.encode(batch)
        self._timed("encode", start)
        self.samples += batch.batch_size
        out: Dict[str, Any] = {"grid": grid}
        if "depth" in self.options.tasks:
            start = time.perf_counter()
            out["depth"] = self._depth(batch, grid)
            self._timed("depth", start)
        if "novel-depth" in self.options.tasks and batch.novel is not None:
            start = time.perf_counter()
            self._novel_depth(batch, grid)
            self._timed("novel-depth", start)
        if "occupancy" in self.options.tasks:
            if batch.occ_semantics is None:
                raise ValueError(
                    f"occupancy evaluation needs Occ3D gts, sample {batch.sample_tokens[0]} has none "
                    "(pass --gts-dir to the dataparser)"
                )
            start = time.perf_counter()
            out["occupancy"] = self._occupancy(batch, grid)
            self._timed("occupancy", start)
        return out

    def _render_depth(self, grid: FieldGrid, intrinsics: Tensor, cam2ego: Tensor, image_hw) -> Tensor:
        return self.model.render_depth(grid, intrinsics, cam2ego, image_hw, self.options.lattice_fraction).depth[..., 0]

    def _depth(self, batch: SelfOccBatch, grid: FieldGrid) -> Tensor:
        image_hw = tuple(batch.anchor_images.shape[-2:])
        depth = self._render_depth(grid, batch.anchor_intrinsics, batch.anchor_cam2ego, image_hw)  # B N h w
        if self.options.flip:
            images, k, pose = mirror_rig(batch.images, batch.intrinsics, batch.cam2ego)
            a_images, a_k, a_pose = mirror_rig(batch.anchor_images, batch.anchor_intrinsics, batch.anchor_cam2ego)
            flipped = SelfOccBatch(images=images, intrinsics=k, cam2ego=pose, anchor_images=a_images,
                                   anchor_intrinsics=a_k, anchor_cam2ego=a_pose)
            mirrored = self._render_depth(self.model.encode(flipped), a_k, a_pose, image_hw)
            depth = 0.5 * (depth + mirrored.flip(-1))
        if batch.lidar_points is None:
            raise ValueError(f"depth evaluation needs LiDAR; sample {batch.sample_tokens[0]} has none")
        for b in range(batch.batch_size):
            for c, name in enumerate(self.camera_names):
                uv, gt = project_lidar(batch.lidar_points[b], batch.anchor_cam2ego[b, c], batch.anchor_intrinsics[b, c], image_hw)
                pred = sample_depth_at_points(depth[b, c], uv.to(depth.dtype), image_hw)
                self.depth.add(pred, gt.to(pred.dtype), name)
        return depth

    def _novel_depth(self, batch: SelfOccBatch, grid: FieldGrid) -> None:
        for b, views in enumerate(batch.novel or []):
            for v in range(views.cam2ego.shape[0]):
                k, pose = views.intrinsics[v][None], views.cam2ego[v][None]
                depth = self._render_depth(grid.select(b), k, pose, views.image_hw)[0]
                for c, name in enumerate(self.camera_names):
                    uv, gt = project_lidar(views.lidar_points[v], pose[0, c], k[0, c], views.image_hw, min_depth_m=1e-3)
                    pred = sample_depth_at_points(depth[c], uv.to(depth.dtype), views.image_hw)
                    self.novel.add(pred, gt.to(pred.dtype), float(views.distance_m[v]), name)

    def _occupancy(self, batch: SelfOccBatch, grid: FieldGrid) -> List[Tensor]:
        points = query_points(self.options.occupancy_protocol).to(grid.values.device)
        preds = []
        for b in range(batch.batch_size):
            samples = query_field(grid.select(b), points.reshape(1, -1, 3))
            sdf = samples.sdf.reshape(points.shape[:3])
            logits = None if samples.semantic_logits is None else samples.semantic_logits.reshape(*points.shape[:3], -1)
            pred = occupancy_prediction(self.options.occupancy_protocol, sdf.cpu(), None if logits is None else logits.cpu(),
                                        self.options.occupancy_threshold)
            self.occ.add(pred, batch.occ_semantics[b].cpu(), batch.occ_mask_camera[b].cpu())
            preds.append(pred)
        return preds

    def results(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if "depth" in self.options.tasks:
            out.update(self.depth.compute())
        if "novel-depth" in self.options.tasks:
            out.update(self.novel.compute())
        if "occupancy" in self.options.tasks:
            out.update(self.occ.summary())
        n = max(1, self.samples)
        out["eval/num_samples"] = float(self.samples)
        for key, seconds in self.seconds.items():
            if seconds > 0:
                out[f"eval/seconds_per_sample/{key}"] = seconds / n
        return out


def median_lidar_depth(index: SelfOccIndex, max_samples: int = 200) -> float:
    """Median in-range LiDAR depth over (up to `max_samples` evenly spaced) keyframes' camera projections.

    The constant of the constant-median-depth baseline, taken from the TRAINING split so the baseline
    never sees eval truth.
    """
    hist = DepthHistogramMedian()
    picks = np.unique(np.linspace(0, len(index.samples) - 1, min(max_samples, len(index.samples))).astype(int))
    for i in picks:
        frame = index.sample_frame(int(i))
        if frame.lidar_path is None:
            continue
        what = f"scene {frame.scene_name}, sample {frame.sample_token}"
        points = transform_points(frame.lidar2ego, load_lidar_points(frame.lidar_path, what))
        ref_inv = np.linalg.inv(frame.ref_ego2global)
        for cam in frame.cameras.values():
            cam2ref = torch.from_numpy(ref_inv @ cam.ego2global @ cam.cam2ego)
            _, depth = project_lidar(torch.from_numpy(points).double(), cam2ref, torch.from_numpy(cam.intrinsics),
                                     (cam.height, cam.width))
            hist.add(depth)
    return hist.median_m()


def evaluate_batches(evaluator: Evaluator, batches: Iterable[SelfOccBatch], progress: bool = False, total: int = 0):
    """Run the evaluator over batches (optionally with a progress bar); yields (batch, outputs)."""
    iterator = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, total=total or None, desc="selfocc eval", unit="sample")
    for batch in iterator:
        yield batch, evaluator.add(batch)
