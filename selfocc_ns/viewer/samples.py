"""Viewer samples: the eval keyframes the selector offers, loading one, and encoding it once.

The viewer shows one eval keyframe at a time: `load_eval_batch` loads it (with its LiDAR and Occ3D truth)
as the datamanager's eval loader would, `encode_sample` decodes its field grid under `no_grad` in eval mode,
and `SelectedSample` caches both with what the layers need (voxel field, LiDAR, ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from selfocc_ns.data.batch import SelfOccBatch
from selfocc_ns.data.frames import Frame, SelfOccIndex
from selfocc_ns.model.field_grid import FieldGrid
from selfocc_ns.viewer.scene import VoxelField


@dataclass
class SelectedSample:
    """The encoded sample the viewer shows."""

    index: int
    """Position in the eval split's `SelfOccIndex.samples`."""
    frame: Frame
    grid: FieldGrid
    """Decoded field (B = 1) in the reference frame of the keyframe, with its SDF gradient grid cached."""
    voxels: VoxelField
    lidar_m: Optional[Tensor]
    """[P, 3] LiDAR points in the ego frame (None without LiDAR)."""
    gt_classes: Optional[Tensor]
    """[200, 200, 16] Occ3D ground truth (None without gts)."""
    encoded_at_step: int
    encode_s: float
    ego2ref: Optional[Tensor] = None
    """[4, 4] the keyframe's ego frame -> the grid's reference frame (None: the same)."""


class SampleCatalogue:
    """The eval keyframes grouped by scene, with the labels the two dropdowns show."""

    def __init__(self, index: SelfOccIndex):
        self.scenes: Dict[str, List[Tuple[str, int]]] = {}
        for sample_index, (s, f) in enumerate(index.samples):
            frame = index.frame(s, f)
            keyframes = self.scenes.setdefault(frame.scene_name, [])
            keyframes.append((f"{len(keyframes)} · {(frame.sample_token or '-')[:8]}", sample_index))
        if not self.scenes:
            raise ValueError("the eval split has no keyframes to show in the viewer")

    def labels(self, scene: str) -> List[str]:
        return [label for label, _ in self.scenes[scene]]

    def sample_index(self, scene: str, label: str) -> int:
        return dict(self.scenes[scene])[label]

    def locate(self, sample_index: int) -> Tuple[str, str]:
        """(scene, keyframe label) of a sample index."""
        for scene, keyframes in self.scenes.items():
            for label, index in keyframes:
                if index == sample_index:
                    return scene, label
        raise KeyError(f"sample {sample_index} is not in the eval split")


def load_eval_batch(datamanager, sample_index: int, device) -> SelfOccBatch:
    """One eval keyframe with its LiDAR and Occ3D truth, loaded in this process.

    What `datamanager.iter_eval_batches([sample_index])` yields, without starting loader worker processes
    (the viewer runs it from a callback thread of a process that also serves the browser).
    """
    from selfocc_ns.data.dataset import collate_samples

    dataset = datamanager.make_dataset("eval", "eval")
    return collate_samples([dataset[(sample_index, 0, 0)]]).to(device)


@torch.no_grad()
def encode_sample(model, batch: SelfOccBatch) -> FieldGrid:
    """`model.encode(batch)` in eval mode (batch norm statistics untouched), SDF gradient cached; B = 1."""
    was_training = model.training
    model.eval()
    try:
        grid = model.encode(batch).select(0)
        grid.sdf_gradient()
    finally:
        model.train(was_training)
    return grid
