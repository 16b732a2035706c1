"""Reading nuScenes through nuscenes-devkit into the metric frame index of `frames.py`."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from selfocc_ns.data.frames import CameraImage, Frame, SceneFrames

LIDAR_CHANNEL = "LIDAR_TOP"


def pose_matrix(rotation_wxyz: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """4x4 float64 transform from a nuScenes (w, x, y, z) quaternion and a translation."""
    from pyquaternion import Quaternion

    pose = np.eye(4)
    pose[:3, :3] = Quaternion(list(rotation_wxyz)).rotation_matrix
    pose[:3, 3] = translation
    return pose


def open_nuscenes(data_dir: Path, version: str, verbose: bool = False):
    """`nuscenes.NuScenes` with clear errors for a missing root or version folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"nuScenes data root not found: {data_dir} (pass --data-dir <nuScenes dataroot>)")
    if not (data_dir / version).is_dir():
        found = sorted(p.name for p in data_dir.glob("v1.0-*") if p.is_dir())
        raise FileNotFoundError(
            f"nuScenes version folder {data_dir / version} not found; --version {version} does not match the data "
            f"(versions found in {data_dir}: {', '.join(found) or 'none'})"
        )
    from nuscenes.nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=str(data_dir.absolute()), verbose=verbose)
    except (AssertionError, KeyError, ValueError, OSError) as err:
        raise ValueError(f"nuscenes-devkit could not load {data_dir / version}: {err!r}") from err


def official_split_name(version: str, split: str) -> str:
    """nerfstudio split -> official nuScenes scene split; nerfstudio's 'test' maps to 'val'."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"Unknown split {split!r}")
    part = "train" if split == "train" else "val"
    if version == "v1.0-mini":
        return "mini_" + part
    if version == "v1.0-trainval":
        return part
    raise ValueError(f"No official scene split for version {version!r}")


def select_scenes(nusc, data: str, version: str, split: str) -> Tuple[List[dict], str]:
    """Scene records for `--data all` (official split) or one named scene, and the split's name."""
    by_name = {scene["name"]: scene for scene in nusc.scene}
    if data == "all":
        from nuscenes.utils.splits import create_splits_scenes

        split_name = official_split_name(version, split)
        wanted = set(create_splits_scenes()[split_name])
        records = [scene for scene in nusc.scene if scene["name"] in wanted]
        if not records:
            raise ValueError(
                f"The official split '{split_name}' has no scene in {nusc.dataroot} ({version}); scenes present: "
                f"{', '.join(sorted(by_name)) or 'none'}"
            )
        return records, split_name
    if data not in by_name:
        raise ValueError(
            f"Unknown scene {data!r} in {nusc.dataroot} ({version}); use --data all or one of: "
            f"{', '.join(sorted(by_name))}"
        )
    return [by_name[data]], f"{data}:{split}"


def _linked_record(nusc, record: dict, link: str, scene_name: str) -> dict:
    """The sample_data `record[link]` ('prev' / 'next') points to, or one error naming both ends."""
    try:
        return nusc.get("sample_data", record[link])
    except KeyError:
        raise ValueError(
            f"sample_data {record[link]} is missing from {nusc.table_root}/sample_data.json: it is the {link} of "
            f"sample_data {record['token']} ({record.get('channel', '?')}, sample {record['sample_token']}, scene "
            f"{scene_name})"
        ) from None


def _channel_chain(nusc, first_token: str, scene_name: str = "?") -> List[dict]:
    """The whole sample_data chain of a sensor (keyframes and sweeps) through `first_token`, in time order."""
    record = nusc.get("sample_data", first_token)
    while record["prev"]:
        record = _linked_record(nusc, record, "prev", scene_name)
    chain = [record]
    while record["next"]:
        record = _linked_record(nusc, record, "next", scene_name)
        chain.append(record)
    return chain


def _require_channels(nusc, sample: dict, channels: Sequence[str], scene_name: str) -> None:
    """Every keyframe needs a sample_data of every selected camera (and the chains start at the first one)."""
    missing = [ch for ch in channels if ch not in sample["data"]]
    if missing:
        raise ValueError(
            f"sample {sample['token']} (scene {scene_name}, timestamp {sample['timestamp']}) has no "
            f"{', '.join(missing)} sample_data in {nusc.table_root}; every keyframe needs all of {', '.join(channels)} "
            "(or select fewer with --cameras)"
        )


def _nearest(chain: List[dict], stamps: List[int], timestamp_us: int, max_offset_us: int) -> Optional[dict]:
    i = bisect.bisect_left(stamps, timestamp_us)
    best = None
    for j in (i - 1, i):
        if 0 <= j < len(chain) and (best is None or abs(stamps[j] - timestamp_us) < abs(best["timestamp"] - timestamp_us)):
            best = chain[j]
    if best is None or abs(best["timestamp"] - timestamp_us) > max_offset_us:
        return None
    return best


class _PoseCache:
    """Shares one array per calibrated_sensor record (hundreds of thousands of images use a few dozen)."""

    def __init__(self, nusc):
        self.nusc = nusc
        self.sensor: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]] = {}

    def calibration(self, token: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if token not in self.sensor:
            cs = self.nusc.get("calibrated_sensor", token)
            intrinsics = np.asarray(cs["camera_intrinsic"], dtype=np.float64) if cs["camera_intrinsic"] else None
            self.sensor[token] = (pose_matrix(cs["rotation"], cs["translation"]), intrinsics)
        return self.sensor[token]

    def ego2global(self, sample_data: dict) -> np.ndarray:
        ego = self.nusc.get("ego_pose", sample_data["ego_pose_token"])
        return pose_matrix(ego["rotation"], ego["translation"])


def _camera_image(
    channel: str, sd: dict, cache: _PoseCache, data_dir: Path, semantics_dir: Optional[Path]
) -> CameraImage:
    cam2ego, intrinsics = cache.calibration(sd["calibrated_sensor_token"])
    if intrinsics is None:
        raise ValueError(f"calibrated_sensor {sd['calibrated_sensor_token']} of {channel} has no camera_intrinsic")
    image_path = data_dir / sd["filename"]
    semantics_path = None
    if semantics_dir is not None:
        candidate = semantics_dir / channel / (Path(sd["filename"]).stem + ".png")
        semantics_path = candidate if candidate.is_file() else None
    return CameraImage(
        channel=channel,
        sample_data_token=sd["token"],
        image_path=image_path,
        timestamp_us=int(sd["timestamp"]),
        width=int(sd["width"]),
        height=int(sd["height"]),
        intrinsics=intrinsics,
        cam2ego=cam2ego,
        ego2global=cache.ego2global(sd),
        semantics_path=semantics_path,
    )


def build_scene_frames(
    nusc,
    scene: dict,
    channels: Tuple[str, ...],
    data_dir: Path,
    include_sweeps: bool,
    max_camera_offset_us: int,
    gts_dir: Optional[Path],
    semantics_dir: Optional[Path],
    skipped: Dict[str, int],
) -> SceneFrames:
    """All frames of one scene along the reference camera's chain (CAM_FRONT when selected).

    Keyframes take the sample's own sample_data of every sensor. A sweep frame takes, per camera, the image
    nearest in time to the reference camera's; frames lacking a camera within `max_camera_offset_us` are left
    out and counted in `skipped`.
    """
    cache = _PoseCache(nusc)
    data_dir = Path(data_dir)
    first_sample = nusc.get("sample", scene["first_sample_token"])
    token = scene["first_sample_token"]
    while token:  # every keyframe has all cameras, before anything is indexed
        _require_channels(nusc, nusc.get("sample", token), channels, scene["name"])
        token = nusc.get("sample", token)["next"]
    chains = {ch: _channel_chain(nusc, first_sample["data"][ch], scene["name"]) for ch in channels}
    lidar_chain = (_channel_chain(nusc, first_sample["data"][LIDAR_CHANNEL], scene["name"])
                   if LIDAR_CHANNEL in first_sample["data"] else [])
    stamps = {ch: [int(sd["timestamp"]) for sd in chain] for ch, chain in chains.items()}
    lidar_stamps = [int(sd["timestamp"]) for sd in lidar_chain]
    reference = "CAM_FRONT" if "CAM_FRONT" in channels else channels[0]
    sample_tokens = set()
    token = scene["first_sample_token"]
    while token:
        sample_tokens.add(token)
        token = nusc.get("sample", token)["next"]

    frames: List[Frame] = []
    for ref_sd in chains[reference]:
        is_key = bool(ref_sd["is_key_frame"]) and ref_sd["sample_token"] in sample_tokens
        if not is_key and not include_sweeps:
            continue
        if is_key:
            sample = nusc.get("sample", ref_sd["sample_token"])
            per_channel = {ch: nusc.get("sample_data", sample["data"][ch]) for ch in channels}
            lidar_sd = nusc.get("sample_data", sample["data"][LIDAR_CHANNEL]) if LIDAR_CHANNEL in sample["data"] else None
        else:
            sample = None
            per_channel = {}
            for ch in channels:
                sd = ref_sd if ch == reference else _nearest(chains[ch], stamps[ch], ref_sd["timestamp"], max_camera_offset_us)
                if sd is None:
                    break
                per_channel[ch] = sd
            if len(per_channel) != len(channels):
                skipped["sweep frames without all cameras"] = skipped.get("sweep frames without all cameras", 0) + 1
                continue
            lidar_sd = _nearest(lidar_chain, lidar_stamps, ref_sd["timestamp"], max_camera_offset_us)
        cameras = {ch: _camera_image(ch, sd, cache, data_dir, semantics_dir) for ch, sd in per_channel.items()}
        frame = Frame(
            scene_name=scene["name"],
            index=len(frames),
            is_keyframe=is_key,
            timestamp_us=int(ref_sd["timestamp"]),
            cameras=cameras,
            sample_token=sample["token"] if sample is not None else None,
        )
        if lidar_sd is not None:
            frame.lidar_path = data_dir / lidar_sd["filename"]
            frame.lidar2ego = cache.calibration(lidar_sd["calibrated_sensor_token"])[0]
            frame.lidar_ego2global = cache.ego2global(lidar_sd)
        if is_key and gts_dir is not None:
            frame.occ_path = gts_dir / scene["name"] / sample["token"] / "labels.npz"
        frames.append(frame)
    return SceneFrames(scene_name=scene["name"], scene_token=scene["token"], frames=frames)
