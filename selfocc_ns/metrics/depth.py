"""Depth metrics with the official SelfOcc protocol (docs/evaluation.md).

Protocol (official `eval_depth.py` / `cal_depth_metric`):
- ground truth: the keyframe's LiDAR points projected into each camera, kept when
  1 < depth < 80 m (`project_lidar`); depth is the camera z coordinate;
- prediction: the rendered expected-depth lattice read bilinearly at the projections
  (`sample_depth_at_points`), then clamped to [1e-3, 80] m;
- per image (one camera of one sample): abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3, both raw
  and after per-image median scaling (pred * median(gt) / median(pred), scale taken before the
  clamp as the official code does); averaged over images, overall and per camera.

Pixel convention (nerfstudio's, used everywhere in this project): the centre of pixel (row i,
column j) is at continuous image coordinates (u, v) = (j + 0.5, i + 0.5) under the camera's
OpenCV intrinsics; the image covers [0, W) x [0, H). A depth lattice of h_l x w_l rays over an
H x W image has its sample (r, c) at (u, v) = ((c + 0.5) * W / w_l, (r + 0.5) * H / h_l): the
renderer must cast the eval lattice rays through exactly those points.

The official lattice (`lattice="official"`, docs/evaluation.md) instead has its sample (r, c) at
(c W / w_l, r H / h_l), and the official code reads it at lattice index (u / W (w_l - 1), v / H (h_l - 1))
(`grid_sample(align_corners=True)` at 2 u / W - 1), i.e. it treats the last lattice column as the image's
right edge; it keeps LiDAR points strictly inside the image (0 < u < W, 0 < v < H).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from selfocc_ns.metrics.distributed import all_reduce_sum

DEPTH_METRIC_NAMES: Tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")
"""Order of the per-image metric vector."""
DEPTH_MODES: Tuple[str, ...] = ("raw", "median")
"""Raw prediction, and per-image median-scaled prediction."""
PRED_MIN_DEPTH_M = 1e-3
"""Official clamp of the predicted depth (lower end)."""
PRED_MAX_DEPTH_M = 80.0
"""Official clamp of the predicted depth (upper end) and the LiDAR range cut."""
LIDAR_MIN_DEPTH_M = 1.0
"""Official lower cut of LiDAR depths for the depth task (novel depth uses 1e-3)."""


def median_scale_factor(
    pred_m: Float[Tensor, "P"], gt_m: Float[Tensor, "P"], min_pred_m: float = PRED_MIN_DEPTH_M
) -> Tensor:
    """median(gt) / median(pred) of one image (torch.median: the lower middle value, as the official code).

    The prediction median is floored at `min_pred_m` so a degenerate all-zero prediction gives a
    finite scale instead of inf.
    """
    return torch.median(gt_m) / torch.median(pred_m).clamp_min(min_pred_m)


def depth_error_vector(
    pred_m: Float[Tensor, "P"],
    gt_m: Float[Tensor, "P"],
    median_scale: bool = False,
    min_pred_m: float = PRED_MIN_DEPTH_M,
    max_pred_m: float = PRED_MAX_DEPTH_M,
) -> Float[Tensor, "7"]:
    """The 7 metrics of one image as a float64 vector in `DEPTH_METRIC_NAMES` order.

    Args:
        pred_m: predicted depth at the P matched points (metres).
        gt_m: LiDAR depth at the same points (metres, > 0).
        median_scale: multiply the prediction by median(gt) / median(pred) first.
    """
    if pred_m.ndim != 1 or pred_m.shape != gt_m.shape:
        shapes = f"{tuple(pred_m.shape)} and {tuple(gt_m.shape)}"
        raise ValueError(f"pred_m and gt_m must be 1-D of equal length, got {shapes}")
    if pred_m.numel() == 0:
        raise ValueError("depth_error_vector needs at least one point")
    pred = pred_m.detach().double()
    gt = gt_m.detach().double()
    if bool((gt <= 0).any()):
        raise ValueError("ground-truth depths must be positive")
    if median_scale:
        pred = pred * median_scale_factor(pred, gt, min_pred_m)
    pred = pred.clamp(min_pred_m, max_pred_m)
    ratio = torch.maximum(gt / pred, pred / gt)
    diff = gt - pred
    return torch.stack(
        [
            (diff.abs() / gt).mean(),
            (diff**2 / gt).mean(),
            (diff**2).mean().sqrt(),
            ((gt.log() - pred.log()) ** 2).mean().sqrt(),
            (ratio < 1.25).double().mean(),
            (ratio < 1.25**2).double().mean(),
            (ratio < 1.25**3).double().mean(),
        ]
    )


def depth_metric_dict(vector: Float[Tensor, "7"]) -> Dict[str, float]:
    """A metric vector in `DEPTH_METRIC_NAMES` order as {name: value}."""
    return {name: float(v) for name, v in zip(DEPTH_METRIC_NAMES, vector)}


def depth_errors(pred_m: Float[Tensor, "P"], gt_m: Float[Tensor, "P"], **options: Any) -> Dict[str, float]:
    """abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 of one image: `depth_error_vector` (and its keyword
    options median_scale, min_pred_m, max_pred_m) by metric name.

    >>> gt = torch.tensor([2.0, 4.0, 8.0])
    >>> round(depth_errors(2 * gt, gt)["abs_rel"], 6), round(depth_errors(2 * gt, gt, median_scale=True)["abs_rel"], 6)
    (1.0, 0.0)
    """
    return depth_metric_dict(depth_error_vector(pred_m, gt_m, **options))


def sample_depth_at_points(
    depth_map: Float[Tensor, "h_l w_l"], uv_px: Float[Tensor, "P 2"], image_hw: Tuple[int, int],
    lattice: Literal["pixel_centre", "official"] = "pixel_centre",
) -> Float[Tensor, "P"]:
    """Bilinear read of a rendered depth lattice at image points (differentiable in `depth_map`).

    Args:
        depth_map: depth rendered on an h_l x w_l lattice over the image: sample (r, c) at image
            point ((c + 0.5) * W / w_l, (r + 0.5) * H / h_l) ("pixel_centre"), or read as the official
            code reads its lattice ("official", module docstring).
        uv_px: (u, v) image coordinates of the points in pixels of the H x W image, pixel-centre
            convention (pixel (i, j) centre at (j + 0.5, i + 0.5)).
        image_hw: (H, W) of the image the coordinates refer to.
        lattice: which lattice-index convention to read with.

    Points beyond the outermost lattice samples take the border value (as the official
    `grid_sample(..., padding_mode="border")`).
    """
    x, y = lattice_index(uv_px.to(depth_map.dtype), tuple(depth_map.shape), image_hw, lattice)
    return bilinear_at_index(depth_map, x, y)


def lattice_index(
    uv_px: Float[Tensor, "P 2"], lattice_hw: Tuple[int, int], image_hw: Tuple[int, int],
    lattice: Literal["pixel_centre", "official"] = "pixel_centre",
) -> Tuple[Float[Tensor, "P"], Float[Tensor, "P"]]:
    """Continuous (column, row) lattice indices of image points, as `sample_depth_at_points` reads them."""
    h_l, w_l = lattice_hw
    height, width = image_hw
    u, v = uv_px[:, 0], uv_px[:, 1]
    if lattice == "official":
        return u * ((w_l - 1) / width), v * ((h_l - 1) / height)
    if lattice == "pixel_centre":
        # continuous lattice index: sample k sits at image coordinate (k + 0.5) * size / lattice_size
        return u * (w_l / width) - 0.5, v * (h_l / height) - 0.5
    raise ValueError(f"lattice must be 'pixel_centre' or 'official', not {lattice!r}")


def lattice_read_mask(
    uv_px: Float[Tensor, "P 2"], lattice_hw: Tuple[int, int], image_hw: Tuple[int, int],
    lattice: Literal["pixel_centre", "official"] = "pixel_centre", dtype: torch.dtype = torch.float32,
) -> Bool[Tensor, "h_l w_l"]:
    """The lattice samples `sample_depth_at_points` reads for these points from a `dtype` map (all four corners of
    each, whatever their weight): the depth map elsewhere never enters the metrics."""
    x, y = lattice_index(uv_px.to(dtype), lattice_hw, image_hw, lattice)
    x0, x1, y0, y1, _, _ = bilinear_corners(lattice_hw, x, y)
    mask = torch.zeros(lattice_hw, dtype=torch.bool, device=uv_px.device)
    for rows, cols in ((y0, x0), (y0, x1), (y1, x0), (y1, x1)):
        mask[rows, cols] = True
    return mask


def bilinear_corners(lattice_hw: Tuple[int, int], x: Float[Tensor, "P"], y: Float[Tensor, "P"]):
    """(x0, x1, y0, y1, fx, fy): the corner indices and fractions of a bilinear read clamped to the border."""
    h_l, w_l = lattice_hw
    x = x.clamp(0, w_l - 1)
    y = y.clamp(0, h_l - 1)
    x0 = x.floor().long().clamp(0, w_l - 1)
    y0 = y.floor().long().clamp(0, h_l - 1)
    x1 = (x0 + 1).clamp(max=w_l - 1)
    y1 = (y0 + 1).clamp(max=h_l - 1)
    return x0, x1, y0, y1, x - x0.to(x.dtype), y - y0.to(y.dtype)


def bilinear_at_index(
    image: Float[Tensor, "h w"], x: Float[Tensor, "P"], y: Float[Tensor, "P"]
) -> Float[Tensor, "P"]:
    """Bilinear value of a 2D map at continuous (column, row) indices, clamped to the border."""
    x0, x1, y0, y1, fx, fy = bilinear_corners(tuple(image.shape), x, y)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def project_lidar(
    points_ego: Float[Tensor, "P 3"],
    cam2ego: Float[Tensor, "4 4"],
    intrinsics: Float[Tensor, "3 3"],
    image_hw: Tuple[int, int],
    min_depth_m: float = LIDAR_MIN_DEPTH_M,
    max_depth_m: float = PRED_MAX_DEPTH_M,
    strict_bounds: bool = False,
) -> Tuple[Float[Tensor, "Q 2"], Float[Tensor, "Q"]]:
    """Project ego-frame points into an OpenCV camera; keep those in range and inside the image.

    Args:
        points_ego: LiDAR points in the ego frame (x forward, y left, z up), metres.
        cam2ego: camera (OpenCV: x right, y down, z forward) to ego.
        intrinsics: pinhole matrix of the H x W image.
        image_hw: (H, W).
        min_depth_m, max_depth_m: keep min < depth < max (strict, as the official code).
        strict_bounds: keep 0 < u < W and 0 < v < H (official) instead of 0 <= u, v.

    Returns:
        uv_px: (u, v) of the kept points (pixel-centre convention of the module docstring; kept
            when 0 <= u < W and 0 <= v < H), and depth_m: their camera z in metres.
    """
    points = torch.as_tensor(points_ego, dtype=torch.float64)
    cam2ego_64 = torch.as_tensor(cam2ego, dtype=torch.float64, device=points.device)
    k_64 = torch.as_tensor(intrinsics, dtype=torch.float64, device=points.device)
    ego2cam = torch.linalg.inv(cam2ego_64)
    points_cam = points @ ego2cam[:3, :3].T + ego2cam[:3, 3]
    depth = points_cam[:, 2]
    in_range = (depth > min_depth_m) & (depth < max_depth_m)
    points_cam, depth = points_cam[in_range], depth[in_range]
    uvw = points_cam @ k_64.T
    uv = uvw[:, :2] / uvw[:, 2:3]
    height, width = image_hw
    if strict_bounds:
        inside = (uv[:, 0] > 0) & (uv[:, 0] < width) & (uv[:, 1] > 0) & (uv[:, 1] < height)
    else:
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    dtype = points_ego.dtype if isinstance(points_ego, Tensor) and points_ego.is_floating_point() else torch.float32
    return uv[inside].to(dtype), depth[inside].to(dtype)


def constant_median_depth_baseline(gt_m: Float[Tensor, "P"], constant_m: float) -> Float[Tensor, "P"]:
    """The trivial baseline: the same depth `constant_m` at every point.

    This project's choice of constant: the median LiDAR depth (in range) over *training*
    keyframes (`DepthHistogramMedian` over the train split), so the baseline never sees eval
    ground truth. Its median-scaled metrics equal predicting each eval image's own GT median.
    """
    return torch.full_like(gt_m, float(constant_m))


class DepthHistogramMedian:
    """Median of many depths without storing them: counts in fixed bins (default 1 cm over [0, 80] m).

    Used to compute the constant of `constant_median_depth_baseline` over a split; all-reduced,
    so every rank gets the same constant. Precision: half a bin.
    """

    def __init__(self, max_depth_m: float = PRED_MAX_DEPTH_M, bin_m: float = 0.01):
        self.bin_m = bin_m
        self.counts = torch.zeros(int(math.ceil(max_depth_m / bin_m)), dtype=torch.int64)

    def add(self, depth_m: Tensor) -> None:
        idx = (depth_m.detach().double().cpu() / self.bin_m).long().clamp(0, len(self.counts) - 1)
        self.counts += torch.bincount(idx.flatten(), minlength=len(self.counts))

    def median_m(self) -> float:
        """Centre of the bin holding the lower middle value; raises if nothing was added."""
        counts = all_reduce_sum(self.counts)
        total = int(counts.sum())
        if total == 0:
            raise ValueError("DepthHistogramMedian: no depths were added")
        k = int(torch.searchsorted(counts.cumsum(0), torch.tensor((total + 1) // 2)))
        return (k + 0.5) * self.bin_m


class MetricSums:
    """Per group (e.g. one camera, one mode): image count, sum and sum of squares of the 7 metrics.

    State is one float64 tensor [G, 15] (count, 7 sums, 7 sums of squares) so it all-reduces in
    one call and the mean/std computed from it equal a single-process run.
    """

    def __init__(self, num_groups: int):
        self.state = torch.zeros(num_groups, 1 + 2 * len(DEPTH_METRIC_NAMES), dtype=torch.float64)

    def add(self, group: int, metrics: Float[Tensor, "7"]) -> None:
        metrics = metrics.detach().double().cpu()
        self.state[group, 0] += 1
        self.state[group, 1:8] += metrics
        self.state[group, 8:15] += metrics**2

    @staticmethod
    def mean_std(state: Float[Tensor, "... 15"]) -> Tuple[Tensor, Tensor, Tensor]:
        """(count [...], mean [..., 7], std [..., 7]) of reduced state.

        std is the unbiased (n - 1) standard deviation over images, like nerfstudio's
        `torch.std_mean` in `get_average_eval_image_metrics`; 0 when fewer than two images.
        """
        count = state[..., 0]
        n = count.clamp_min(1).unsqueeze(-1)
        mean = state[..., 1:8] / n
        var = (state[..., 8:15] - n * mean**2).clamp_min(0) / (n - 1).clamp_min(1)
        std = torch.where(count.unsqueeze(-1) > 1, var.sqrt(), torch.zeros_like(var))
        return count, mean, std


def add_metric_keys(out: Dict[str, float], key: str, mean: Tensor, std: Optional[Tensor]) -> None:
    """Write `<key>/<metric>` (and `<key>/<metric>_std` when std is given) for the 7 metrics."""
    for i, name in enumerate(DEPTH_METRIC_NAMES):
        out[f"{key}/{name}"] = float(mean[i])
        if std is not None:
            out[f"{key}/{name}_std"] = float(std[i])


def camera_index(camera_names: Sequence[str], camera: Union[str, int]) -> int:
    """Index of `camera` (a name of `camera_names` or already an index)."""
    if isinstance(camera, int):
        if not 0 <= camera < len(camera_names):
            raise ValueError(f"camera index {camera} out of range for {list(camera_names)}")
        return camera
    if camera not in camera_names:
        raise ValueError(f"unknown camera {camera!r}; expected one of {list(camera_names)}")
    return list(camera_names).index(camera)
