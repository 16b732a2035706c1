"""Loading one SelfOcc sample: images cropped and scaled, poses in the input keyframe's reference frame.

Crops are fractions of the image height kept from the top (official: 768/900), so they apply at any
resolution; the network input is the crop scaled by `scale_rate`; anchor and source images stay at the
unscaled crop (rays, losses and SSIM use it). Pixel convention everywhere: pixel (i, j) covers
[j, j + 1) x [i, i + 1) and its centre is (j + 0.5, i + 0.5), as in nerfstudio, so scaling an image by s
scales its intrinsics' first two rows by s exactly.

The reference frame (`reference_frame`: the keyframe's LiDAR ego pose or its LIDAR_TOP sensor frame,
`frames.reference_pose`) holds every pose, LiDAR point and novel view of the sample; `ego2ref` maps the
keyframe's ego frame (where the Occ3D gts live) into it.

Network input (`input_image`): the crop as float RGB 0..255, optionally distorted (official photometric
augmentation, on BGR values, `selfocc_ns.data.photometric`), resized (`ImageGeometryConfig.resize`: PIL's
antialiased bilinear on uint8, or the official OpenCV INTER_LINEAR on float), divided by 255 (the model
normalises with the ImageNet mean and std, which equals the official normalisation of 0..255 values).
Anchor and source images are pixel values times `loss_image_scale` (official 1/256).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from selfocc_ns.data.batch import NovelViews, SelfOccBatch
from selfocc_ns.data.frames import CameraImage, Frame, ReferenceFrame, SelfOccIndex, neighbours, reference_pose
from selfocc_ns.data.label_maps import LABEL_SPACE_FILE, SemanticLabelSpace, check_label_ids, folder_label_space
from selfocc_ns.data.occ3d import IGNORE_ID, load_labels
from selfocc_ns.data.photometric import PhotometricDraws, apply_photometric, draw_photometric
from selfocc_ns.data.sampling import FrameSamplingConfig, draw_anchor, draw_official, draw_sources, step_generator

PHOTOMETRIC_STREAM = 1
"""`step_generator` stream of the photometric draws (independent of the frame draws, stream 0)."""


@dataclass(frozen=True)
class ImageGeometryConfig:
    input_crop_fraction: float = 768 / 900
    """Fraction of the image height, from the top, the network sees (official occ: 768/900)."""
    ray_crop_fraction: float = 768 / 900
    """Fraction of the image height, from the top, that rays/losses use (official depth preset: 1.0)."""
    scale_rate: float = 0.5
    """Network input = input crop scaled by this (official 0.5)."""
    resize: Literal["pil_bilinear", "official"] = "pil_bilinear"
    """Input resize: PIL antialiased bilinear on uint8, or 'official' OpenCV INTER_LINEAR on float (2x2 mean at 0.5)."""


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


def image_tensor(img: Image.Image, value_scale: float = 1.0 / 255.0) -> torch.Tensor:
    """(3, H, W) float32: pixel values times `value_scale` (default: [0, 1])."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().mul_(value_scale)


def scaled_size(width: int, height: int, scale: float, resize: str = "pil_bilinear") -> Tuple[int, int]:
    """(width, height) of an image scaled by `scale`: rounded, or truncated as the official `int(size * scale)`."""
    if resize == "official":
        return max(1, int(width * scale)), max(1, int(height * scale))
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def crop_and_scale(
    img: Image.Image, intrinsics: np.ndarray, crop_fraction: float, scale: float = 1.0
) -> Tuple[Image.Image, np.ndarray]:
    """Keep the top `crop_fraction` of the rows, then resize by `scale`; intrinsics follow."""
    width, height = img.size
    img = img.crop((0, 0, width, crop_height(height, crop_fraction)))
    k = intrinsics.copy()
    if scale != 1.0:
        new_w, new_h = scaled_size(width, img.size[1], scale)
        k[0] *= new_w / width
        k[1] *= new_h / img.size[1]
        img = img.resize((new_w, new_h), Image.BILINEAR)
    return img, k


def resize_float_image(rgb: np.ndarray, size_wh: Tuple[int, int], resize: str) -> np.ndarray:
    """Resize a float32 [H, W, 3] image: OpenCV INTER_LINEAR (official) or PIL's bilinear per channel (mode F)."""
    if resize == "official":
        import cv2

        return cv2.resize(rgb, size_wh, interpolation=cv2.INTER_LINEAR)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., c]), mode="F").resize(size_wh, Image.BILINEAR))
                for c in range(rgb.shape[-1])]
    return np.stack(channels, axis=-1)


def input_image(
    img: Image.Image, intrinsics: np.ndarray, geometry: ImageGeometryConfig,
    draws: Optional[PhotometricDraws] = None,
) -> Tuple[torch.Tensor, np.ndarray]:
    """The network input of one camera (module docstring): (3, h, w) float32 (pixel values / 255) and its intrinsics.

    Without photometric draws and with the PIL resize this is `crop_and_scale` on uint8 (no float detour).
    """
    if draws is None and geometry.resize == "pil_bilinear":
        small, k = crop_and_scale(img, intrinsics, geometry.input_crop_fraction, geometry.scale_rate)
        return image_tensor(small), k
    cropped, k = crop_and_scale(img, intrinsics, geometry.input_crop_fraction)
    rgb = np.asarray(cropped, dtype=np.float32)
    if draws is not None:  # the official distortion works on BGR values
        import cv2

        rgb = cv2.cvtColor(apply_photometric(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), draws), cv2.COLOR_BGR2RGB)
    if geometry.scale_rate != 1.0:
        height, width = rgb.shape[:2]
        new_w, new_h = scaled_size(width, height, geometry.scale_rate, geometry.resize)
        rgb = resize_float_image(np.ascontiguousarray(rgb), (new_w, new_h), geometry.resize)
        k[0] *= new_w / width
        k[1] *= new_h / height
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0), k


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
    """Items are (sample index, step, item) tuples from `StepSampler`; the draws are seeded from them.

    `photometric_augmentation` distorts the input images (training streams only; the datamanager decides),
    with draws from the item's own generator stream `PHOTOMETRIC_STREAM`.
    """

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
        reference_frame: ReferenceFrame = "ego",
        photometric_augmentation: bool = False,
        loss_image_scale: float = 1.0 / 255.0,
        semantic_label_space: SemanticLabelSpace = "occ3d",
        skip_unlabelled: bool = False,
    ):
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be train or eval, not {mode!r}")
        if reference_frame not in ("ego", "lidar"):
            raise ValueError(f"reference_frame must be 'ego' or 'lidar', not {reference_frame!r}")
        if not loss_image_scale > 0:
            raise ValueError(f"loss_image_scale must be > 0, got {loss_image_scale}")
        self.index = index
        self.geometry = geometry
        self.sampling = sampling
        self.mode = mode
        self.use_semantics = use_semantics
        self.seed = seed
        self.rank = rank
        self.novel_views = novel_views
        self.reference_frame = reference_frame
        self.photometric_augmentation = photometric_augmentation
        self.loss_image_scale = loss_image_scale
        self.semantic_label_space = semantic_label_space
        self._checked_label_folders: set = set()
        self.skip_unlabelled = skip_unlabelled
        """An anchor image without a 2D label gets all-ignore labels (left out of the semantic loss) instead of an error."""

    def __len__(self) -> int:
        return len(self.index.samples)

    def _draw_frames(self, sample_idx: int, rng: np.random.Generator, counters: Dict[str, int]):
        """(input sample index, anchor frame index, per-camera sources or None) of a training draw."""
        if self.sampling.frame_sampling == "official":
            draw = draw_official(self.index, sample_idx, self.index.cameras, self.sampling, rng)
            if draw.redraws:
                counters["sampling: input keyframe replaced (official redraw)"] = draw.redraws
            return draw.sample_index, draw.anchor, draw.sources
        scene_idx, t = self.index.samples[sample_idx]
        frames = self.index.scenes[scene_idx].frames
        anchor = draw_anchor(frames, t, self.sampling, rng)
        return sample_idx, anchor, draw_sources(frames, anchor, self.index.cameras, self.sampling, rng, counters)

    def __getitem__(self, key) -> Dict[str, Any]:
        sample_idx, step, item = key if isinstance(key, tuple) else (key, 0, 0)
        counters: Dict[str, int] = {}
        rng = step_generator(self.seed, step, self.rank, item)
        anchor, sources = None, None
        if self.mode == "train":
            sample_idx, anchor, sources = self._draw_frames(sample_idx, rng, counters)
        scene_idx, t = self.index.samples[sample_idx]
        anchor = t if anchor is None else anchor
        frames = self.index.scenes[scene_idx].frames
        frame = frames[t]
        what = f"scene {frame.scene_name}, sample {frame.sample_token}"
        ref_inv = np.linalg.inv(reference_pose(frame, self.reference_frame))
        channels = self.index.cameras

        out: Dict[str, Any] = {"scene_name": frame.scene_name, "sample_token": frame.sample_token or ""}
        out["ego2ref"] = ref_inv @ frame.ref_ego2global
        photometric_rng = (step_generator(self.seed, step, self.rank, item, PHOTOMETRIC_STREAM)
                           if self.photometric_augmentation else None)
        parts = [self._input_camera(frame.cameras[ch], ref_inv, what, photometric_rng) for ch in channels]
        out.update(zip(("images", "intrinsics", "cam2ego"), _stack_parts(parts)))

        a_frame = frames[anchor]
        a_images, a_ks, a_poses = self._cameras(a_frame, ref_inv, what)
        out.update(anchor_images=a_images, anchor_intrinsics=a_ks, anchor_cam2ego=a_poses)
        out["anchor_is_current"] = anchor == t
        out["frame_indices"] = (t, anchor)

        if sources is not None:
            s_images, s_ks, s_poses = [], [], []
            for side in (0, 1):
                per_cam = [self._camera(frames[src[side]].cameras[ch], ref_inv, what)
                           for ch, src in zip(channels, sources)]
                images, ks, poses = _stack_parts(per_cam)
                s_images.append(images)
                s_ks.append(ks)
                s_poses.append(poses)
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

    def _input_camera(self, cam: CameraImage, ref_inv: np.ndarray, what: str,
                      photometric_rng: Optional[np.random.Generator]):
        """(network input image, its intrinsics, cam2ref) of one input camera; draws its distortion if augmenting."""
        draws = draw_photometric(photometric_rng) if photometric_rng is not None else None
        image, k = input_image(load_rgb(cam.image_path, what), cam.intrinsics, self.geometry, draws)
        return image, k, ref_inv @ cam.ego2global @ cam.cam2ego

    def _camera(self, cam: CameraImage, ref_inv: np.ndarray, what: str):
        """(loss image at the ray crop, pixel values x loss_image_scale; its intrinsics; cam2ref) of one camera."""
        img, k = crop_and_scale(load_rgb(cam.image_path, what), cam.intrinsics, self.geometry.ray_crop_fraction)
        return image_tensor(img, self.loss_image_scale), k, ref_inv @ cam.ego2global @ cam.cam2ego

    def _cameras(self, frame: Frame, ref_inv: np.ndarray, what: str):
        return _stack_parts([self._camera(frame.cameras[ch], ref_inv, what) for ch in self.index.cameras])

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
        self._check_label_folder(Path(cam.semantics_path).parent.parent)
        check_label_ids(labels, self.semantic_label_space, str(cam.semantics_path))
        rows = crop_height(cam.height, self.geometry.ray_crop_fraction)
        return torch.from_numpy(labels[:rows].astype(np.int64))

    def _check_label_folder(self, folder: Path) -> None:
        """The label folder must declare the model's label space (no `label_space.json`: "occ3d")."""
        if folder in self._checked_label_folders:
            return
        declared = folder_label_space(folder)
        if declared != self.semantic_label_space:
            raise ValueError(
                f"the 2D labels in {folder} are '{declared}' labels ({LABEL_SPACE_FILE}"
                f"{'' if (folder / LABEL_SPACE_FILE).is_file() else ' absent'}), the model's semantic_label_space is "
                f"'{self.semantic_label_space}': write labels in that space (`selfocc-labels --label-space "
                f"{self.semantic_label_space}`) and pass their folder as --semantics-dir")
        self._checked_label_folders.add(folder)

    def _novel_views(self, frames: Sequence[Frame], t: int, ref_inv: np.ndarray, what: str) -> Dict[str, Any]:
        """Other frames of t's neighbour lists with their LiDAR, for novel-depth evaluation."""
        prev, nxt = neighbours(frames, t, self.sampling.min_dist_m, self.sampling.max_dist_m)
        ks, poses, points, lidar2ref, dists = [], [], [], [], []
        for nb in prev + nxt:
            other = frames[nb.frame_index]
            if other.lidar_path is None:
                continue
            to_ref = ref_inv @ other.lidar_ego2global @ other.lidar2ego
            points.append(transform_points(to_ref, load_lidar_points(other.lidar_path, what)))
            lidar2ref.append(to_ref)
            cams = [other.cameras[ch] for ch in self.index.cameras]
            ks.append(np.stack([c.intrinsics for c in cams]))
            poses.append(np.stack([ref_inv @ c.ego2global @ c.cam2ego for c in cams]))
            dists.append(nb.distance_m)
        keyframe = frames[t]
        cam0 = keyframe.cameras[self.index.cameras[0]]
        n = len(self.index.cameras)
        return {
            "intrinsics": np.stack(ks) if ks else np.zeros((0, n, 3, 3)),
            "cam2ego": np.stack(poses) if poses else np.zeros((0, n, 4, 4)),
            "lidar_points": points,
            "lidar2ref": np.stack(lidar2ref) if lidar2ref else np.zeros((0, 4, 4)),
            "distance_m": np.asarray(dists, dtype=np.float32),
            "image_hw": (crop_height(cam0.height, self.geometry.ray_crop_fraction), cam0.width),
            "keyframe_lidar2ref": (ref_inv @ keyframe.lidar_ego2global @ keyframe.lidar2ego
                                   if keyframe.lidar_path is not None else np.full((4, 4), np.nan)),
        }


def _stack_parts(parts: Sequence[Tuple[torch.Tensor, np.ndarray, np.ndarray]]):
    """[(image, intrinsics, pose)] per camera -> (stacked images, stacked intrinsics, stacked poses)."""
    return torch.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), np.stack([p[2] for p in parts])


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
        ego2ref=_tensor([it["ego2ref"] for it in items]),
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
                lidar2ref=torch.as_tensor(it["novel"]["lidar2ref"], dtype=torch.float32),
                keyframe_lidar2ref=torch.as_tensor(it["novel"]["keyframe_lidar2ref"], dtype=torch.float32),
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
