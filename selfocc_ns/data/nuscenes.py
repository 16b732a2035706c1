"""The `nuscenes-data` dataparser: nerfstudio's built-in, extended for surround-view SelfOcc.

Registered under the built-in's name, so it serves every method. It keeps the built-in's flags and,
for `--data <scene> --cameras FRONT`, returns the very same normalised `Cameras` (poses to float
precision, same split), so per-scene methods such as nerfacto keep working. It extends them:

- `--cameras` defaults to all six, `--data all` (default) takes every scene of the official split
  (`nuscenes.utils.splits`: train/val for v1.0-trainval, mini_train/mini_val for v1.0-mini; nerfstudio's
  "test" split maps to val);
- everything SelfOcc needs is metric and goes in `metadata["selfocc"]` (a `SelfOccIndex`): per frame
  (keyframes and sweeps) the ego poses, cam2ego, intrinsics, timestamps, image/LiDAR paths, Occ3D gts
  and 2D label paths.

Differences from the built-in, on purpose: image height/width are read from the data (the built-in
hard-codes 900x1600, which is what real nuScenes has), and `dataparser_transform`/`dataparser_scale`
record the normalisation the built-in applies without recording it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataparserOutputs
from nerfstudio.data.dataparsers.nuscenes_dataparser import NuScenesDataParserConfig
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from selfocc_ns.data.frames import CameraImage, SceneFrames, SelfOccIndex
from selfocc_ns.data.nuscenes_index import build_scene_frames, open_nuscenes, select_scenes

CameraName = Literal["FRONT", "FRONT_LEFT", "FRONT_RIGHT", "BACK", "BACK_LEFT", "BACK_RIGHT"]

# The built-in's world rotation, decomposed: OpenCV camera -> nerfstudio, then z-up for the viewer.
_T1 = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
_T2 = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
_ROW_SWAP_FLIP = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]], dtype=np.float64)
GLOBAL_TO_NERFSTUDIO = _T2 @ _ROW_SWAP_FLIP @ _T1
"""Rotation the built-in applies on the world side of every camera pose (before centring/scaling)."""
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])
"""Right-multiplied onto a camera pose: OpenCV camera axes -> OpenGL (nerfstudio) camera axes."""


@dataclass
class SelfOccNuScenesDataParserConfig(NuScenesDataParserConfig):
    """nuScenes for SelfOcc: six cameras, keyframes and sweeps, official splits, Occ3D gts and 2D labels.

    Compatible with nerfstudio's built-in `nuscenes-data` (same flags and, for one scene and one camera,
    the same cameras); see the module docstring for what it adds.
    """

    _target: Type = field(default_factory=lambda: SelfOccNuScenes)
    data: Path = Path("all")
    """Scene name (e.g. scene-0061: one scene, keyframes split by --train-split-fraction as the built-in does)
    or 'all' (every scene of the official split)."""
    data_dir: Path = Path("/mnt/local/NuScenes")
    """Path to the nuScenes dataroot (holds samples/, sweeps/, maps/ and the version folder)."""
    version: Literal["v1.0-mini", "v1.0-trainval"] = "v1.0-mini"
    """Dataset version."""
    cameras: Tuple[CameraName, ...] = ("FRONT", "FRONT_RIGHT", "FRONT_LEFT", "BACK", "BACK_LEFT", "BACK_RIGHT")
    """Which cameras to use (SelfOcc needs all six; per-scene methods may use one)."""
    include_sweeps: bool = True
    """Index the non-keyframe camera images too (SelfOcc draws anchor and source frames among them)."""
    gts_dir: Optional[Path] = None
    """Occ3D-nuScenes ground truth, laid out <gts-dir>/<scene>/<sample_token>/labels.npz. Default:
    <data-dir>/gts if it exists. If the folder exists, every keyframe of the split must have its file."""
    semantics_dir: Optional[Path] = None
    """2D label PNGs, laid out <semantics-dir>/<CHANNEL>/<image basename>.png (Occ3D ids, 17 sky, 255 ignore).
    Default: <data-dir>/semantics if it exists."""
    max_camera_offset_ms: float = 60.0
    """A sweep frame groups, per camera, the image nearest in time to CAM_FRONT's; farther than this it is
    left out (and counted)."""
    validate: bool = True
    """Check at start-up: finite poses, six cameras, every file present, LiDAR sizes, gts shapes (docs/robustness.md)."""
    check_files: bool = False
    """Also decode every image, LiDAR file, Occ3D gt and 2D label at start-up (progress bar; minutes on trainval)."""


class SelfOccNuScenes(DataParser):
    """Builds `DataparserOutputs` (built-in-compatible cameras) plus the metric `SelfOccIndex`."""

    config: SelfOccNuScenesDataParserConfig

    def _database(self):
        """The devkit database, loaded once per parser (train and eval splits share it; trainval takes ~a minute)."""
        key = (str(self.config.data_dir), self.config.version)
        if getattr(self, "_nusc_key", None) != key:
            self._nusc = open_nuscenes(self.config.data_dir, self.config.version, verbose=self.config.verbose)
            self._nusc_key = key
        return self._nusc

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        if split not in ("train", "val", "test"):
            raise ValueError(f"Unknown dataparser split {split!r} (expected train, val or test)")
        cfg = self.config
        channels = tuple("CAM_" + name for name in cfg.cameras)
        if len(set(channels)) != len(channels):
            raise ValueError(f"--cameras lists a camera twice: {cfg.cameras}")
        nusc = self._database()
        scene_records, split_name = select_scenes(nusc, str(cfg.data), cfg.version, split)
        gts_dir = _default_dir(cfg.gts_dir, cfg.data_dir / "gts")
        semantics_dir = _default_dir(cfg.semantics_dir, cfg.data_dir / "semantics")

        skipped: Dict[str, int] = {}
        scenes: List[SceneFrames] = []
        for record in scene_records:
            scenes.append(
                build_scene_frames(
                    nusc,
                    record,
                    channels,
                    data_dir=cfg.data_dir,
                    include_sweeps=cfg.include_sweeps,
                    max_camera_offset_us=int(cfg.max_camera_offset_ms * 1000),
                    gts_dir=gts_dir,
                    semantics_dir=semantics_dir,
                    skipped=skipped,
                )
            )

        # Keyframes of every selected scene, in the built-in's order (scene token, timestamp).
        keyframes: List[Tuple[int, int]] = [
            (s, f.index) for s, scene in enumerate(scenes) for f in scene.frames if f.is_keyframe
        ]
        keyframes.sort(key=lambda sf: (scenes[sf[0]].scene_token, scenes[sf[0]].frames[sf[1]].timestamp_us))
        if not keyframes:
            raise ValueError(f"No keyframes in {cfg.data_dir} ({cfg.version}) for --data {cfg.data}, split {split}")

        poses = _nerfstudio_poses(scenes, keyframes, channels)  # (K * cams, 4, 4), built-in arithmetic
        translation = poses[:, :3, 3]
        centre = translation.mean(dim=0)
        translation -= centre
        scale_factor = 1.0 / float(translation.abs().max())
        translation *= scale_factor

        selected = _split_snapshots(len(keyframes), cfg.train_split_fraction, split, str(cfg.data) == "all")
        indices = (np.asarray(selected)[None, :] * len(channels) + np.arange(len(channels))[:, None]).ravel()
        if len(indices) == 0:
            raise ValueError(
                f"The {split} split of --data {cfg.data} is empty (--train-split-fraction {cfg.train_split_fraction}"
                f" leaves no {split} keyframes among {len(keyframes)})"
            )
        images: List[CameraImage] = []
        for i in indices:
            s, f = keyframes[i // len(channels)]
            images.append(scenes[s].frames[f].cameras[channels[i % len(channels)]])

        if cfg.validate or cfg.check_files:
            _validate(scenes, channels, cfg, split_name)

        samples = [keyframes[i] for i in sorted(set(int(i) for i in selected))]
        samples.sort()
        index = SelfOccIndex(
            scenes=scenes,
            samples=samples,
            cameras=channels,
            data_dir=cfg.data_dir,
            version=cfg.version,
            split=split_name,
            skipped=skipped,
        )
        if str(cfg.data) != "all":
            index = _hold_out_other_keyframes(index, [keyframes[i] for i in selected])

        intrinsics = torch.from_numpy(np.stack([im.intrinsics for im in images]).astype(np.float32))
        cameras = Cameras(
            fx=intrinsics[:, 0, 0].clone(),
            fy=intrinsics[:, 1, 1].clone(),
            cx=intrinsics[:, 0, 2].clone(),
            cy=intrinsics[:, 1, 2].clone(),
            height=torch.tensor([[im.height] for im in images], dtype=torch.int64),
            width=torch.tensor([[im.width] for im in images], dtype=torch.int64),
            camera_to_worlds=poses[torch.from_numpy(indices), :3, :4],
            camera_type=CameraType.PERSPECTIVE,
        )
        mask_filenames = None
        if cfg.mask_dir is not None:
            mask_filenames = [
                cfg.mask_dir / "masks" / im.channel / im.image_path.with_suffix(".png").name for im in images
            ]
        transform = torch.zeros(3, 4)
        transform[:, :3] = torch.from_numpy(GLOBAL_TO_NERFSTUDIO[:3, :3]).float()
        transform[:, 3] = -centre
        return DataparserOutputs(
            image_filenames=[im.image_path for im in images],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])),
            mask_filenames=mask_filenames,
            metadata={"selfocc": index},
            dataparser_transform=transform,
            dataparser_scale=scale_factor,
        )


def _default_dir(flag: Optional[Path], default: Path) -> Optional[Path]:
    if flag is not None:
        if not flag.is_dir():
            raise FileNotFoundError(f"Folder given on the command line does not exist: {flag}")
        return flag
    return default if default.is_dir() else None


def _nerfstudio_poses(
    scenes: List[SceneFrames], keyframes: List[Tuple[int, int]], channels: Tuple[str, ...]
) -> torch.Tensor:
    """Camera-to-world poses exactly as nerfstudio's built-in computes them (before centring/scaling)."""
    poses = []
    for s, f in keyframes:
        for channel in channels:
            cam2global = scenes[s].frames[f].cameras[channel].cam2global
            poses.append(GLOBAL_TO_NERFSTUDIO @ cam2global @ OPENCV_TO_OPENGL)
    return torch.from_numpy(np.stack(poses).astype(np.float32))


def _split_snapshots(num_snapshots: int, train_fraction: float, split: str, all_scenes: bool) -> np.ndarray:
    """Keyframe positions of the split. With --data all the scene list already is the split."""
    if all_scenes:
        return np.arange(num_snapshots)
    num_train = math.ceil(num_snapshots * train_fraction)
    i_train = np.linspace(0, num_snapshots - 1, num_train, dtype=int)  # as the built-in: ends included
    if split == "train":
        return i_train
    return np.setdiff1d(np.arange(num_snapshots), i_train)


def _hold_out_other_keyframes(index: SelfOccIndex, kept: List[Tuple[int, int]]) -> SelfOccIndex:
    """In one-scene mode, keyframes of the other split may not serve as anchors or sources.

    They stay in the frame lists (indices must not shift) but are marked so the samplers skip them.
    """
    kept_set = set(kept)
    for s, scene in enumerate(index.scenes):
        for frame in scene.frames:
            frame.held_out = frame.is_keyframe and (s, frame.index) not in kept_set
    return index


def _validate(scenes: List[SceneFrames], channels: Tuple[str, ...], cfg: SelfOccNuScenesDataParserConfig,
              split_name: str) -> None:
    """Start-up validation of every frame of the selected scenes (`selfocc_ns.data.validate`), timed."""
    import time

    from nerfstudio.utils.rich_utils import CONSOLE

    from selfocc_ns.data.validate import validate_index

    start = time.perf_counter()
    index = SelfOccIndex(scenes=scenes, samples=[], cameras=channels, data_dir=cfg.data_dir, version=cfg.version,
                         split=split_name)
    report = validate_index(index, decode=cfg.check_files)
    checked = ", ".join(f"{n} {kind}" for kind, n in report.checked.items())
    CONSOLE.print(f"selfocc: {split_name} data validated ({checked}) in {time.perf_counter() - start:.2f} s",
                  soft_wrap=True)


nuscenes_dataparser = DataParserSpecification(
    config=SelfOccNuScenesDataParserConfig(),
    description="nuScenes for SelfOcc (6 cameras, sweeps, official splits, Occ3D); built-in compatible",
)
