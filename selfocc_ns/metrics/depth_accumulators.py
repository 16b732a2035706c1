"""Split-level depth metrics: per-image metrics averaged overall, per camera, per distance bin.

Keys of `DepthMetricAccumulator.compute()` (prefix "depth"; all values floats):
- `depth/<mode>/<metric>` and `depth/<mode>/<metric>_std`: mean and unbiased std over images,
  mode in {raw, median}, metric in abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3;
- `depth/<mode>/<CAMERA>/<metric>`: mean over that camera's images (cameras with images only);
- `depth/median/scale`: mean per-image median scale factor (the official log prints it too);
- `depth/num_images`, `depth/num_points`, `depth/num_images_without_points` (images whose
  projection kept no LiDAR point: left out of every mean, as they have no metric);
- with a baseline constant: the same `depth/baseline/<mode>/...` keys for the constant-depth
  baseline on the same points, and `depth/baseline/depth_m` (the constant).
The overall mean is over all images (= the official mean over cameras of per-camera means when
every camera has the same number of images).

Keys of `NovelDepthAccumulator.compute()` (prefix "novel_depth", raw only, no median scaling):
- `novel_depth/<metric>` and `_std`: over all (novel frame, camera) images;
- `novel_depth/bin_<k>m/<metric>` and `novel_depth/bin_<k>m/num_images`: images of frames whose
  distance d to the input keyframe has ceil(d) == k, i.e. d in (k - 1, k] metres;
- `novel_depth/<CAMERA>/<metric>`, `novel_depth/num_images`, `novel_depth/num_images_without_points`.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from selfocc_ns.data.frames import CAMERA_CHANNELS
from selfocc_ns.metrics.depth import (
    DEPTH_METRIC_NAMES,
    DEPTH_MODES,
    PRED_MAX_DEPTH_M,
    PRED_MIN_DEPTH_M,
    MetricSums,
    add_metric_keys,
    camera_index,
    constant_median_depth_baseline,
    depth_error_vector,
    depth_metric_dict,
    median_scale_factor,
)
from selfocc_ns.metrics.distributed import all_reduce_sum


class _CameraDepthAccumulator:
    """What the depth accumulators share: camera names, the key prefix, the prediction clamp of every score."""

    def __init__(self, camera_names: Sequence[str], prefix: str, min_pred_m: float, max_pred_m: float):
        self.camera_names = tuple(camera_names)
        self.prefix = prefix
        self.min_pred_m = min_pred_m
        self.max_pred_m = max_pred_m

    def error_vector(self, pred_m: Float[Tensor, "P"], gt_m: Float[Tensor, "P"], median_scale: bool) -> Tensor:
        """`depth_error_vector` with this accumulator's clamp."""
        return depth_error_vector(pred_m, gt_m, median_scale, self.min_pred_m, self.max_pred_m)

    def add_camera_keys(
        self, out: Dict[str, float], key: str, count: Float[Tensor, "N"], mean: Float[Tensor, "N 7"]
    ) -> None:
        """`<key>/<CAMERA>/<metric>` means of the cameras that have images."""
        for c, name in enumerate(self.camera_names):
            if count[c] > 0:
                add_metric_keys(out, f"{key}/{name}", mean[c], None)


class DepthMetricAccumulator(_CameraDepthAccumulator):
    """Depth metrics over a split, raw and median-scaled, overall and per camera (see module doc).

    Usage: `add(pred_m, gt_m, camera)` once per image (one camera of one keyframe, matched LiDAR
    points), then `compute()` on every rank (it all-reduces when torch.distributed is initialised,
    so all ranks must call it). `compute()` does not change the state; call it as often as needed.

    Args:
        camera_names: names used in per-camera keys (nuScenes channels by default).
        prefix: first part of every key.
        baseline_depth_m: if set, also score `constant_median_depth_baseline` with this constant
            on the same points (see that function for which median to use).
    """

    def __init__(
        self,
        camera_names: Sequence[str] = CAMERA_CHANNELS,
        prefix: str = "depth",
        baseline_depth_m: Optional[float] = None,
        min_pred_m: float = PRED_MIN_DEPTH_M,
        max_pred_m: float = PRED_MAX_DEPTH_M,
    ):
        super().__init__(camera_names, prefix, min_pred_m, max_pred_m)
        self.baseline_depth_m = baseline_depth_m
        n_cams = len(self.camera_names)
        # groups: mode-major, camera-minor; model and baseline kept apart
        self.model_sums = MetricSums(len(DEPTH_MODES) * n_cams)
        self.baseline_sums = MetricSums(len(DEPTH_MODES) * n_cams)
        # per camera: [median scale sum, points, images without points]
        self.extras = torch.zeros(n_cams, 3, dtype=torch.float64)

    def add(self, pred_m: Float[Tensor, "P"], gt_m: Float[Tensor, "P"], camera: Union[str, int]) -> Dict[str, float]:
        """Score one image; returns its raw metrics (empty dict if it has no points)."""
        cam = camera_index(self.camera_names, camera)
        if gt_m.numel() == 0:
            self.extras[cam, 2] += 1
            return {}
        n_cams = len(self.camera_names)
        raw = torch.zeros(len(DEPTH_METRIC_NAMES), dtype=torch.float64)
        for m, mode in enumerate(DEPTH_MODES):
            vec = self.error_vector(pred_m, gt_m, mode == "median")
            self.model_sums.add(m * n_cams + cam, vec)
            if mode == "raw":
                raw = vec
            if self.baseline_depth_m is not None:
                const = constant_median_depth_baseline(gt_m, self.baseline_depth_m)
                base = self.error_vector(const, gt_m, mode == "median")
                self.baseline_sums.add(m * n_cams + cam, base)
        self.extras[cam, 0] += float(median_scale_factor(pred_m.detach().double(), gt_m.double(), self.min_pred_m))
        self.extras[cam, 1] += gt_m.numel()
        return depth_metric_dict(raw)

    def compute(self) -> Dict[str, float]:
        """Flat dict of the split's metrics (all-reduced over ranks); see the module docstring."""
        n_cams = len(self.camera_names)
        packed = torch.cat([self.model_sums.state.flatten(), self.baseline_sums.state.flatten(), self.extras.flatten()])
        packed = all_reduce_sum(packed)
        size = self.model_sums.state.numel()
        model = packed[:size].view(len(DEPTH_MODES), n_cams, -1)
        baseline = packed[size : 2 * size].view(len(DEPTH_MODES), n_cams, -1)
        extras = packed[2 * size :].view(n_cams, 3)

        out: Dict[str, float] = {}
        tables = [("", model)] + ([("baseline/", baseline)] if self.baseline_depth_m is not None else [])
        for source, state in tables:
            for m, mode in enumerate(DEPTH_MODES):
                count, mean, std = MetricSums.mean_std(state[m].sum(0))
                if count > 0:
                    add_metric_keys(out, f"{self.prefix}/{source}{mode}", mean, std)
                cam_count, cam_mean, _ = MetricSums.mean_std(state[m])
                self.add_camera_keys(out, f"{self.prefix}/{source}{mode}", cam_count, cam_mean)
        num_images = float(model[0, :, 0].sum())
        if num_images > 0:
            out[f"{self.prefix}/median/scale"] = float(extras[:, 0].sum()) / num_images
        if self.baseline_depth_m is not None:
            out[f"{self.prefix}/baseline/depth_m"] = float(self.baseline_depth_m)
        out[f"{self.prefix}/num_images"] = num_images
        out[f"{self.prefix}/num_points"] = float(extras[:, 1].sum())
        out[f"{self.prefix}/num_images_without_points"] = float(extras[:, 2].sum())
        return out


def distance_bin(distance_m: float) -> int:
    """Novel-depth bin of a frame distance: k = ceil(d), i.e. bin k holds d in (k - 1, k] metres."""
    if not math.isfinite(distance_m) or distance_m < 0:
        raise ValueError(f"frame distance must be finite and >= 0, got {distance_m}")
    return int(math.ceil(distance_m))


class NovelDepthAccumulator(_CameraDepthAccumulator):
    """Novel-depth metrics (official `eval_novel_depth.py`): raw errors binned by ceil(frame distance).

    `add(pred_m, gt_m, distance_m, camera)` once per camera image of each novel frame: `pred_m`
    is the depth rendered from that frame's camera with the input keyframe's representation,
    `gt_m` that frame's LiDAR depth (the official range is 1e-3 < d < 80 m), `distance_m` the
    distance between the two frames' CAM_FRONT centres. Bins go up to `max_bin` (distances beyond
    it raise, so a wrong unit does not pass silently).
    """

    def __init__(
        self,
        camera_names: Sequence[str] = CAMERA_CHANNELS,
        prefix: str = "novel_depth",
        max_bin: int = 100,
        min_pred_m: float = PRED_MIN_DEPTH_M,
        max_pred_m: float = PRED_MAX_DEPTH_M,
    ):
        super().__init__(camera_names, prefix, min_pred_m, max_pred_m)
        self.max_bin = max_bin
        # groups: bin-major, camera-minor
        self.sums = MetricSums((max_bin + 1) * len(self.camera_names))
        self.without_points = torch.zeros(1, dtype=torch.float64)

    def add(
        self, pred_m: Float[Tensor, "P"], gt_m: Float[Tensor, "P"], distance_m: float, camera: Union[str, int]
    ) -> Dict[str, float]:
        """Score one image of a novel frame; returns its metrics (empty dict if it has no points)."""
        cam = camera_index(self.camera_names, camera)
        k = distance_bin(float(distance_m))
        if k > self.max_bin:
            raise ValueError(f"frame distance {distance_m} m is beyond the last bin ({self.max_bin} m)")
        if gt_m.numel() == 0:
            self.without_points += 1
            return {}
        vec = self.error_vector(pred_m, gt_m, False)
        self.sums.add(k * len(self.camera_names) + cam, vec)
        return depth_metric_dict(vec)

    def compute(self) -> Dict[str, float]:
        """Flat dict: overall, per bin, per camera (all-reduced over ranks); see the module docstring."""
        packed = all_reduce_sum(torch.cat([self.sums.state.flatten(), self.without_points]))
        state = packed[:-1].view(self.max_bin + 1, len(self.camera_names), -1)
        out: Dict[str, float] = {}
        count, mean, std = MetricSums.mean_std(state.sum((0, 1)))
        if count > 0:
            add_metric_keys(out, self.prefix, mean, std)
        bin_count, bin_mean, _ = MetricSums.mean_std(state.sum(1))
        for k in range(self.max_bin + 1):
            if bin_count[k] > 0:
                add_metric_keys(out, f"{self.prefix}/bin_{k}m", bin_mean[k], None)
                out[f"{self.prefix}/bin_{k}m/num_images"] = float(bin_count[k])
        cam_count, cam_mean, _ = MetricSums.mean_std(state.sum(0))
        self.add_camera_keys(out, self.prefix, cam_count, cam_mean)
        out[f"{self.prefix}/num_images"] = float(count)
        out[f"{self.prefix}/num_images_without_points"] = float(packed[-1])
        return out
