"""SelfOcc's evaluation protocols run over an eval split (docs/evaluation.md).

- depth: expected depth on the eval lattice of every camera of the keyframe, read bilinearly at the
  projections of its LiDAR points (1 < d < 80 m), prediction clamped to [1e-3, 80]; 7 metrics raw and
  median-scaled, overall and per camera; optional horizontal-flip test-time augmentation (`mirror_batch`);
- novel depth: the keyframe's field rendered from the cameras of the frames in its neighbour lists,
  against their LiDAR (1e-3 < d < 80 m), binned by ceil(distance between the frames);
- occupancy: the field's SDF at the protocol's 200x200x16 points, SDF <= threshold, official crops
  (or the clean Occ3D variant), IoU / per-class IoU / mIoU against Occ3D gts within mask_camera.

Every report carries the trivial baselines scored on the same samples: the constant median training
depth (depth: `depth/baseline/...`; novel depth: `novel_depth_baseline/...`) and the flat ground
(`occ/baseline/flat_ground/...`). Used by the pipeline (`ns-eval`, eval during training), by
`selfocc-eval` and by `selfocc-export` (`predict_occupancy`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Literal, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfocc_ns.data.batch import SelfOccBatch
from selfocc_ns.data.dataset import load_lidar_points, transform_points
from selfocc_ns.data.frames import SelfOccIndex
from selfocc_ns.eval.options import EvalOptions
from selfocc_ns.metrics import (
    DepthHistogramMedian,
    DepthMetricAccumulator,
    NovelDepthAccumulator,
    OccupancyMetricAccumulator,
    constant_median_depth_baseline,
    occupancy_prediction,
    project_lidar,
    query_points,
    sample_depth_at_points,
)
from selfocc_ns.metrics.distributed import all_reduce_sum
from selfocc_ns.model.field_grid import FieldGrid, query_field

NOVEL_BASELINE_PREFIX = "novel_depth_baseline"
"""Key prefix of the constant-depth baseline of the novel-depth task (a block of its own in the summary)."""
NOVEL_MIN_DEPTH_M = 1e-3
"""Official lower cut of LiDAR depths for novel depth (the depth task uses 1 m)."""


class EvaluableModel(Protocol):
    """What the evaluator needs from a model (`SelfOccModel` is one; tests use exact-truth stand-ins)."""

    semantic_channels: int
    """Semantic logits per voxel (0: geometry only)."""
    eval_lattice_fraction: float
    """Default depth lattice as a fraction of the ray crop."""

    def encode(self, batch: SelfOccBatch) -> FieldGrid:
        """The decoded field grid of every input keyframe of the batch."""
        ...

    def render_depth(self, grid: FieldGrid, intrinsics: Tensor, cam2ego: Tensor, image_hw: Tuple[int, int],
                     lattice_fraction: Optional[float] = None) -> Any:
        """Depth on the eval lattice of every camera: an object whose `.depth` is [B, N, h, w, 1]."""
        ...


# ----------------------------------------------------------------------------------------------
# Flip test-time augmentation: the mirrored rig
# ----------------------------------------------------------------------------------------------


def mirror_rig(
    images: Float[Tensor, "*cams 3 H W"], intrinsics: Float[Tensor, "*cams 3 3"], cam2ego: Float[Tensor, "*cams 4 4"]
) -> Tuple[Tensor, Tensor, Tensor]:
    """The rig mirrored about the ego x-z plane: flipped images seen by mirrored cameras.

    A horizontally flipped image is what the camera mirrored about its own y-z plane sees of the world
    mirrored about the ego x-z plane (y -> -y): with M_ego = diag(1, -1, 1), M_cam = diag(-1, 1, 1),
    cam2ego' = M_ego cam2ego M_cam and c_x' = W - c_x, the ego point M_ego p projects to (W - u, v) when
    p projects to (u, v) (pixel-centre convention: column j <-> W - 1 - j). Both mirrors together keep
    a right-handed camera with positive focal lengths.
    """
    width = images.shape[-1]
    flip_ego = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=cam2ego.dtype, device=cam2ego.device))
    flip_cam = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=cam2ego.dtype, device=cam2ego.device))
    k = intrinsics.clone()
    k[..., 0, 2] = width - intrinsics[..., 0, 2]
    return images.flip(-1), k, flip_ego @ cam2ego @ flip_cam


def mirrored_camera_order(camera_names: Sequence[str]) -> List[int]:
    """order[i] = the camera whose mirror image takes rig slot i (LEFT <-> RIGHT, others stay).

    The mirror of CAM_FRONT_LEFT looks front-right, so it is fed to the encoder in CAM_FRONT_RIGHT's slot
    (the encoder's per-camera embeddings then see each mirrored view where such a view normally is).
    A camera whose partner is not in the rig keeps its slot.
    """
    names = list(camera_names)

    def partner(name: str) -> str:
        return name.replace("LEFT", "#").replace("RIGHT", "LEFT").replace("#", "RIGHT")

    return [names.index(partner(n)) if partner(n) in names else i for i, n in enumerate(names)]


def mirror_batch(batch: SelfOccBatch, camera_names: Sequence[str]) -> SelfOccBatch:
    """The input keyframe and its anchor cameras mirrored (see `mirror_rig`), for flip TTA.

    Input cameras are also re-slotted by `mirrored_camera_order`; anchor cameras keep their order, so
    depth rendered from them lines up with the original cameras after flipping each map horizontally.
    """
    order = mirrored_camera_order(camera_names)
    images, k, pose = mirror_rig(batch.images[:, order], batch.intrinsics[:, order], batch.cam2ego[:, order])
    a_images, a_k, a_pose = mirror_rig(batch.anchor_images, batch.anchor_intrinsics, batch.anchor_cam2ego)
    return SelfOccBatch(
        images=images, intrinsics=k, cam2ego=pose, anchor_images=a_images, anchor_intrinsics=a_k,
        anchor_cam2ego=a_pose, scene_names=list(batch.scene_names), sample_tokens=list(batch.sample_tokens),
        info={"mirrored": True, "camera_order": order},
    )


# ----------------------------------------------------------------------------------------------
# Per-sample predictions
# ----------------------------------------------------------------------------------------------


def depth_only_grid(grid: FieldGrid) -> FieldGrid:
    """The same field with only its SDF channel: rendering it gives the same depth, reading 1 channel
    (plus the 3 gradient channels) per sample instead of 1 + 3 + 18.

    The finite-difference gradient grid is computed once on `grid` (and cached there) and shared.
    """
    return FieldGrid(grid.values[:, :1], grid.range_m, 0, 0, grid.rgb_activation, grid.sdf_gradient())


def predict_occupancy(
    grid: FieldGrid, protocol: Literal["selfocc", "occ3d"] = "selfocc", threshold: float = 0.0
) -> Tuple[Int[Tensor, "200 200 16"], Float[Tensor, "200 200 16"]]:
    """Occ3D class grid (uint8, 17 = free; CPU) and the SDF at the protocol's query points, of a B = 1 grid."""
    if grid.batch_size != 1:
        raise ValueError(f"predict_occupancy takes one sample (B = 1), got B = {grid.batch_size}")
    points = query_points(protocol).to(grid.values.device)
    samples = query_field(grid, points.reshape(1, -1, 3))
    sdf = samples.sdf.reshape(points.shape[:3]).cpu()
    logits = None
    if samples.semantic_logits is not None:
        logits = samples.semantic_logits.reshape(*points.shape[:3], -1).cpu()
    return occupancy_prediction(protocol, sdf, logits, threshold), sdf


def lidar_depth_pairs(
    depth_map: Float[Tensor, "h w"], points_ego: Float[Tensor, "P 3"], cam2ego: Tensor, intrinsics: Tensor,
    image_hw: Tuple[int, int], min_depth_m: float,
) -> Tuple[Tensor, Tensor]:
    """(predicted, LiDAR) depths of one camera image: LiDAR projected, lattice read bilinearly."""
    uv, gt = project_lidar(points_ego, cam2ego, intrinsics, image_hw, min_depth_m=min_depth_m)
    pred = sample_depth_at_points(depth_map, uv.to(depth_map.dtype), image_hw)
    return pred, gt.to(pred.dtype)


# ----------------------------------------------------------------------------------------------
# The evaluator
# ----------------------------------------------------------------------------------------------


class Evaluator:
    """Accumulates the chosen tasks' metrics over batches; `results()` gives one flat dict.

    `baseline_depth_m` is the constant of the constant-median-depth baseline (the median training LiDAR depth);
    None scores no depth baseline.
    """

    def __init__(self, model: EvaluableModel, options: EvalOptions, camera_names: Sequence[str],
                 baseline_depth_m: Optional[float] = None):
        self.model = model
        self.options = options
        self.camera_names = tuple(camera_names)
        self.baseline_depth_m = baseline_depth_m if options.baseline else None
        self.depth = DepthMetricAccumulator(self.camera_names, baseline_depth_m=self.baseline_depth_m)
        self.novel = NovelDepthAccumulator(self.camera_names)
        self.novel_baseline = NovelDepthAccumulator(self.camera_names, prefix=NOVEL_BASELINE_PREFIX)
        self.occ = OccupancyMetricAccumulator(
            options.occupancy_protocol,
            semantic=model.semantic_channels > 0,
            flat_ground_baseline_z_m=0.0 if options.baseline else None,
        )
        self.samples = 0
        self.seconds = {"encode": 0.0, "depth": 0.0, "novel-depth": 0.0, "occupancy": 0.0}

    def _timed(self, key: str, start: float) -> None:
        self.seconds[key] += time.perf_counter() - start

    @torch.no_grad()
    def add(self, batch: SelfOccBatch) -> Dict[str, Any]:
        """Evaluate one batch; returns per-sample outputs for image writers and exporters.

        Keys: `grid` (FieldGrid), `depth` ([B, N, h, w] depth maps, depth task), `occupancy` (list of
        [200, 200, 16] uint8 class grids, occupancy task).
        """
        self._check_truth(batch)
        start = time.perf_counter()
        grid = self.model.encode(batch)
        self._timed("encode", start)
        self.samples += batch.batch_size
        out: Dict[str, Any] = {"grid": grid}
        if "depth" in self.options.tasks:
            start = time.perf_counter()
            out["depth"] = self._depth(batch, grid)
            self._timed("depth", start)
        if "novel-depth" in self.options.tasks:
            start = time.perf_counter()
            self._novel_depth(batch, grid)
            self._timed("novel-depth", start)
        if "occupancy" in self.options.tasks:
            start = time.perf_counter()
            out["occupancy"] = self._occupancy(batch, grid)
            self._timed("occupancy", start)
        return out

    def lattice_fraction(self) -> float:
        """The depth lattice as a fraction of the image actually used (option, else the model's default)."""
        if self.options.lattice_fraction is not None:
            return self.options.lattice_fraction
        return float(self.model.eval_lattice_fraction)

    def _check_truth(self, batch: SelfOccBatch) -> None:
        """One clear error, naming the sample, when a task's ground truth is missing (nothing is skipped)."""
        sample = batch.sample_tokens[0] if batch.sample_tokens else "?"
        tasks = self.options.tasks
        if "depth" in tasks and batch.lidar_points is None:
            raise ValueError(f"depth evaluation needs LiDAR; sample {sample} has none")
        if "novel-depth" in tasks and batch.novel is None:
            raise ValueError(f"novel-depth evaluation needs the neighbour frames of sample {sample} "
                             "(iter_eval_batches(..., novel_views=True))")
        if "occupancy" in tasks and batch.occ_semantics is None:
            raise ValueError(f"occupancy evaluation needs Occ3D gts, sample {sample} has none "
                             "(pass --gts-dir to the dataparser)")

    def _render_depth(self, grid: FieldGrid, intrinsics: Tensor, cam2ego: Tensor, image_hw) -> Tensor:
        """[B, N, h, w] depth on the eval lattice."""
        if self.options.depth_only_render and isinstance(grid, FieldGrid):
            grid = depth_only_grid(grid)
        render = self.model.render_depth(grid, intrinsics, cam2ego, tuple(image_hw), self.options.lattice_fraction)
        return render.depth[..., 0]

    def _depth(self, batch: SelfOccBatch, grid: FieldGrid) -> Tensor:
        image_hw = tuple(batch.anchor_images.shape[-2:])
        depth = self._render_depth(grid, batch.anchor_intrinsics, batch.anchor_cam2ego, image_hw)  # B N h w
        if self.options.flip:
            mirrored = mirror_batch(batch, self.camera_names)
            mirrored_grid = self.model.encode(mirrored)
            mirrored_depth = self._render_depth(mirrored_grid, mirrored.anchor_intrinsics, mirrored.anchor_cam2ego,
                                                image_hw)
            depth = 0.5 * (depth + mirrored_depth.flip(-1))
        assert batch.lidar_points is not None
        for b in range(batch.batch_size):
            for c, name in enumerate(self.camera_names):
                pred, gt = lidar_depth_pairs(depth[b, c], batch.lidar_points[b], batch.anchor_cam2ego[b, c],
                                             batch.anchor_intrinsics[b, c], image_hw, min_depth_m=1.0)
                self.depth.add(pred, gt, name)
        return depth

    def _novel_depth(self, batch: SelfOccBatch, grid: FieldGrid) -> None:
        baseline_m = self.baseline_depth_m
        for b, views in enumerate(batch.novel or []):
            item = grid.select(b)
            if self.options.depth_only_render and isinstance(item, FieldGrid):
                item = depth_only_grid(item)  # once per keyframe: the gradient grid is shared by its views
            for v in range(views.cam2ego.shape[0]):
                k, pose = views.intrinsics[v][None], views.cam2ego[v][None]
                depth = self._render_depth(item, k, pose, views.image_hw)[0]
                distance_m = float(views.distance_m[v])
                for c, name in enumerate(self.camera_names):
                    pred, gt = lidar_depth_pairs(depth[c], views.lidar_points[v], pose[0, c], k[0, c], views.image_hw,
                                                 min_depth_m=NOVEL_MIN_DEPTH_M)
                    self.novel.add(pred, gt, distance_m, name)
                    if baseline_m is not None:
                        self.novel_baseline.add(constant_median_depth_baseline(gt, baseline_m), gt, distance_m, name)

    def _occupancy(self, batch: SelfOccBatch, grid: FieldGrid) -> List[Tensor]:
        assert batch.occ_semantics is not None and batch.occ_mask_camera is not None
        preds = []
        for b in range(batch.batch_size):
            pred, _ = predict_occupancy(grid.select(b), self.options.occupancy_protocol,
                                        self.options.occupancy_threshold)
            self.occ.add(pred, batch.occ_semantics[b].cpu(), occupancy_mask(batch, b, self.options.occupancy_mask))
            preds.append(pred)
        return preds

    def results(self) -> Dict[str, Any]:
        """Flat dict of every task's metrics and baselines; `occ/protocol` and `occ/mask` are the string values.

        Also records the options that change the numbers: `depth/flip` (0/1), `eval/lattice_fraction`,
        `occ/threshold_m`. All ranks must call it (metrics are all-reduced).
        """
        opts = self.options
        out: Dict[str, Any] = {}
        if "depth" in opts.tasks:
            out.update(self.depth.compute())
            out["depth/flip"] = float(opts.flip)
        if "novel-depth" in opts.tasks:
            out.update(self.novel.compute())
            if self.baseline_depth_m is not None:
                out.update(self.novel_baseline.compute())
                out[f"{NOVEL_BASELINE_PREFIX}/depth_m"] = float(self.baseline_depth_m)
        if "depth" in opts.tasks or "novel-depth" in opts.tasks:
            out["eval/lattice_fraction"] = float(self.lattice_fraction())
        if "occupancy" in opts.tasks:
            out.update(self.occ.summary())
            out["occ/threshold_m"] = float(opts.occupancy_threshold)
            out["occ/mask"] = opts.occupancy_mask
        # counts and times summed over ranks, so every rank reports the whole eval split
        keys = list(self.seconds)
        totals = all_reduce_sum(torch.tensor([float(self.samples)] + [self.seconds[k] for k in keys], dtype=torch.float64))
        samples = float(totals[0])
        out["eval/num_samples"] = samples
        for key, seconds in zip(keys, totals[1:].tolist()):
            if seconds > 0:
                out[f"eval/seconds_per_sample/{key}"] = seconds / max(1.0, samples)
        return out


def occupancy_mask(batch: SelfOccBatch, item: int, kind: str) -> Tensor:
    """[200, 200, 16] bool mask of the scored voxels of batch item `item`: Occ3D's camera mask, LiDAR mask or both."""
    assert batch.occ_mask_camera is not None
    camera = batch.occ_mask_camera[item].cpu().bool()
    if kind == "camera":
        return camera
    if batch.occ_mask_lidar is None:
        raise ValueError(f"--occupancy-mask {kind} needs mask_lidar in the Occ3D gts; sample {batch.sample_tokens[item]} "
                         "has none")
    lidar = batch.occ_mask_lidar[item].cpu().bool()
    return lidar if kind == "lidar" else camera & lidar


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


def evaluate_batches(
    evaluator: Evaluator, batches: Iterable[SelfOccBatch], progress: bool = False, total: int = 0
) -> Iterator[Tuple[SelfOccBatch, Dict[str, Any]]]:
    """Run the evaluator over batches (optionally with a tqdm progress bar); yields (batch, outputs)."""
    iterator = batches
    if progress:
        from tqdm import tqdm

        iterator = tqdm(batches, total=total or None, desc="selfocc eval", unit="sample")
    for batch in iterator:
        yield batch, evaluator.add(batch)


def numeric_results(results: Dict[str, Any]) -> Dict[str, float]:
    """The float-only view `ns-eval` wants: string values become `<key>/<value>: 1.0` (e.g. occ/protocol/selfocc)."""
    out: Dict[str, float] = {}
    for key, value in results.items():
        if isinstance(value, str):
            out[f"{key}/{value}"] = 1.0
        elif isinstance(value, (bool, int, float, np.floating, np.integer)):
            out[key] = float(value)
    return out


def write_results_json(path: Path, report: Dict[str, Any]) -> Path:
    """Write a report as strict JSON (indent 2), creating the folder; non-finite numbers become null (one warning)."""
    import json

    from selfocc_ns.eval.outputs import json_safe

    clean, non_finite = json_safe(report)
    if non_finite:
        shown = ", ".join(non_finite[:8]) + (f" and {len(non_finite) - 8} more" if len(non_finite) > 8 else "")
        print(f"selfocc warning: {len(non_finite)} non-finite value(s) written as null to {path}: {shown}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean, indent=2, allow_nan=False), "utf8")
    return path
