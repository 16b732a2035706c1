"""Loading one SelfOcc sample: images cropped and scaled, poses in the input keyframe's ego frame.

Crops are fractions of the image height kept from the top (official: 768/900), so they apply at any
resolution; the network input is the crop scaled by `scale_rate`; anchor and source images stay at the
unscaled crop (rays, losses and SSIM use it). Pixel convention everywhere: pixel (i, j) covers
[j, j + 1) x [i, i + 1) and its centre is (j + 0.5, i + 0.5), as in nerfstudio, so scaling an image by s
scales its intrinsics' first two rows by s exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from selfocc_ns.data.batch import NovelViews, SelfOccBatch
from selfocc_ns.data.frames import CameraImage, Frame, SelfOccIndex, neighbours
from selfocc_ns.data.occ3d import IGNORE_ID, load_labels
from selfocc_ns.data.sampling import FrameSamplingConfig, draw_anchor, draw_sources, step_generator


@dataclass(frozen=True)
class ImageGeometryConfig:
    input_crop_fraction: float = 768 / 900
    """Fraction of the image height, from the top, the network sees (official occ: 768/900)."""
    ray_crop_fraction: float = 768 / 900
    """Fraction of the image height, from the top, that rays/losses use (official depth preset: 1.0)."""
    scale_rate: float = 0.5
    """Network input = input crop scaled by this (official 0.5)."""


def crop_height(height: int, fraction: float) -> int:
    return max(1, int(round(height * fraction)))


def load_rgb(path: Path, what: str) -> Image.Image:
    """Open an image as RGB or raise one error naming the file and its sample."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Missing image {path} ({what})") from err
    except Exception as err:  # PIL raises many types for truncated/corrupt files
        raise OSError(f"Unreadable image {path} ({what}): {err}") from err


def image_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def crop_and_scale(
    img: Image.Image, intrinsics: np.ndarray, crop_fraction: float, scale: float = 1.0
) -> Tuple[Image.Image, np.ndarray]:
    """Keep the top `crop_fraction` of the rows, then resize by `scale`; intrinsics follow."""
    width, height = img.size
    img = img.crop((0, 0, width, crop_height(height, crop_fraction)))
    k = intrinsics.copy()
    if scale != 1.0:
        new_w, new_h = max(1, int(round(width * scale))), max(1, int(round(img.size[1] * scale)))
        k[0] *= new_w / width
        k[1] *= new_h / img.size[1]
        img = img.resize((new_w, new_h), Image.BILINEAR)
    return img, k


def load_lidar_points(path: Path, what: str) -> np.ndarray:
    """(P, 3) float32 xyz of a nuScenes `.pcd.bin` (5 float32 per point), in the LiDAR frame."""
    try:
        raw = np.fromfile(path, dtype=np.float32)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Missing LiDAR file {path} ({what})") from err
    size = Path(path).stat().st_size
    if size % 20 != 0:  # bytes, not floats: a file cut mid-float still reads as whole floats
        raise ValueError(f"Unreadable LiDAR file {path} ({what}): {size} bytes is not a whole number of "
                         "20-byte points (5 float32)")
    return raw.reshape(-1, 5)[:, :3]


def transform_points(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ pose[:3, :3].T + pose[:3, 3]


class SelfOccSampleDataset(torch.utils.data.Dataset):
    """Items are (sample index, step, item) tuples from `StepSampler`; the draws are seeded from them."""

    def __init__(
        self,
        index: SelfOccIndex,
        geometry: ImageGeometryConfig,
        sampling: FrameSamplingConfig,
        mode: str = "train",
        use_semantics: bool = False,
        seed: int = 42,
        rank: int = 0,
        novel_views: bool = False,
        skip_unlabelled: bool = False,
    ):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval, not {mode!r}")
        self.index = index
        self.geometry = geometry
        self.sampling = sampling
        self.mode = mode
        self.use_semantics = use_semantics
        self.seed = seed
        self.rank = rank
        self.novel_views = novel_views
        self.skip_unlabelled = skip_unlabelled
        """An anchor image without a 2D label gets all-ignore labels (left out of the semantic loss) instead of an error."""

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, key) -> Dict[str, Any]:
        sample_idx, step, item = key if isinstance(key, tuple) else (key, 0, 0)
        scene_idx, t = self.index.samples[sample_idx]
        frames = self.index.scenes[scene_idx].frames
        frame = frames[t]
        what = f"scene {frame.scene_name}, sample {frame.sample_token}"
        ref_inv = np.linalg.inv(frame.ref_ego2global)
        channels = self.index.cameras
        counters: Dict[str, int] = {}

        out: Dict[str, Any] = {"scene_name": frame.scene_name, "sample_token": frame.sample_token or ""}
        images, ks, poses = self._cameras(frame, ref_inv, self.geometry.input_crop_fraction, self.geometry.scale_rate, what)
        out.update(images=images, intrinsics=ks, cam2ego=poses)

        rng = step_generator(self.seed, step, self.rank, item)
        anchor = draw_anchor(frames, t, self.sampling, rng) if self.mode == "train" else t
        a_frame = frames[anchor]
        a_images, a_ks, a_poses = self._cameras(a_frame, ref_inv, self.geometry.ray_crop_fraction, 1.0, what)
        out.update(anchor_images=a_images, anchor_intrinsics=a_ks, anchor_cam2ego=a_poses)
        out["anchor_is_current"] = anchor == t
        out["frame_indices"] = (t, anchor)

        if self.mode == "train":
            sources = draw_sources(frames, anchor, channels, self.sampling, rng, counters)
            s_images, s_ks, s_poses = [], [], []
            for side in (0, 1):
                per_cam = [self._camera(frames[src[side]].cameras[ch], ref_inv, self.geometry.ray_crop_fraction, 1.0, what)
                           for ch, src in zip(channels, sources)]
                s_images.append(torch.stack([p[0] for p in per_cam]))
                s_ks.append(np.stack([p[1] for p in per_cam]))
                s_poses.append(np.stack([p[2] for p in per_cam]))
            out.update(source_images=torch.stack(s_images), source_intrinsics=np.stack(s_ks), source_cam2ego=np.stack(s_poses))
            out["source_frames"] = sources
        if self.use_semantics:
            out["semantics"] = torch.stack(
                [self._semantics(a_frame.cameras[ch], what, counters) for ch in channels]
            )
        if self.mode == "eval":
            if frame.lidar_path is not None:
                pts = load_lidar_points(frame.lidar_path, what)
                out["lidar_points"] = transform_points(ref_inv @ frame.lidar_ego2global @ frame.lidar2ego, pts)
            if frame.occ_path is not None:
                labels = load_labels(frame.occ_path)
                out["occ_semantics"] = labels["semantics"]
                out["occ_mask_camera"] = labels["mask_camera"]
                if "mask_lidar" in labels:
                    out["occ_mask_lidar"] = labels["mask_lidar"]
            if self.novel_views:
                out["novel"] = self._novel_views(frames, t, ref_inv, what)
        out["counters"] = counters
        return out

    def _camera(self, cam: CameraImage, ref_inv: np.ndarray, crop: float, scale: float, what: str):
        img, k = crop_and_scale(load_rgb(cam.image_path, what), cam.intrinsics, crop, scale)
        return image_tensor(img), k, ref_inv @ cam.ego2global @ cam.cam2ego

    def _cameras(self, frame: Frame, ref_inv: np.ndarray, crop: float, scale: float, what: str):
        parts = [self._camera(frame.cameras[ch], ref_inv, crop, scale, what) for ch in self.index.cameras]
        return torch.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), np.stack([p[2] for p in parts])

    def _semantics(self, cam: CameraImage, what: str, counters: Optional[Dict[str, int]] = None) -> torch.Tensor:
        if cam.semantics_path is None and self.skip_unlabelled:
            if counters is not None:
                counters["semantics: unlabelled anchor images"] = counters.get("semantics: unlabelled anchor images", 0) + 1
            rows = crop_height(cam.height, self.geometry.ray_crop_fraction)
            return torch.full((rows, cam.width), IGNORE_ID, dtype=torch.int64)
        if cam.semantics_path is None:
            raise FileNotFoundError(
                f"Missing 2D label for {cam.image_path.name} ({cam.channel}, {what}); semantics are on, so every anchor "
                "image needs <semantics-dir>/<CHANNEL>/<basename>.png (see `selfocc-labels`)"
            )
        try:
            with Image.open(cam.semantics_path) as img:
                labels = np.asarray(img, dtype=np.uint8)
        except Exception as err:
            raise OSError(f"Unreadable 2D label {cam.semantics_path} ({what}): {err}") from err
        if labels.shape != (cam.height, cam.width):
            raise ValueError(f"2D label {cam.semantics_path} is {labels.shape}, image is {(cam.height, cam.width)}")
        rows = crop_height(cam.height, self.geometry.ray_crop_fraction)
        return torch.from_numpy(labels[:rows].astype(np.int64))

    def _novel_views(self, frames: Sequence[Frame], t: int, ref_inv: np.ndarray, what: str) -> Dict[str, Any]:
        """Other frames of t's neighbour lists with their LiDAR, for novel-depth evaluation."""
        prev, nxt = neighbours(frames, t, self.sampling.min_dist_m, self.sampling.max_dist_m)
        ks, poses, points, dists = [], [], [], []
        for nb in prev + nxt:
            other = frames[nb.frame_index]
            if other.lidar_path is None:
                continue
            to_ref = ref_inv @ other.lidar_ego2global @ other.lidar2ego
            points.append(transform_points(to_ref, load_lidar_points(other.lidar_path, what)))
            cams = [other.cameras[ch] for ch in self.index.cameras]
            ks.append(np.stack([c.intrinsics for c in cams]))
            poses.append(np.stack([ref_inv @ c.ego2global @ c.cam2ego for c in cams]))
            dists.append(nb.distance_m)
        cam0 = frames[t].cameras[self.index.cameras[0]]
        return {
            "intrinsics": np.stack(ks) if ks else np.zeros((0, len(self.index.cameras), 3, 3)),
            "cam2ego": np.stack(poses) if poses else np.zeros((0, len(self.index.cameras), 4, 4)),
            "lidar_points": points,
            "distance_m": np.asarray(dists, dtype=np.float32),
            "image_hw": (crop_height(cam0.height, self.geometry.ray_crop_fraction), cam0.width),
        }


def _tensor(values: List[Any], dtype=torch.float32) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v).to(dtype) for v in values])


def collate_samples(items: List[Dict[str, Any]]) -> SelfOccBatch:
    """Stack dataset items into a `SelfOccBatch` (runs in the loader workers)."""
    first = items[0]
    batch = SelfOccBatch(
        images=torch.stack([it["images"] for it in items]),
        intrinsics=_tensor([it["intrinsics"] for it in items]),
        cam2ego=_tensor([it["cam2ego"] for it in items]),
        anchor_images=torch.stack([it["anchor_images"] for it in items]),
        anchor_intrinsics=_tensor([it["anchor_intrinsics"] for it in items]),
        anchor_cam2ego=_tensor([it["anchor_cam2ego"] for it in items]),
        anchor_is_current=torch.tensor([bool(it["anchor_is_current"]) for it in items]),
        scene_names=[it["scene_name"] for it in items],
        sample_tokens=[it["sample_token"] for it in items],
    )
    if "source_images" in first:
        batch.source_images = torch.stack([it["source_images"] for it in items])
        batch.source_intrinsics = _tensor([it["source_intrinsics"] for it in items])
        batch.source_cam2ego = _tensor([it["source_cam2ego"] for it in items])
    if "semantics" in first:
        batch.semantics = torch.stack([it["semantics"] for it in items])
    if "lidar_points" in first:
        batch.lidar_points = [torch.from_numpy(np.asarray(it["lidar_points"], dtype=np.float32)) for it in items]
    if "occ_semantics" in first:
        batch.occ_semantics = _tensor([it["occ_semantics"] for it in items], torch.int64)
        batch.occ_mask_camera = _tensor([it["occ_mask_camera"] for it in items], torch.int64)
        if all("occ_mask_lidar" in it for it in items):
            batch.occ_mask_lidar = _tensor([it["occ_mask_lidar"] for it in items], torch.int64)
    if "novel" in first:
        batch.novel = [
            NovelViews(
                intrinsics=torch.as_tensor(it["novel"]["intrinsics"], dtype=torch.float32),
                cam2ego=torch.as_tensor(it["novel"]["cam2ego"], dtype=torch.float32),
                lidar_points=[torch.from_numpy(np.asarray(p, dtype=np.float32)) for p in it["novel"]["lidar_points"]],
                distance_m=torch.as_tensor(it["novel"]["distance_m"], dtype=torch.float32),
                image_hw=tuple(it["novel"]["image_hw"]),
            )
            for it in items
        ]
    counters: Dict[str, int] = {}
    for it in items:
        for key, value in it.get("counters", {}).items():
            counters[key] = counters.get(key, 0) + value
    batch.info = {
        "frame_indices": [it["frame_indices"] for it in items],
        "source_frames": [it.get("source_frames") for it in items],
        "counters": counters,
    }
    return batch
