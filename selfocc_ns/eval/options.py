"""What an evaluation runs and how: one dataclass for the pipeline config (`ns-eval`, eval during training) and
the flags of `selfocc-eval` (docs/evaluation.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

EvalTask = Literal["depth", "novel-depth", "occupancy"]
EVAL_TASKS: Tuple[str, ...] = ("depth", "novel-depth", "occupancy")


@dataclass(frozen=True)
class EvalOptions:
    """The protocol choices of an evaluation (override with `dataclasses.replace`)."""

    tasks: Tuple[EvalTask, ...] = ("depth",)
    """Tasks to run: depth, novel-depth, occupancy."""
    occupancy_protocol: Literal["selfocc", "occ3d"] = "selfocc"
    """'selfocc': official (linspace points, crops, mIoU over 1..16); 'occ3d': voxel centres, Occ3D's own mIoU."""
    occupancy_threshold: float = 0.0
    """Occupied where SDF <= this (metres; official 0)."""
    occupancy_mask: Literal["camera", "lidar", "camera_lidar"] = "camera"
    """Occ3D voxels scored: inside mask_camera (SelfOcc), mask_lidar, or both (OccNeRF, GaussianOcc)."""
    flip: bool = False
    """Horizontal-flip test-time augmentation of the depth task (official --flip)."""
    baseline: bool = True
    """Score the trivial baselines beside the model: constant median training depth, flat ground."""
    lattice_fraction: Optional[float] = None
    """Depth lattice as a fraction of the ray crop (None: the model's, 0.5 = the official 450x800)."""
    depth_only_render: bool = True
    """Render depth from the SDF channel alone (same depth, skips reading colour and semantic channels)."""
    eval_lattice: Literal["pixel_centre", "official"] = "pixel_centre"
    """'official': 450x800 (novel depth 96x200) rays at (j W/w, i H/h) on the ray crop, official read, strict bounds."""
    novel_depth_gt: Literal["own_cameras", "keyframe_lidar2img"] = "own_cameras"
    """Novel-depth truth: a neighbour's LiDAR in its own cameras, or through the keyframe's lidar2img (official)."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in EVAL_TASKS]
        if unknown:
            raise ValueError(f"unknown eval task(s) {unknown}; expected some of {EVAL_TASKS}")
        if self.eval_lattice == "official" and self.lattice_fraction is not None:
            raise ValueError("lattice_fraction sets the pixel-centre lattice; the official lattice has the official "
                             "size (450x800, novel depth 96x200, at 1600 px wide): drop one of the two")
        if self.occupancy_mask not in ("camera", "lidar", "camera_lidar"):
            raise ValueError(f"unknown occupancy mask {self.occupancy_mask!r}; expected camera, lidar or camera_lidar")

    @property
    def needs_depth_baseline(self) -> bool:
        return self.baseline and ("depth" in self.tasks or "novel-depth" in self.tasks)
