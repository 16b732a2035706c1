"""Occupancy prediction and metrics on the Occ3D-nuScenes grid, official SelfOcc or clean Occ3D protocol.

Predictions are Occ3D-format class grids: uint8 [200, 200, 16] indexed [x, y, z], 17 = free,
0..16 = occupied with that class; 0 ("others") on a predicted voxel means "occupied, class
unknown" (what a geometry-only prediction gives).

Protocol "selfocc" (official `eval_iou.py --occ3d --sem --use-mask --scene-size 4`):
- query points `official_query_points()`: linspace(-40, 40, 200)^2 x linspace(-1, 5.4, 16),
  endpoints included (not the voxel centres); occupied where SDF <= threshold (0); then z index
  >= 12 and a 6-voxel x/y border forced empty (`official_occupancy_prediction`);
- GT: 17 (free) and 0 (others) both count as empty; only `mask_camera` voxels are scored;
- IoU of occupied vs empty; per-class IoU over classes 1..16 from TP/FP/FN summed over the split;
  mIoU both as the mean over the 16 classes (`miou`) and as the paper's sum / 17 (`miou_sum17`).
Protocol "occ3d" (clean): query points = voxel centres (`clean_query_points()`), no crops; Occ3D's
own 18 x 18 confusion matrix over mask_camera voxels (free = 17); per-class IoU and mIoU over
0..16 (Occ3D's nanmean); geometric IoU of non-free vs free.

Classes without any GT or predicted voxel in the split have no IoU (0 / 0): they are left out of
the flat dict (which never holds NaN; likewise `iou`, `precision`, `recall`, `miou` when undefined)
and of `miou` (and add 0 to `miou_sum17`); `num_classes_scored` says how many
classes entered `miou`. The official code instead gives IoU 1 to every class with no GT voxel
(even with false positives); that never happens on the nuScenes val split, where every class
has GT, so the two agree there. A class with predictions but no GT gets IoU 0 here.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple, Union

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from selfocc_ns.data.label_maps import SemanticLabelSpace, label_space_channels, occupancy_class_lut
from selfocc_ns.data.occ3d import FREE_ID, OCC3D_CLASSES, OCC3D_RANGE_M, OCC3D_SHAPE, voxel_centres_m
from selfocc_ns.metrics.distributed import all_reduce_sum

Protocol = Literal["selfocc", "occ3d"]
PROTOCOLS: Tuple[str, ...] = ("selfocc", "occ3d")
OFFICIAL_MAX_Z_INDEX = 12
"""Official crop: z indices >= 12 (points above ~4.1 m) are forced empty."""
OFFICIAL_BORDER_VOXELS = 6
"""Official crop: the outer 6 voxels (2.4 m) in x and y are forced empty."""
SEMANTIC_CLASS_IDS: Tuple[int, ...] = tuple(range(1, 17))
"""Classes the official protocol scores (and the argmax runs over): barrier .. vegetation."""
DRIVEABLE_SURFACE_ID = 11
NUM_OCC3D_LABELS = len(OCC3D_CLASSES)  # 18, incl. free
SemanticGrid = Union[Float[Tensor, "200 200 16 C"], Int[Tensor, "200 200 16"]]
"""Semantics at the query points: logits (the semantic head's channel order) or class ids."""


def official_query_points() -> Float[Tensor, "200 200 16 3"]:
    """The official query points in metres (ego frame): linspace per axis, endpoints included."""
    x_min, y_min, z_min, x_max, y_max, z_max = OCC3D_RANGE_M
    nx, ny, nz = OCC3D_SHAPE
    axes = (torch.linspace(x_min, x_max, nx), torch.linspace(y_min, y_max, ny), torch.linspace(z_min, z_max, nz))
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def clean_query_points() -> Float[Tensor, "200 200 16 3"]:
    """Occ3D voxel centres in metres (ego frame), from `selfocc_ns.data.occ3d.voxel_centres_m`."""
    axes = [torch.as_tensor(a, dtype=torch.float32) for a in voxel_centres_m()]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def query_points(protocol: Protocol) -> Float[Tensor, "200 200 16 3"]:
    """The query points of `protocol`."""
    _check_protocol(protocol)
    return official_query_points() if protocol == "selfocc" else clean_query_points()


def apply_official_crops(occupied: Tensor) -> Tensor:
    """A copy of a [200, 200, 16] occupancy (bool) with the official z and x/y border crops applied."""
    out = occupied.clone()
    b = OFFICIAL_BORDER_VOXELS
    out[..., OFFICIAL_MAX_Z_INDEX:] = False
    out[:b] = False
    out[-b:] = False
    out[:, :b] = False
    out[:, -b:] = False
    return out


def semantic_ids(
    semantics: Union[Float[Tensor, "X Y Z C"], Int[Tensor, "X Y Z"]], label_space: SemanticLabelSpace = "occ3d"
) -> Int[Tensor, "X Y Z"]:
    """Class ids from either logits / probabilities or ids (returned as is).

    "occ3d" logits follow the 18-channel head (Occ3D ids 0..16, then sky 17): the argmax skips 0 (others)
    and 17 (sky), as the official protocol does for occupancy semantics. "openseed" logits are the 21
    OpenSeeD channels: the argmax over all of them, mapped by the official table (`occupancy_class_lut`;
    sky -> 0, occupied without a class, which the selfocc mIoU scores as no class).
    """
    if not semantics.is_floating_point():
        return semantics.long()
    channels = label_space_channels(label_space)
    if label_space == "openseed":
        if semantics.shape[-1] != channels:
            raise ValueError(f"'openseed' semantic logits need {channels} channels, got {semantics.shape[-1]}")
        lut = torch.as_tensor(occupancy_class_lut(label_space), device=semantics.device)
        return lut[semantics.max(dim=-1).indices]  # = argmax (the first maximum), faster on CPU
    if semantics.shape[-1] < 17:
        raise ValueError(f"semantic logits need >= 17 channels (Occ3D ids 0..16), got {semantics.shape[-1]}")
    return semantics[..., 1:17].max(dim=-1).indices + 1  # = argmax (the first maximum), faster on CPU


def _occupancy_to_classes(occupied: Tensor, semantics: Optional[Tensor]) -> Int[Tensor, "X Y Z"]:
    if semantics is None:
        classes = torch.zeros(occupied.shape, dtype=torch.long, device=occupied.device)  # 0: class unknown
    else:
        classes = semantic_ids(semantics).to(occupied.device)
    return torch.where(occupied, classes, torch.full_like(classes, FREE_ID)).to(torch.uint8)


def official_occupancy_prediction(
    sdf: Float[Tensor, "200 200 16"],
    semantics: Optional[SemanticGrid] = None,
    threshold: float = 0.0,
) -> Int[Tensor, "200 200 16"]:
    """Official SelfOcc prediction: occupied where sdf <= threshold, crops, class = argmax over 1..16.

    Args:
        sdf: SDF sampled at `official_query_points()` (metres; negative inside).
        semantics: logits at the same points (18-channel "occ3d" head order) or class ids (e.g.
            `semantic_ids(logits, "openseed")`); None gives class 0 (occupied, class unknown) to every
            occupied voxel.
        threshold: occupancy threshold on the SDF (official `--thresh 0`).

    Returns:
        uint8 Occ3D class grid, 17 = free.
    """
    _check_shape(sdf)
    return _occupancy_to_classes(apply_official_crops(sdf <= threshold), semantics)


def clean_occupancy_prediction(
    sdf: Float[Tensor, "200 200 16"],
    semantics: Optional[SemanticGrid] = None,
    threshold: float = 0.0,
) -> Int[Tensor, "200 200 16"]:
    """Clean Occ3D prediction: sdf at `clean_query_points()` <= threshold, no crops; classes as official."""
    _check_shape(sdf)
    return _occupancy_to_classes(sdf <= threshold, semantics)


def occupancy_prediction(
    protocol: Protocol, sdf: Tensor, semantics: Optional[Tensor] = None, threshold: float = 0.0
) -> Int[Tensor, "200 200 16"]:
    """`official_occupancy_prediction` or `clean_occupancy_prediction` by protocol name."""
    _check_protocol(protocol)
    fn = official_occupancy_prediction if protocol == "selfocc" else clean_occupancy_prediction
    return fn(sdf, semantics, threshold)


def flat_ground_prediction(protocol: Protocol = "selfocc", ground_z_m: float = 0.0) -> Int[Tensor, "200 200 16"]:
    """Trivial baseline: everything below a flat ground at z = ground_z_m is driveable surface.

    Built as the SDF of that plane (z - ground_z_m) at the protocol's query points and passed
    through the protocol's own prediction (crops included), so it is scored like a model.
    nuScenes' ego frame has its origin on the ground (ego poses have z = 0), hence the default.
    """
    points = query_points(protocol)
    sdf = points[..., 2] - ground_z_m
    labels = torch.full(sdf.shape, DRIVEABLE_SURFACE_ID, dtype=torch.long)
    return occupancy_prediction(protocol, sdf, labels)


def _cpu_tensor(array) -> Tensor:
    """A tensor or array-like (numpy, nested lists) as a CPU tensor."""
    return torch.as_tensor(array if isinstance(array, Tensor) else np.asarray(array)).cpu()


def confusion_matrix(
    pred: Int[Tensor, "X Y Z"], gt: Int[Tensor, "X Y Z"], mask: Optional[Tensor] = None
) -> Int[Tensor, "18 18"]:
    """Occ3D confusion matrix hist[gt, pred] (int64) over the voxels where mask is true."""
    pred_t, gt_t = _cpu_tensor(pred).long(), _cpu_tensor(gt).long()
    if pred_t.shape != gt_t.shape:
        raise ValueError(f"prediction {tuple(pred_t.shape)} and ground truth {tuple(gt_t.shape)} differ in shape")
    if mask is not None:
        keep = _cpu_tensor(mask).bool()
        pred_t, gt_t = pred_t[keep], gt_t[keep]
    for name, t in (("prediction", pred_t), ("ground truth", gt_t)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= NUM_OCC3D_LABELS):
            raise ValueError(f"{name} has class ids outside 0..17")
    n = NUM_OCC3D_LABELS
    return torch.bincount((gt_t * n + pred_t).flatten(), minlength=n * n).view(n, n)


def iou_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """TP / (TP + FP + FN) as float64; NaN where the denominator is 0."""
    denom = (tp + fp + fn).double()
    return torch.where(denom > 0, tp.double() / denom.clamp_min(1), torch.full_like(denom, float("nan")))


def geometric_counts(hist: Int[Tensor, "18 18"], protocol: Protocol) -> Tuple[Tensor, Tensor, Tensor]:
    """(TP, FP, FN) of occupied-vs-empty from the confusion matrix.

    Prediction: occupied = any class but 17, in both protocols. GT: occupied = 1..16 for
    "selfocc" (0 and 17 empty, as the official `gt > 0` after 17 -> 0), 0..16 for "occ3d".
    """
    gt_occ = torch.zeros(NUM_OCC3D_LABELS, dtype=torch.bool)
    gt_occ[1:FREE_ID] = True
    if protocol == "occ3d":
        gt_occ[0] = True
    pred_occ = torch.ones(NUM_OCC3D_LABELS, dtype=torch.bool)
    pred_occ[FREE_ID] = False
    tp = hist[gt_occ][:, pred_occ].sum()
    fp = hist[~gt_occ][:, pred_occ].sum()
    fn = hist[gt_occ][:, ~pred_occ].sum()
    return tp, fp, fn


def class_counts(hist: Int[Tensor, "18 18"]) -> Tuple[Tensor, Tensor, Tensor]:
    """Per label (0..17) TP, FP, FN from hist[gt, pred]."""
    tp = hist.diagonal()
    return tp, hist.sum(0) - tp, hist.sum(1) - tp


def _put(out: Dict[str, float], key: str, value: Tensor) -> None:
    """Store a scalar unless it is undefined (0 / 0): the flat dict never holds NaN (strict JSON)."""
    if not torch.isnan(value):
        out[key] = float(value)


def _check_shape(sdf: Tensor) -> None:
    if tuple(sdf.shape) != OCC3D_SHAPE:
        raise ValueError(f"SDF grid has shape {tuple(sdf.shape)}, expected {OCC3D_SHAPE}")


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown occupancy protocol {protocol!r}; expected one of {PROTOCOLS}")


class OccupancyMetricAccumulator:
    """Occupancy IoU / per-class IoU / mIoU over a split, with the flat-ground baseline beside.

    Usage: `add(pred, gt_semantics, mask_camera)` per sample, then `compute()` on every rank
    (all-reduces the confusion matrices when torch.distributed is initialised; exact, integer).
    Keys (fractions in [0, 1], not percent), prefix "occ":
    `occ/iou`, `occ/precision`, `occ/recall`, `occ/miou`, `occ/miou_sum17` (selfocc only),
    `occ/iou/<class name>` (scored classes), `occ/num_classes_scored`, `occ/num_samples`,
    `occ/num_voxels_scored`, and `occ/baseline/flat_ground/{iou,miou,miou_sum17,iou/<class>}` when
    the baseline is on. `summary()` adds `occ/protocol` (a string) for JSON reports.

    Args:
        protocol: "selfocc" (official) or "occ3d" (clean); see the module docstring.
        semantic: report per-class IoU and mIoU (False: geometry only).
        flat_ground_baseline_z_m: ground height of the flat-ground baseline scored on the same
            samples and masks; None switches the baseline off.
    """

    def __init__(
        self,
        protocol: Protocol = "selfocc",
        semantic: bool = True,
        prefix: str = "occ",
        flat_ground_baseline_z_m: Optional[float] = 0.0,
    ):
        _check_protocol(protocol)
        self.protocol = protocol
        self.semantic = semantic
        self.prefix = prefix
        self.baseline_z_m = flat_ground_baseline_z_m
        self.hist = torch.zeros(NUM_OCC3D_LABELS, NUM_OCC3D_LABELS, dtype=torch.int64)
        self.baseline_hist = torch.zeros_like(self.hist)
        self.num_samples = torch.zeros(1, dtype=torch.int64)
        self._baseline_pred: Optional[Tensor] = None

    def add(self, pred: Tensor, gt_semantics: Tensor, mask_camera: Optional[Tensor] = None) -> Dict[str, float]:
        """Score one sample; `pred` and `gt_semantics` are Occ3D class grids (17 = free).

        `mask_camera` (0/1 or bool) selects the scored voxels; None scores every voxel. Returns
        this sample's own geometric IoU (NaN if it has no occupied voxel in GT or prediction).
        """
        hist = confusion_matrix(pred, gt_semantics, mask_camera)
        self.hist += hist
        self.num_samples += 1
        if self.baseline_z_m is not None:
            if self._baseline_pred is None:
                self._baseline_pred = flat_ground_prediction(self.protocol, self.baseline_z_m)
            self.baseline_hist += confusion_matrix(self._baseline_pred, gt_semantics, mask_camera)
        return {"iou": float(iou_from_counts(*geometric_counts(hist, self.protocol)))}

    def _scores(self, hist: Tensor, key: str, out: Dict[str, float], semantic: bool) -> None:
        tp, fp, fn = geometric_counts(hist, self.protocol)
        _put(out, f"{key}/iou", iou_from_counts(tp, fp, fn))
        if not semantic:
            return
        scored_ids = SEMANTIC_CLASS_IDS if self.protocol == "selfocc" else tuple(range(FREE_ID))
        ious = iou_from_counts(*class_counts(hist))[list(scored_ids)]
        valid = ~torch.isnan(ious)
        for class_id, iou in zip(scored_ids, ious):
            if not torch.isnan(iou):
                out[f"{key}/iou/{OCC3D_CLASSES[class_id]}"] = float(iou)
        if bool(valid.any()):
            out[f"{key}/miou"] = float(ious[valid].mean())
        if self.protocol == "selfocc":
            # the paper's form: the 16 class IoUs summed over the 17 Occ3D classes ('others' scores 0)
            out[f"{key}/miou_sum17"] = float(ious[valid].sum()) / 17.0
        out[f"{key}/num_classes_scored"] = float(valid.sum())

    def compute(self) -> Dict[str, float]:
        """Flat numeric dict of the split's metrics (see the class docstring)."""
        packed = all_reduce_sum(torch.cat([self.hist.flatten(), self.baseline_hist.flatten(), self.num_samples]))
        n = NUM_OCC3D_LABELS * NUM_OCC3D_LABELS
        hist, baseline_hist = packed[:n].view_as(self.hist), packed[n : 2 * n].view_as(self.hist)
        out: Dict[str, float] = {}
        self._scores(hist, self.prefix, out, self.semantic)
        tp, fp, fn = geometric_counts(hist, self.protocol)
        _put(out, f"{self.prefix}/precision", iou_from_counts(tp, fp, torch.zeros_like(fn)))
        _put(out, f"{self.prefix}/recall", iou_from_counts(tp, torch.zeros_like(fp), fn))
        out[f"{self.prefix}/num_samples"] = float(packed[-1])
        out[f"{self.prefix}/num_voxels_scored"] = float(hist.sum())
        if self.baseline_z_m is not None:
            self._scores(baseline_hist, f"{self.prefix}/baseline/flat_ground", out, self.semantic)
            out.pop(f"{self.prefix}/baseline/flat_ground/num_classes_scored", None)
        return out

    def summary(self) -> Dict[str, Union[float, str]]:
        """`compute()` plus `<prefix>/protocol` (the protocol name), for JSON reports."""
        out: Dict[str, Union[float, str]] = dict(self.compute())
        out[f"{self.prefix}/protocol"] = self.protocol
        return out
