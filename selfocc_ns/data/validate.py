"""Start-up validation of a `SelfOccIndex`: what would otherwise fail (or silently mislead) mid-run.

Fast checks (always, before any work; seconds on v1.0-mini, `stat` and header reads only):

- calibration and poses: every camera's intrinsics finite with positive focal lengths, cam2ego / ego2global
  finite with an orthonormal rotation (det 1); LiDAR's lidar2ego / ego pose likewise;
- files: every image, LiDAR sweep (keyframes and sweeps: novel depth reads the sweeps') and Occ3D gt exists;
  a LiDAR file's byte size is a non-zero whole number of points (5 float32 = 20 bytes; a file cut mid-point is
  refused, not read as fewer floats);
- Occ3D gts: `semantics`, `mask_camera` (and `mask_lidar` when present) are (200, 200, 16) with an integer or
  bool dtype, read from the .npy headers inside the .npz (nothing is decompressed beyond the header).

`decode=True` (`--check-files True`) also decodes every JPEG, LiDAR file, labels.npz (values: classes <= 17,
masks 0/1) and 2D label PNG, with a progress bar. All problems are collected and reported together in one
`DataValidationError` (the first `MAX_LISTED` are listed, with the total), each naming its file, scene,
sample and channel.

`label_coverage` counts which frames have 2D labels (keyframes only is common for precomputed label sets).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from selfocc_ns.data.frames import Frame, SceneFrames, SelfOccIndex
from selfocc_ns.data.occ3d import OCC3D_SHAPE

LIDAR_POINT_BYTES = 5 * 4
"""A nuScenes `.pcd.bin` point: x, y, z, intensity, ring index as float32."""
OCC3D_KEYS = ("semantics", "mask_camera", "mask_lidar")
MAX_LISTED = 12
"""Problems listed in the error message (the total is always given)."""
ROTATION_TOLERANCE = 1e-3


class DataValidationError(ValueError):
    """The dataset cannot be trained or evaluated on as it is; the message lists what is wrong and where."""


class MissingDataError(DataValidationError, FileNotFoundError):
    """A `DataValidationError` whose every problem is a missing file (also a FileNotFoundError)."""


@dataclass
class ValidationReport:
    problems: List[str] = field(default_factory=list)
    checked: Dict[str, int] = field(default_factory=dict)
    """How many of each kind of item were checked (images, lidar, gts, labels)."""

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def count(self, kind: str, n: int = 1) -> None:
        self.checked[kind] = self.checked.get(kind, 0) + n

    def raise_if_any(self, what: str) -> None:
        if not self.problems:
            return
        listed = "\n  ".join(self.problems[:MAX_LISTED])
        more = f"\n  ... and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
        kind = MissingDataError if all(p.startswith("Missing ") for p in self.problems) else DataValidationError
        raise kind(f"{len(self.problems)} problem(s) in {what}:\n  {listed}{more}")


def where(scene: SceneFrames, frame: Frame, channel: Optional[str] = None) -> str:
    """'scene X, sample T' (keyframes) or 'scene X, sweep frame i' (+ channel)."""
    at = f"sample {frame.sample_token}" if frame.is_keyframe else f"sweep frame {frame.index}"
    return f"scene {scene.scene_name}, {at}" + (f", {channel}" if channel else "")


def pose_problem(pose: Optional[np.ndarray], name: str) -> Optional[str]:
    """Why a 4x4 rigid transform is unusable (None if it is fine)."""
    if pose is None:
        return None
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        return f"{name} is not finite: {np.array2string(pose, precision=3, separator=',')}"
    rotation = pose[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=ROTATION_TOLERANCE) or abs(np.linalg.det(rotation) - 1) > ROTATION_TOLERANCE:
        return f"{name} has no rotation matrix (R R^T != I or det != 1)"
    return None


def intrinsics_problem(k: np.ndarray) -> Optional[str]:
    k = np.asarray(k, dtype=np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all():
        return f"camera_intrinsic is not finite: {np.array2string(k, precision=3, separator=',')}"
    if k[0, 0] <= 0 or k[1, 1] <= 0:
        return f"camera_intrinsic has focal lengths fx={k[0, 0]}, fy={k[1, 1]} (must be > 0)"
    return None


def lidar_size_problem(path: Path) -> Optional[str]:
    """Missing, empty, or not a whole number of 20-byte points."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"Missing LiDAR file {path}"
    if size == 0 or size % LIDAR_POINT_BYTES:
        return (f"LiDAR file {path} has {size} bytes, not a whole number of {LIDAR_POINT_BYTES}-byte points "
                "(5 float32: truncated or not a .pcd.bin)")
    return None


_HEADER_FIELDS = re.compile(r"'descr':\s*'([^']+)'.*'shape':\s*\(([^)]*)\)", re.S)


def npz_array_headers(path: Path) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the arrays in an .npz, from their .npy headers only.

    The header dict is parsed with a regular expression (numpy's own reader runs `ast.literal_eval`, 3x slower:
    this runs for every keyframe at start-up); a header it cannot parse raises ValueError.
    """
    out = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith(".npy"):
                continue
            with archive.open(name) as handle:
                major, _ = np.lib.format.read_magic(handle)
                size_bytes = 2 if major == 1 else 4
                length = int.from_bytes(handle.read(size_bytes), "little")
                header = handle.read(length).decode("latin1")
            match = _HEADER_FIELDS.search(header)
            if match is None:
                raise ValueError(f"unparsable .npy header of {name}: {header!r}")
            shape = tuple(int(x) for x in match.group(2).replace(" ", "").split(",") if x)
            out[name[: -len(".npy")]] = (shape, np.dtype(match.group(1)))
    return out


def occ3d_problem(path: Path) -> Optional[str]:
    """Why an Occ3D labels.npz cannot be used, from its headers (None if it looks fine)."""
    if not path.is_file():
        return f"Missing Occ3D ground truth {path} (the gts folder exists, so every keyframe needs its labels.npz)"
    try:
        headers = npz_array_headers(path)
    except Exception as err:  # BadZipFile, truncated header, ...
        return f"unreadable Occ3D ground truth {path} ({type(err).__name__}: {err})"
    for key in OCC3D_KEYS:
        if key not in headers:
            if key == "mask_lidar":
                continue
            return f"Occ3D ground truth {path} has no '{key}' (arrays: {sorted(headers)})"
        shape, dtype = headers[key]
        if shape != OCC3D_SHAPE:
            return f"Occ3D ground truth {path}: '{key}' has shape {shape}, expected {OCC3D_SHAPE}"
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            return f"Occ3D ground truth {path}: '{key}' has dtype {dtype}, expected an integer type"
    return None


# ----------------------------------------------------------------------------------------------
# Decoding (--check-files)
# ----------------------------------------------------------------------------------------------


def decode_image_problem(path: Path, expected_wh: Optional[Tuple[int, int]] = None) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            size = img.size
    except Exception as err:
        return f"unreadable image {path} ({type(err).__name__}: {err})"
    if expected_wh is not None and size != expected_wh:
        return f"image {path} is {size[0]}x{size[1]}, the tables say {expected_wh[0]}x{expected_wh[1]}"
    return None


def decode_lidar_problem(path: Path) -> Optional[str]:
    raw = np.fromfile(path, dtype=np.float32)
    if not np.isfinite(raw.reshape(-1, 5)[:, :3]).all():
        return f"LiDAR file {path} has non-finite coordinates"
    return None


def decode_occ3d_problem(path: Path) -> Optional[str]:
    try:
        with np.load(path) as data:
            arrays = {key: np.asarray(data[key]) for key in OCC3D_KEYS if key in data}
    except Exception as err:
        return f"unreadable Occ3D ground truth {path} ({type(err).__name__}: {err})"
    if arrays["semantics"].max() > 17:
        return f"Occ3D ground truth {path}: semantics has class {int(arrays['semantics'].max())} (> 17)"
    for key in ("mask_camera", "mask_lidar"):
        if key in arrays and arrays[key].max() > 1:
            return f"Occ3D ground truth {path}: {key} has values other than 0/1"
    return None


# ----------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------


def _frames(index: SelfOccIndex) -> Iterator[Tuple[SceneFrames, Frame]]:
    for scene in index.scenes:
        for frame in scene.frames:
            yield scene, frame


class _ArrayChecks:
    """Poses and intrinsics gathered over the index, checked in one vectorised pass (14k images take milliseconds);
    the scalar `pose_problem` / `intrinsics_problem` word the message of each failing one."""

    def __init__(self):
        self.poses: List[np.ndarray] = []
        self.pose_items: List[Tuple[str, str]] = []
        self.intrinsics: List[np.ndarray] = []
        self.intrinsics_items: List[str] = []

    def pose(self, pose: Optional[np.ndarray], name: str, at: str) -> None:
        if pose is not None:
            self.poses.append(np.asarray(pose, dtype=np.float64).reshape(4, 4))
            self.pose_items.append((name, at))

    def camera(self, k: np.ndarray, at: str) -> None:
        self.intrinsics.append(np.asarray(k, dtype=np.float64).reshape(3, 3))
        self.intrinsics_items.append(at)

    def problems(self) -> List[str]:
        out = []
        if self.poses:
            poses = np.stack(self.poses)
            finite = np.isfinite(poses).all(axis=(1, 2))
            rotations = np.where(finite[:, None, None], poses[:, :3, :3], np.eye(3))
            orthogonal = np.abs(rotations @ rotations.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2)) <= ROTATION_TOLERANCE
            proper = np.abs(np.linalg.det(rotations) - 1) <= ROTATION_TOLERANCE
            for i in np.flatnonzero(~(finite & orthogonal & proper)):
                name, at = self.pose_items[i]
                out.append(f"{pose_problem(self.poses[i], name)} ({at})")
        if self.intrinsics:
            ks = np.stack(self.intrinsics)
            good = np.isfinite(ks).all(axis=(1, 2)) & (ks[:, 0, 0] > 0) & (ks[:, 1, 1] > 0)
            for i in np.flatnonzero(~good):
                out.append(f"{intrinsics_problem(self.intrinsics[i])} ({self.intrinsics_items[i]})")
        return out


def validate_index(index: SelfOccIndex, decode: bool = False, progress: bool = True) -> ValidationReport:
    """Check every frame of the index (see the module docstring); raises `DataValidationError` listing problems."""
    report = ValidationReport()
    arrays = _ArrayChecks()
    for scene, frame in _frames(index):
        absent = [ch for ch in index.cameras if ch not in frame.cameras]
        if absent:
            report.add(f"no {', '.join(absent)} image ({where(scene, frame)})")
        for cam in frame.cameras.values():
            at = where(scene, frame, cam.channel)
            arrays.camera(cam.intrinsics, at)
            arrays.pose(cam.cam2ego, "calibrated_sensor (cam2ego)", at)
            arrays.pose(cam.ego2global, f"ego_pose of sample_data {cam.sample_data_token}", at)
            if not cam.image_path.is_file():
                report.add(f"Missing image {cam.image_path} ({at}, sample_data {cam.sample_data_token})")
            report.count("images")
        if frame.lidar_path is not None:
            at = where(scene, frame, "LIDAR_TOP")
            problem = lidar_size_problem(frame.lidar_path)
            if problem:
                report.add(f"{problem} ({at})")
            arrays.pose(frame.lidar2ego, "LiDAR calibrated_sensor", at)
            arrays.pose(frame.lidar_ego2global, "LiDAR ego_pose", at)
            report.count("lidar")
        if frame.occ_path is not None:
            problem = occ3d_problem(frame.occ_path)
            if problem:
                report.add(f"{problem} ({where(scene, frame)})")
            report.count("gts")
    for problem in arrays.problems():
        report.add(problem)
    report.raise_if_any(f"the {index.split} split of {index.data_dir}")
    if decode:
        decode_files(index, report, progress)
        report.raise_if_any(f"the files of the {index.split} split of {index.data_dir} (--check-files)")
    return report


def decode_files(index: SelfOccIndex, report: ValidationReport, progress: bool = True) -> None:
    """Decode every file the index names (images, LiDAR, gts, 2D labels), with a progress bar."""
    jobs = []
    for scene, frame in _frames(index):
        for cam in frame.cameras.values():
            jobs.append(("images", cam.image_path, where(scene, frame, cam.channel), (cam.width, cam.height)))
            if cam.semantics_path is not None:
                jobs.append(("labels", cam.semantics_path, where(scene, frame, cam.channel), (cam.width, cam.height)))
        if frame.lidar_path is not None:
            jobs.append(("lidar", frame.lidar_path, where(scene, frame, "LIDAR_TOP"), None))
        if frame.occ_path is not None:
            jobs.append(("gts", frame.occ_path, where(scene, frame), None))
    iterator = jobs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc=f"selfocc --check-files ({index.split})", unit="file")
    for kind, path, at, size in iterator:
        if kind in ("images", "labels"):
            problem = decode_image_problem(path, size)
        elif kind == "lidar":
            problem = decode_lidar_problem(path)
        else:
            problem = decode_occ3d_problem(path)
        if problem:
            report.add(f"{problem} ({at})")
        report.count(f"decoded {kind}")


@dataclass(frozen=True)
class LabelCoverage:
    """Which frames of an index have a 2D label for every camera."""

    keyframes: int
    keyframes_labelled: int
    sweeps: int
    sweeps_labelled: int

    @property
    def frames_labelled(self) -> int:
        return self.keyframes_labelled + self.sweeps_labelled

    @property
    def complete(self) -> bool:
        return self.frames_labelled == self.keyframes + self.sweeps

    def describe(self) -> str:
        return (f"{self.keyframes_labelled} of {self.keyframes} keyframes and {self.sweeps_labelled} of "
                f"{self.sweeps} sweep frames have 2D labels for every camera")


def label_coverage(index: SelfOccIndex) -> LabelCoverage:
    """Count keyframes and sweep frames (not held out) whose every camera has a 2D label."""
    counts = {True: [0, 0], False: [0, 0]}
    for _, frame in _frames(index):
        if frame.held_out:
            continue
        labelled = all(cam.semantics_path is not None for cam in frame.cameras.values())
        counts[frame.is_keyframe][0] += 1
        counts[frame.is_keyframe][1] += int(labelled)
    return LabelCoverage(counts[True][0], counts[True][1], counts[False][0], counts[False][1])


def check_label_coverage(index: SelfOccIndex, strict: bool = False) -> LabelCoverage:
    """Training with 2D labels: refuse when no frame has them (or, `strict`, when some lack them); else warn once."""
    from nerfstudio.utils.rich_utils import CONSOLE

    coverage = label_coverage(index)
    if coverage.frames_labelled == 0:
        raise DataValidationError(
            f"the semantic loss is on but no frame of the {index.split} split has 2D labels "
            "(<semantics-dir>/<CHANNEL>/<image basename>.png; see `selfocc-labels`, or turn the semantic loss off)"
        )
    if not coverage.complete:
        if strict:
            raise DataValidationError(
                f"{coverage.describe()} ({index.split}); --pipeline.datamanager.unlabelled-anchors refuse needs "
                "labels for every anchor frame ('skip' leaves unlabelled anchors out of the semantic loss)"
            )
        CONSOLE.print(
            f"[bold yellow]selfocc warning:[/bold yellow] {coverage.describe()} ({index.split}); anchors without "
            "labels are left out of the semantic loss (--pipeline.datamanager.unlabelled-anchors refuse to stop "
            "instead)", soft_wrap=True, highlight=False,
        )
    return coverage
