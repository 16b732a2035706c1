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

Frames: depth and novel depth live in the batch's reference frame (cameras and LiDAR alike); the Occ3D gts and
query points are in the keyframe's ego frame, so occupancy queries the field at `ego2ref` of those points (the
official `eval_iou.py` maps them by ego2lidar likewise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Literal, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from selfocc_ns.data.batch import NovelViews, SelfOccBatch
from selfocc_ns.data.dataset import load_lidar_points, transform_points
from selfocc_ns.data.frames import SelfOccIndex
from selfocc_ns.data.label_maps import SemanticLabelSpace
from selfocc_ns.eval.lattice import (
    OFFICIAL_DEPTH_LATTICE_HW,
    OFFICIAL_NOVEL_DEPTH_LATTICE_HW,
    official_lattice_hw,
    official_lattice_px,
)
from selfocc_ns.eval.options import EvalOptions
from selfocc_ns.metrics import (
    DepthHistogramMedian,
    DepthMetricAccumulator,
    NovelDepthAccumulator,
    OccupancyMetricAccumulator,
    constant_median_depth_baseline,
    occupancy_prediction,
    lattice_read_mask,
    project_lidar,
    query_points,
    sample_depth_at_points,
    semantic_ids,
)
from selfocc_ns.metrics.distributed import all_reduce_sum
from selfocc_ns.model.field_grid import FieldGrid, lattice_axes, query_field, sample_grid_lattice
from selfocc_ns.model.rays import eval_lattice_hw

NOVEL_BASELINE_PREFIX = "novel_depth_baseline"
"""Key prefix of the constant-depth baseline of the novel-depth task (a block of its own in the summary)."""
NOVEL_MIN_DEPTH_M = 1e-3
"""Official lower cut of LiDAR depths for novel depth (the depth task uses 1 m)."""


class EvaluableModel(Protocol):
    """What the evaluator needs from a model (`SelfOccModel` is one; tests use exact-truth stand-ins)."""

    semantic_channels: int
    """Semantic logits per voxel (0: geometry only)."""
    semantic_label_space: SemanticLabelSpace
    """What those channels mean ("occ3d" or "openseed", `selfocc_ns.data.label_maps`)."""
    eval_lattice_fraction: float
    """Default depth lattice as a fraction of the ray crop."""

    def encode(self, batch: SelfOccBatch) -> FieldGrid:
        """The decoded field grid of every input keyframe of the batch."""
        ...

    def render_depth(self, grid: FieldGrid, intrinsics: Tensor, cam2ego: Tensor, image_hw: Tuple[int, int],
                     lattice_fraction: Optional[float] = None, lattice_px: Optional[Tensor] = None,
                     read_mask: Optional[Tensor] = None) -> Any:
        """Depth on the eval lattice of every camera (or at `lattice_px`, [h, w, 2] image pixels): an object
        whose `.depth` is [B, N, h, w, 1]; only the `read_mask` [B, N, h, w] points are read afterwards (a model
        may leave the others undefined)."""
        ...


# ----------------------------------------------------------------------------------------------
# Flip test-time augmentation: the mirrored rig
# ----------------------------------------------------------------------------------------------


def mirror_rig(
    images: Float[Tensor, "*cams 3 H W"], intrinsics: Float[Tensor, "*cams 3 3"], cam2ego: Float[Tensor, "*cams 4 4"],
    ego2ref: Optional[Float[Tensor, "*cams 4 4"]] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The rig mirrored about the ego x-z plane: flipped images seen by mirrored cameras.

    A horizontally flipped image is what the camera mirrored about its own y-z plane sees of the world
    mirrored about the ego x-z plane (y -> -y): with M_ego = diag(1, -1, 1), M_cam = diag(-1, 1, 1),
    cam2ego' = M_ego cam2ego M_cam and c_x' = W - c_x, the ego point M_ego p projects to (W - u, v) when
    p projects to (u, v) (pixel-centre convention: column j <-> W - 1 - j). Both mirrors together keep
    a right-handed camera with positive focal lengths. Cameras in another reference frame (`ego2ref`,
    broadcast over the cameras) are mirrored about the same plane: M = ego2ref M_ego ego2ref^-1.
    """
    width = images.shape[-1]
    flip_ego = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=cam2ego.dtype, device=cam2ego.device))
    flip_cam = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=cam2ego.dtype, device=cam2ego.device))
    if ego2ref is not None:
        ego2ref = ego2ref.to(cam2ego.dtype)
        flip_ego = ego2ref @ flip_ego @ torch.linalg.inv(ego2ref)
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
    ego2ref = torch.stack([batch.ego2ref_of(b) for b in range(batch.batch_size)])[:, None]  # B 1 4 4
    images, k, pose = mirror_rig(batch.images[:, order], batch.intrinsics[:, order], batch.cam2ego[:, order], ego2ref)
    a_images, a_k, a_pose = mirror_rig(batch.anchor_images, batch.anchor_intrinsics, batch.anchor_cam2ego, ego2ref)
    return SelfOccBatch(
        images=images, intrinsics=k, cam2ego=pose, anchor_images=a_images, anchor_intrinsics=a_k,
        anchor_cam2ego=a_pose, ego2ref=batch.ego2ref, scene_names=list(batch.scene_names),
        sample_tokens=list(batch.sample_tokens), info={"mirrored": True, "camera_order": order},
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


def ego_to_ref_points(points_ego: Float[Tensor, "*points 3"], ego2ref: Optional[Tensor]) -> Float[Tensor, "*points 3"]:
    """Ego-frame points in the sample's reference frame (`SelfOccBatch.ego2ref`; None: unchanged)."""
    if ego2ref is None:
        return points_ego
    ego2ref = ego2ref.to(points_ego)
    return points_ego @ ego2ref[:3, :3].T + ego2ref[:3, 3]


def predict_occupancy(
    grid: FieldGrid, protocol: Literal["selfocc", "occ3d"] = "selfocc", threshold: float = 0.0,
    ego2ref: Optional[Float[Tensor, "4 4"]] = None, label_space: SemanticLabelSpace = "occ3d",
    reads: Literal["lattice", "points"] = "lattice",
) -> Tuple[Int[Tensor, "200 200 16"], Float[Tensor, "200 200 16"]]:
    """Occ3D class grid (uint8, 17 = free; CPU) and the SDF at the protocol's query points, of a B = 1 grid.

    The query points are in the keyframe's ego frame (the gts'); `ego2ref` maps them into the grid's reference
    frame first (a LiDAR-frame model). `label_space` says how to read the semantic logits (`semantic_ids`).
    `reads` "lattice": when the points are an axis-aligned lattice in the grid's frame (any ego2ref that only
    translates, or permutes axes), the SDF and logits are read as three matrix products (`sample_grid_lattice`: the
    same values, no per-point gathers); otherwise, or "points", one `grid_sample` read per point (the reference).
    """
    if grid.batch_size != 1:
        raise ValueError(f"predict_occupancy takes one sample (B = 1), got B = {grid.batch_size}")
    if reads not in ("lattice", "points"):
        raise ValueError(f"unknown reads {reads!r}; expected 'lattice' or 'points'")
    points = ego_to_ref_points(query_points(protocol).to(grid.values.device), ego2ref)
    shape = points.shape[:3]
    axes = lattice_axes(points) if reads == "lattice" else None
    if axes is not None:
        first_semantic = grid.values.shape[1] - grid.semantic_channels
        channels = [0] + list(range(first_semantic, grid.values.shape[1]))  # SDF and logits, no colour
        read = sample_grid_lattice(grid.values[0, channels], axes, grid.range_m).cpu()  # 200 200 16 C
        sdf = read[..., 0]
        classes = semantic_ids(read[..., 1:], label_space) if grid.semantic_channels else None
    else:
        samples = query_field(grid, points.reshape(1, -1, 3))
        sdf = samples.sdf.reshape(shape).cpu()
        classes = None
        if samples.semantic_logits is not None:
            classes = semantic_ids(samples.semantic_logits.reshape(*shape, -1).cpu(), label_space)
    return occupancy_prediction(protocol, sdf, classes, threshold), sdf


def read_lidar_pairs(depth_map: Float[Tensor, "h w"], projection: Tuple[Tensor, Tensor], image_hw: Tuple[int, int],
                     lattice: Literal["pixel_centre", "official"]) -> Tuple[Tensor, Tensor]:
    """(predicted, LiDAR) depths of a `project_lidar` result (uv, depth) on one camera's depth lattice."""
    uv, gt = projection
    pred = sample_depth_at_points(depth_map, uv.to(depth_map.dtype), image_hw, lattice)
    return pred, gt.to(pred.dtype)


def lidar_read_mask(projections: Sequence[Sequence[Tuple[Tensor, Tensor]]], lattice_hw: Tuple[int, int],
                    image_hw: Tuple[int, int], lattice: Literal["pixel_centre", "official"]) -> Bool[Tensor, "B N h w"]:
    """The lattice points the LiDAR reads ([b][c] `project_lidar` results): what a depth render must provide."""
    return torch.stack([torch.stack([lattice_read_mask(uv, lattice_hw, image_hw, lattice) for uv, _ in cams])
                        for cams in projections])


def keyframe_rig_lidar(views: NovelViews, view: int) -> Float[Tensor, "P 3"]:
    """A neighbour frame's LiDAR as the official novel-depth truth sees it: its points in its own sensor frame,
    placed as if that sensor were t's (`keyframe_lidar2ref @ inv(lidar2ref[view])`), so that projecting them with
    t's cameras is the official projection with the keyframe's lidar2img (the rig assumed rigid)."""
    if views.lidar2ref is None or views.keyframe_lidar2ref is None or bool(torch.isnan(views.keyframe_lidar2ref).any()):
        raise ValueError("novel_depth_gt 'keyframe_lidar2img' needs the LIDAR_TOP poses of the keyframe and its "
                         "neighbours in the batch (NovelViews.lidar2ref, keyframe_lidar2ref)")
    own2t = views.keyframe_lidar2ref.double() @ torch.linalg.inv(views.lidar2ref[view].double())
    points = views.lidar_points[view].double()
    return (points @ own2t[:3, :3].T + own2t[:3, 3]).to(views.lidar_points[view].dtype)


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

    def official_lattice(self, task: str, image_hw: Tuple[int, int]) -> Optional[Tensor]:
        """The official lattice points [h, w, 2] of a task ('depth' or 'novel-depth'), None for pixel centres."""
        if self.options.eval_lattice != "official":
            return None
        base = OFFICIAL_DEPTH_LATTICE_HW if task == "depth" else OFFICIAL_NOVEL_DEPTH_LATTICE_HW
        return official_lattice_px(image_hw, official_lattice_hw(base, image_hw[1]))

    def _render_depth(self, grid: FieldGrid, intrinsics: Tensor, cam2ego: Tensor, image_hw,
                      lattice_px: Optional[Tensor] = None, read_mask: Optional[Tensor] = None) -> Tensor:
        """[B, N, h, w] depth on the eval lattice (the pixel-centre one, or the given points); only the `read_mask`
        points are read afterwards."""
        if self.options.depth_only_render and isinstance(grid, FieldGrid):
            grid = depth_only_grid(grid)
        if lattice_px is None:
            render = self.model.render_depth(grid, intrinsics, cam2ego, tuple(image_hw), self.options.lattice_fraction,
                                             read_mask=read_mask)
        else:
            render = self.model.render_depth(grid, intrinsics, cam2ego, tuple(image_hw), lattice_px=lattice_px,
                                             read_mask=read_mask)
        return render.depth[..., 0]

    def lattice_hw(self, lattice_px: Optional[Tensor], image_hw: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) of the depth lattice: the given points', or the pixel-centre lattice of `lattice_fraction()`."""
        if lattice_px is not None:
            return tuple(lattice_px.shape[:2])  # type: ignore[return-value]
        return eval_lattice_hw(image_hw, self.lattice_fraction())

    def _depth(self, batch: SelfOccBatch, grid: FieldGrid) -> Tensor:
        """Depth metrics of the batch; the returned [B, N, h, w] map is NaN where no LiDAR point reads it (when the
        model renders only the points read)."""
        image_hw = tuple(batch.anchor_images.shape[-2:])
        lattice_px = self.official_lattice("depth", image_hw)
        lattice = self.options.eval_lattice
        assert batch.lidar_points is not None
        projections = [[project_lidar(batch.lidar_points[b], batch.anchor_cam2ego[b, c], batch.anchor_intrinsics[b, c],
                                      image_hw, min_depth_m=1.0, strict_bounds=lattice == "official")
                        for c in range(len(self.camera_names))] for b in range(batch.batch_size)]
        read_mask = lidar_read_mask(projections, self.lattice_hw(lattice_px, image_hw), image_hw, lattice)
        depth = self._render_depth(grid, batch.anchor_intrinsics, batch.anchor_cam2ego, image_hw, lattice_px,
                                   read_mask)  # B N h w
        if self.options.flip:
            mirrored = mirror_batch(batch, self.camera_names)
            mirrored_grid = self.model.encode(mirrored)
            if lattice_px is None:  # pixel centres: column j mirrors onto column w - 1 - j
                mirrored_depth = self._render_depth(mirrored_grid, mirrored.anchor_intrinsics, mirrored.anchor_cam2ego,
                                                    image_hw, read_mask=read_mask.flip(-1)).flip(-1)
            else:  # the official lattice is not symmetric: render the mirrored rig at the mirrored points
                mirrored_px = lattice_px.clone()
                mirrored_px[..., 0] = image_hw[1] - lattice_px[..., 0]
                mirrored_depth = self._render_depth(mirrored_grid, mirrored.anchor_intrinsics, mirrored.anchor_cam2ego,
                                                    image_hw, mirrored_px, read_mask)
            depth = 0.5 * (depth + mirrored_depth)
        for b in range(batch.batch_size):
            for c, name in enumerate(self.camera_names):
                pred, gt = read_lidar_pairs(depth[b, c], projections[b][c], image_hw, lattice)
                self.depth.add(pred, gt, name)
        return depth

    def _novel_depth(self, batch: SelfOccBatch, grid: FieldGrid) -> None:
        """Each neighbour view rendered from t's field; its truth: the neighbour's LiDAR in the neighbour's own
        cameras, or (`novel_depth_gt="keyframe_lidar2img"`, official) placed on t's LiDAR and seen by t's cameras."""
        baseline_m = self.baseline_depth_m
        keyframe_rig = self.options.novel_depth_gt == "keyframe_lidar2img"
        for b, views in enumerate(batch.novel or []):
            item = grid.select(b)
            if self.options.depth_only_render and isinstance(item, FieldGrid):
                item = depth_only_grid(item)  # once per keyframe: the gradient grid is shared by its views
            lattice_px = self.official_lattice("novel-depth", views.image_hw)
            lattice = self.options.eval_lattice
            for v in range(views.cam2ego.shape[0]):
                k, pose = views.intrinsics[v][None], views.cam2ego[v][None]
                points = keyframe_rig_lidar(views, v) if keyframe_rig else views.lidar_points[v]
                gt_k = batch.anchor_intrinsics[b] if keyframe_rig else k[0]
                gt_pose = batch.anchor_cam2ego[b] if keyframe_rig else pose[0]
                projections = [project_lidar(points, gt_pose[c], gt_k[c], views.image_hw, min_depth_m=NOVEL_MIN_DEPTH_M,
                                             strict_bounds=lattice == "official")
                               for c in range(len(self.camera_names))]
                read_mask = lidar_read_mask([projections], self.lattice_hw(lattice_px, views.image_hw), views.image_hw,
                                            lattice)
                depth = self._render_depth(item, k, pose, views.image_hw, lattice_px, read_mask)[0]
                distance_m = float(views.distance_m[v])
                for c, name in enumerate(self.camera_names):
                    pred, gt = read_lidar_pairs(depth[c], projections[c], views.image_hw, lattice)
                    self.novel.add(pred, gt, distance_m, name)
                    if baseline_m is not None:
                        self.novel_baseline.add(constant_median_depth_baseline(gt, baseline_m), gt, distance_m, name)

    def _occupancy(self, batch: SelfOccBatch, grid: FieldGrid) -> List[Tensor]:
        assert batch.occ_semantics is not None and batch.occ_mask_camera is not None
        preds = []
        for b in range(batch.batch_size):
            pred, _ = predict_occupancy(grid.select(b), self.options.occupancy_protocol,
                                        self.options.occupancy_threshold, batch.ego2ref_of(b),
                                        self.model.semantic_label_space)
            self.occ.add(pred, batch.occ_semantics[b].cpu(), occupancy_mask(batch, b, self.options.occupancy_mask))
            preds.append(pred)
        return preds

    def results(self) -> Dict[str, Any]:
        """Flat dict of every task's metrics and baselines; `occ/protocol`, `occ/mask` (and, when not the default,
        `eval/lattice` and `novel_depth/gt`) are the string values.

        Also records the options that change the numbers: `depth/flip` (0/1), `eval/lattice_fraction` (pixel-
        centre lattice) or `eval/lattice: official`, `novel_depth/gt` (official truth), `occ/threshold_m`.
        All ranks must call it (metrics are all-reduced).
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
        if "novel-depth" in opts.tasks and opts.novel_depth_gt != "own_cameras":
            out["novel_depth/gt"] = opts.novel_depth_gt
        if "depth" in opts.tasks or "novel-depth" in opts.tasks:
            if opts.eval_lattice == "official":
                out["eval/lattice"] = opts.eval_lattice
            else:
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
