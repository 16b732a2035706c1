"""The metric frame index SelfOcc trains on: what the dataparser puts in `metadata["selfocc"]`.

Everything here is metric and in nuScenes conventions: global frame in metres, ego frame x forward,
y left, z up, cameras OpenCV (x right, y down, z forward). Poses are 4x4 float64 numpy arrays.

A *frame* is one instant of the surround rig: six camera images (keyframe or sweep) and, when there
is one, a LiDAR sweep. Frames are grouped along the CAM_FRONT sample_data chain; the other cameras'
images are those nearest in time (in real nuScenes the six cameras fire up to ~40 ms apart, so every
camera keeps its own ego pose). The *reference* ego frame of a keyframe is the ego pose of its
LIDAR_TOP sample_data, as for Occ3D; a sample's *reference frame* (`reference_pose`) is that ego frame or the
LIDAR_TOP sensor frame of the same sample_data, by config (docs/architecture.md, "Frames and units").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np

ReferenceFrame = Literal["ego", "lidar"]
"""The frame a sample's geometry is expressed in: the keyframe's LiDAR ego pose, or its LIDAR_TOP sensor frame."""

CAMERA_CHANNELS: Tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
"""nuScenes camera channels, in the order the six-camera rig is stacked (nuScenes / SelfOcc order)."""


@dataclass
class CameraImage:
    """One camera image of a frame."""

    channel: str
    """nuScenes channel, e.g. CAM_FRONT."""
    sample_data_token: str
    image_path: Path
    """Absolute path of the JPEG."""
    timestamp_us: int
    width: int
    height: int
    intrinsics: np.ndarray
    """3x3 pinhole matrix in pixels of the stored image."""
    cam2ego: np.ndarray
    """4x4 camera (OpenCV) to ego at this image's own timestamp (calibrated_sensor)."""
    ego2global: np.ndarray
    """4x4 ego pose of this image's own sample_data."""
    semantics_path: Optional[Path] = None
    """2D label PNG (Occ3D ids, 17 sky, 255 ignore) if the labels folder has one."""

    @property
    def cam2global(self) -> np.ndarray:
        return self.ego2global @ self.cam2ego


@dataclass
class Frame:
    """One instant of the six-camera rig (keyframe or sweep), optionally with its LiDAR sweep."""

    scene_name: str
    index: int
    """Position of the frame in its scene's time-ordered frame list."""
    is_keyframe: bool
    timestamp_us: int
    """CAM_FRONT timestamp."""
    cameras: Dict[str, CameraImage]
    """Keyed by channel, for the dataparser's cameras."""
    sample_token: Optional[str] = None
    """The nuScenes sample token for keyframes, else None."""
    lidar_path: Optional[Path] = None
    lidar2ego: Optional[np.ndarray] = None
    lidar_ego2global: Optional[np.ndarray] = None
    """Ego pose of the LIDAR_TOP sample_data: the reference ego frame of a keyframe."""
    occ_path: Optional[Path] = None
    """Occ3D labels.npz of a keyframe, if there is a gts folder."""
    held_out: bool = False
    """A keyframe of the other split (one-scene mode): never drawn as anchor or source."""

    @property
    def front_position(self) -> np.ndarray:
        """Global position (3,) of CAM_FRONT (or the first camera), used for all frame distances."""
        cam = self.cameras.get("CAM_FRONT") or next(iter(self.cameras.values()))
        return cam.cam2global[:3, 3]

    @property
    def front_ego_position(self) -> np.ndarray:
        """Global position (3,) of the ego at the CAM_FRONT (or first camera) image's time: official frame distances."""
        cam = self.cameras.get("CAM_FRONT") or next(iter(self.cameras.values()))
        return cam.ego2global[:3, 3]

    @property
    def ref_ego2global(self) -> np.ndarray:
        """Reference ego pose of this frame: LiDAR's ego pose when there is one, else CAM_FRONT's."""
        if self.lidar_ego2global is not None:
            return self.lidar_ego2global
        cam = self.cameras.get("CAM_FRONT") or next(iter(self.cameras.values()))
        return cam.ego2global


def reference_pose(frame: Frame, reference_frame: ReferenceFrame) -> np.ndarray:
    """ref2global (4x4) of a keyframe: its `ref_ego2global` ("ego") or its LIDAR_TOP sensor pose
    lidar_ego2global @ lidar2ego ("lidar", the official depth / novel-depth frame)."""
    if reference_frame == "ego":
        return frame.ref_ego2global
    if reference_frame != "lidar":
        raise ValueError(f"reference_frame must be 'ego' or 'lidar', not {reference_frame!r}")
    if frame.lidar_ego2global is None or frame.lidar2ego is None:
        raise ValueError(f"reference_frame 'lidar' needs the LIDAR_TOP pose of every keyframe; scene "
                         f"{frame.scene_name}, sample {frame.sample_token} has none")
    return frame.lidar_ego2global @ frame.lidar2ego


@dataclass
class SceneFrames:
    """All frames of one scene, in time order."""

    scene_name: str
    scene_token: str
    frames: List[Frame]


@dataclass
class SelfOccIndex:
    """What the dataparser hands the datamanager in `metadata["selfocc"]` for one split."""

    scenes: List[SceneFrames]
    samples: List[Tuple[int, int]]
    """(scene index, frame index) of every input keyframe of the split, in order."""
    cameras: Tuple[str, ...]
    """The channels of every frame, in rig order."""
    data_dir: Path
    version: str
    split: str
    skipped: Dict[str, int] = field(default_factory=dict)
    """What was left out and how many (e.g. sweeps with no match in another camera), for reporting."""

    def frame(self, scene_idx: int, frame_idx: int) -> Frame:
        return self.scenes[scene_idx].frames[frame_idx]

    def sample_frame(self, sample_idx: int) -> Frame:
        s, f = self.samples[sample_idx]
        return self.scenes[s].frames[f]


@dataclass
class Neighbour:
    frame_index: int
    distance_m: float
    """Distance between the two frames: CAM_FRONT centres (`neighbours`), ego at CAM_FRONT (`official_neighbours`)."""


def neighbours(
    frames: Sequence[Frame], index: int, min_dist_m: float, max_dist_m: float
) -> Tuple[List[Neighbour], List[Neighbour]]:
    """Frames before and after `frames[index]` whose CAM_FRONT lies in [min_dist_m, max_dist_m] of its own.

    Returns (previous, next), each in time order (previous: oldest first). This is the neighbour
    list of the official `nuScenes_One_Frame_Sweeps_Dist`: the anchor draw picks among keyframes and
    sweeps of both lists, the source draw among the anchor's own lists.
    """
    centre = frames[index].front_position
    prev: List[Neighbour] = []
    nxt: List[Neighbour] = []
    for j, other in enumerate(frames):
        if j == index or other.held_out:
            continue
        d = float(np.linalg.norm(other.front_position - centre))
        if min_dist_m <= d <= max_dist_m:
            (prev if j < index else nxt).append(Neighbour(j, d))
    return prev, nxt


def official_neighbours(
    frames: Sequence[Frame], index: int, min_dist_m: float, max_dist_m: float
) -> Tuple[List[Neighbour], List[Neighbour]]:
    """The official neighbour lists of `frames[index]` (`nuScenes_One_Frame_Sweeps_Dist`, train: strict).

    Distance = between the ego positions at the two frames' CAM_FRONT images (`front_ego_position`). Each side
    is scanned from the frame outwards and stops at the first frame farther than `max_dist_m`; frames farther
    than `min_dist_m` (strict) are kept. Both lists are nearest in time first. Held-out frames are skipped.
    """
    centre = frames[index].front_ego_position
    sides: Tuple[List[Neighbour], List[Neighbour]] = ([], [])
    for side, scan in zip(sides, (range(index - 1, -1, -1), range(index + 1, len(frames)))):
        for j in scan:
            if frames[j].held_out:
                continue
            d = float(np.linalg.norm(frames[j].front_ego_position - centre))
            if d > max_dist_m:
                break
            if d > min_dist_m:
                side.append(Neighbour(j, d))
    return sides
