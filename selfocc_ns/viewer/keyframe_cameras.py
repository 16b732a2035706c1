"""Rendering an arbitrary nerfstudio camera without the interactive viewer (`ns-render`, scripts).

SelfOcc is feed-forward: a camera can only be rendered from the field of some encoded keyframe. Outside the
viewer (which renders its selected sample), each camera is rendered from the keyframe NEAREST to it:

- every keyframe of both splits contributes its six camera centres in global metres;
- nerfstudio normalises each split into its own world (`dataparser_transform`, `dataparser_scale`; in
  one-scene mode both splits share one), and a camera does not say which it lives in; so the camera centre is
  taken to global metres through each split's world, and the (world, keyframe) pair with the smallest distance
  wins.

So a dataset camera (`ns-render dataset`, any split) is rendered from its own keyframe (distance 0); a spiral
(`ns-render spiral`, around the first eval camera), an interpolated path (`ns-render interpolate`, through the
train or eval cameras) or a camera path drawn in the viewer (`ns-render camera-path`, in the training world,
around the viewer's selected eval keyframe) from the keyframe it passes closest to. Consecutive cameras
mostly share a keyframe: the last few encoded keyframes are cached.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from selfocc_ns.data.frames import Frame, SelfOccIndex
from selfocc_ns.model.field_grid import FieldGrid
from selfocc_ns.viewer.render import (
    ViewerWorld,
    far_distance_m,
    in_reference_frame,
    render_ego_camera,
    single_camera,
    viewer_camera_in_ego,
    viewer_outputs,
)

SPLITS = ("train", "eval")


@dataclass(frozen=True)
class KeyframeChoice:
    """Which keyframe renders a camera, and in which split's world the camera was read."""

    split: str
    """'train' or 'eval': the split of the keyframe."""
    sample_index: int
    """Position of the keyframe in that split's `SelfOccIndex.samples`."""
    world_split: str
    """The split whose normalised world the camera was read in."""
    distance_m: float
    """Distance from the camera centre to the nearest camera centre of the keyframe."""


def keyframe_camera_centres(index: SelfOccIndex) -> Tuple[np.ndarray, np.ndarray]:
    """([K * N, 3] global camera centres in metres, [K * N] sample index of each) of an index's keyframes."""
    centres, owners = [], []
    for sample_index in range(len(index.samples)):
        frame = index.sample_frame(sample_index)
        for cam in frame.cameras.values():
            centres.append(cam.cam2global[:3, 3])
            owners.append(sample_index)
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3), np.asarray(owners, dtype=np.int64)


def nearest_keyframe(c2w_ns: np.ndarray, worlds: Dict[str, ViewerWorld],
                     centres: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> KeyframeChoice:
    """The (world, keyframe) pair nearest to a [3, 4] normalised camera pose (see the module docstring)."""
    best = None
    for world_split, world in worlds.items():
        position = world.global_from_nerfstudio(c2w_ns)[:3, 3]
        for split, (points, owners) in centres.items():
            if len(points) == 0:
                continue
            distances = np.linalg.norm(points - position, axis=-1)
            i = int(np.argmin(distances))
            candidate = KeyframeChoice(split, int(owners[i]), world_split, float(distances[i]))
            if best is None or candidate.distance_m < best.distance_m:
                best = candidate
    if best is None:
        raise ValueError("no keyframe to render a camera from (both splits are empty)")
    return best


class KeyframeCameraRenderer:
    """Renders nerfstudio cameras from their nearest keyframe's field (the model's hook outside the viewer)."""

    def __init__(self, pipeline, chunk_rays: Optional[int] = None, cache_size: int = 8):
        dm = pipeline.datamanager
        self.pipeline = pipeline
        self.chunk_rays = chunk_rays
        self.indices: Dict[str, SelfOccIndex] = {"train": dm.train_index, "eval": dm.eval_index}
        self.worlds = {"train": ViewerWorld.from_dataparser_outputs(dm.train_dataparser_outputs),
                       "eval": ViewerWorld.from_dataparser_outputs(dm.eval_dataparser_outputs)}
        self.centres = {split: keyframe_camera_centres(index) for split, index in self.indices.items()}
        self.cache_size = cache_size
        self._grids: "OrderedDict[Tuple[str, int], Tuple[FieldGrid, Tensor]]" = OrderedDict()
        self.choices: List[KeyframeChoice] = []
        """Every choice made, in order (for reports and tests)."""

    def frame(self, choice: KeyframeChoice) -> Frame:
        return self.indices[choice.split].sample_frame(choice.sample_index)

    def grid(self, split: str, sample_index: int) -> Tuple[FieldGrid, Tensor]:
        """(decoded field, ego2ref) of a keyframe of a split (encoded once, kept among the last `cache_size`)."""
        from selfocc_ns.data.dataset import collate_samples
        from selfocc_ns.viewer.samples import encode_sample

        key = (split, sample_index)
        if key not in self._grids:
            dataset = self.pipeline.datamanager.make_dataset(split, "eval")
            model = self.pipeline.model
            batch = collate_samples([dataset[(sample_index, 0, 0)]]).to(model.device)
            self._grids[key] = (encode_sample(model, batch), batch.ego2ref_of(0))
            while len(self._grids) > self.cache_size:
                self._grids.popitem(last=False)
        self._grids.move_to_end(key)
        return self._grids[key]

    def choose(self, camera) -> KeyframeChoice:
        c2w_ns, _, _ = single_camera(camera)
        choice = nearest_keyframe(c2w_ns, self.worlds, self.centres)
        self.choices.append(choice)
        return choice

    @torch.no_grad()
    def __call__(self, camera) -> Dict[str, Tensor]:
        """rgb / depth / accumulation / ... [H, W, C] of one nerfstudio camera."""
        choice = self.choose(camera)
        grid, ego2ref = self.grid(choice.split, choice.sample_index)
        world = self.worlds[choice.world_split]
        view = in_reference_frame(viewer_camera_in_ego(camera, world, self.frame(choice).ref_ego2global), ego2ref)
        render = render_ego_camera(self.pipeline.model, grid, view, self.chunk_rays)
        return viewer_outputs(render, far_distance_m(grid, view), world.scale,
                              self.pipeline.model.semantic_label_space)
