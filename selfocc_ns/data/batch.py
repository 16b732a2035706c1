"""The batch the datamanager yields and the model consumes (docs/architecture.md).

All poses are expressed in the reference frame of the input keyframe t (metres): its LiDAR ego pose (x
forward, y left, z up) or its LIDAR_TOP sensor frame, by the datamanager's `reference_frame`; `ego2ref` maps
the ego frame into it (identity for "ego"). The `*cam2ego` names keep "ego" for that reference frame. Cameras
are OpenCV (x right, y down, z forward). Intrinsics always refer to the pixel grid of the image tensor they
travel with (crop and scale already applied).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class NovelViews:
    """Other frames of the input keyframe's neighbour lists, for novel-depth evaluation (eval only)."""

    intrinsics: Float[Tensor, "V N 3 3"]
    """Of the lattice-resolution crop the depth is rendered on, per frame V and camera N."""
    cam2ego: Float[Tensor, "V N 4 4"]
    lidar_points: List[Float[Tensor, "P 3"]]
    """Each frame's LiDAR points, in the reference frame of t."""
    distance_m: Float[Tensor, "V"]
    """Distance between the CAM_FRONT centres of that frame and of t."""
    image_hw: tuple = (0, 0)
    """(H, W) of the crop the intrinsics refer to."""
    lidar2ref: Optional[Float[Tensor, "V 4 4"]] = None
    """Each frame's LIDAR_TOP sensor frame -> the reference frame of t (how `lidar_points` were mapped)."""
    keyframe_lidar2ref: Optional[Float[Tensor, "4 4"]] = None
    """t's own LIDAR_TOP sensor frame -> its reference frame (NaN without LiDAR)."""


@dataclass
class SelfOccBatch:
    """One batch of B input keyframes (B = 1 per device is the normal case).

    Training fills the anchor/source fields; evaluation fills `lidar_points`, `occ_*` and
    `novel`. `to(device)` moves every tensor.
    """

    images: Float[Tensor, "B N 3 h w"]
    """Input keyframe t, cropped then scaled by `scale_rate` for the network, in [0, 1]."""
    intrinsics: Float[Tensor, "B N 3 3"]
    """Of `images` (crop and scale applied)."""
    cam2ego: Float[Tensor, "B N 4 4"]
    """Input cameras in the reference frame of t."""

    anchor_images: Float[Tensor, "B N 3 H W"]
    """The anchor frame's images (unscaled crop): rays, RGB and reprojection targets."""
    anchor_intrinsics: Float[Tensor, "B N 3 3"]
    anchor_cam2ego: Float[Tensor, "B N 4 4"]

    source_images: Optional[Float[Tensor, "B 2 N 3 H W"]] = None
    """Per camera the previous (0) and next (1) source frame of the anchor (unscaled crop)."""
    source_intrinsics: Optional[Float[Tensor, "B 2 N 3 3"]] = None
    source_cam2ego: Optional[Float[Tensor, "B 2 N 4 4"]] = None

    semantics: Optional[Int[Tensor, "B N H W"]] = None
    """2D labels of the anchor images, model's label space (Occ3D 0..16 + 17 sky, or OpenSeeD 0..20), 255 ignore."""

    lidar_points: Optional[List[Float[Tensor, "P 3"]]] = None
    """Per batch item, LiDAR points of t in the reference frame of t (eval)."""
    occ_semantics: Optional[Int[Tensor, "B 200 200 16"]] = None
    occ_mask_camera: Optional[Int[Tensor, "B 200 200 16"]] = None
    occ_mask_lidar: Optional[Int[Tensor, "B 200 200 16"]] = None
    """Occ3D's LiDAR visibility mask (None when the gts have no `mask_lidar`)."""
    novel: Optional[List[NovelViews]] = None

    anchor_is_current: Optional[Tensor] = None
    """(B,) bool: the anchor is the input keyframe itself."""
    ego2ref: Optional[Float[Tensor, "B 4 4"]] = None
    """t's ego frame (Occ3D gts) -> its reference frame; None means identity (a hand-built batch)."""
    scene_names: List[str] = field(default_factory=list)
    sample_tokens: List[str] = field(default_factory=list)
    step: int = 0
    """Training step the batch was drawn for (with `rank`, seeds the model's ray lattices and jitter)."""
    rank: int = 0
    """Global rank that drew it."""
    info: Dict[str, Any] = field(default_factory=dict)
    """Bookkeeping for logs and tests: frame indices, source frames, sampling fallback counters."""

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_cameras(self) -> int:
        return int(self.images.shape[1])

    def ego2ref_of(self, item: int) -> Tensor:
        """`ego2ref` of one batch item (4x4, identity when the batch carries none)."""
        if self.ego2ref is None:
            return torch.eye(4, dtype=self.cam2ego.dtype, device=self.cam2ego.device)
        return self.ego2ref[item]

    def to(self, device: torch.device | str) -> "SelfOccBatch":
        """A copy with every tensor (also inside lists and NovelViews) on `device`."""

        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.to(device, non_blocking=True)
            if isinstance(value, list):
                return [move(v) for v in value]
            if isinstance(value, NovelViews):
                return NovelViews(**{f.name: move(getattr(value, f.name)) for f in fields(value)})
            return value

        return SelfOccBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})
