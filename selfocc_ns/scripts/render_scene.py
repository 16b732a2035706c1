"""`selfocc-render-scene`: a video of one scene, as the official README shows it in GIFs.

    selfocc-render-scene --load-config outputs/.../config.yml --scene scene-0103 --output scene.mp4   (or .gif)

One video frame per keyframe of the scene (2 fps = real time for nuScenes' 2 Hz keyframes), left to right:

- the predicted occupancy (Occ3D grid of the checkpoint, `--protocol occ3d` voxel centres by default) seen from a
  chase camera behind and above the ego vehicle (white box), voxels in the Occ3D palette, faces shaded by their
  orientation (top brightest) and darkened with distance;
- the six input images (front row FRONT_LEFT, FRONT, FRONT_RIGHT; back row BACK_LEFT, BACK, BACK_RIGHT), the
  rendered depth (1..60 m colour map) and the rendered semantics (Occ3D palette) of the same cameras, rendered at
  `--render-width` pixels per camera and shown at `--camera-width`.

The chase view ray-casts the class grid: per pixel, samples every `step_m` along the ray inside the grid, the first
non-free voxel's class and the axis of the face the ray entered it through (`raycast_voxels`). mp4 needs ffmpeg
(`apt-get install ffmpeg`); .gif is written by Pillow.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
import tyro
from jaxtyping import Float, Int
from torch import Tensor

from selfocc_ns.data.occ3d import FREE_ID, OCC3D_PALETTE, OCC3D_RANGE_M, OCC3D_VOXEL_M

MOSAIC_ROWS: Tuple[Tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
EGO_ID = 18
"""Pseudo-class of the ego-vehicle box drawn into the chase view (white)."""
EGO_BOX_M = (-1.0, -1.0, 0.0, 3.5, 1.0, 1.6)
"""The ego box (x, y, z min, x, y, z max) in the ego frame: origin under the rear axle, x forward."""
FACE_LIGHT = (0.78, 0.62, 1.0)
"""Brightness of faces whose normal is along x, y, z (top faces brightest)."""
BACKGROUND_RGB = (24, 24, 28)


# ----------------------------------------------------------------------------------------------
# The chase view: a pinhole camera ray-casting a class grid
# ----------------------------------------------------------------------------------------------


def look_at_rays(
    eye_m: Sequence[float], target_m: Sequence[float], image_hw: Tuple[int, int], fov_deg: float
) -> Tuple[Float[Tensor, "H W 3"], Float[Tensor, "H W 3"]]:
    """(origins, unit directions) of the pixel centres of a pinhole camera at `eye_m` looking at `target_m`, z up.

    Horizontal field of view `fov_deg`; square pixels; pixel (i, j) has its centre at (j + 0.5, i + 0.5).
    """
    eye = torch.tensor(eye_m, dtype=torch.float64)
    forward = torch.tensor(target_m, dtype=torch.float64) - eye
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    height, width = image_hw
    focal = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                          torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    directions = (((u - width / 2) / focal)[..., None] * right + ((v - height / 2) / focal)[..., None] * down
                  + forward)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return eye.expand(height, width, 3).float(), directions.float()


def raycast_voxels(
    classes: Int[Tensor, "X Y Z"],
    origins: Float[Tensor, "R 3"],
    directions: Float[Tensor, "R 3"],
    range_m: Sequence[float] = OCC3D_RANGE_M,
    voxel_m: float = OCC3D_VOXEL_M,
    step_m: float = 0.1,
    chunk_rays: int = 8192,
) -> Tuple[Int[Tensor, "R"], Float[Tensor, "R"], Int[Tensor, "R"]]:
    """First non-free voxel along each ray: (class, -1 for none; distance in metres; entry face axis 0/1/2, -1).

    Samples every `step_m` from where the ray enters the grid's box to where it leaves it (an approximation:
    a ray may clip a voxel corner shorter than `step_m` unseen). The face axis is the axis along which the voxel
    index changed between the last free sample and the hit (-1 when the ray starts inside the voxel).
    """
    from selfocc_ns.model.rays import intersect_aabb

    lo = torch.tensor(range_m[:3], dtype=torch.float32)
    shape = torch.tensor(classes.shape)
    occupied = (classes != FREE_ID).reshape(-1)
    flat_classes = classes.reshape(-1).long()
    strides = torch.tensor([classes.shape[1] * classes.shape[2], classes.shape[2], 1])
    out_class = torch.full((origins.shape[0],), -1, dtype=torch.long)
    out_distance = torch.full((origins.shape[0],), float("inf"))
    out_axis = torch.full((origins.shape[0],), -1, dtype=torch.long)
    for start in range(0, origins.shape[0], chunk_rays):
        o, d = origins[start : start + chunk_rays], directions[start : start + chunk_rays]
        near, far, hit = intersect_aabb(o, d, tuple(float(x) for x in range_m))
        near = near.clamp(min=0.0)
        steps = int(torch.ceil((far[hit] - near[hit]).max() / step_m).item()) + 1 if hit.any() else 1
        t = near[:, None] + step_m * torch.arange(steps, dtype=torch.float32)[None]  # r S
        inside = hit[:, None] & (t <= far[:, None])
        index = torch.floor((o[:, None] + t[..., None] * d[:, None] - lo) / voxel_m).long()  # r S 3
        valid = inside & ((index >= 0) & (index < shape)).all(dim=-1)
        linear = (index.clamp(min=0) * strides).sum(-1).clamp(max=occupied.numel() - 1)
        solid = valid & occupied[linear]
        any_hit = solid.any(dim=1)
        first = solid.float().argmax(dim=1)
        rows = torch.arange(o.shape[0])
        hit_index = index[rows, first]
        previous = index[rows, (first - 1).clamp(min=0)]
        changed = (hit_index != previous)
        axis = torch.where(changed.any(-1) & (first > 0), changed.float().argmax(-1), torch.full_like(first, -1))
        sl = slice(start, start + o.shape[0])
        out_class[sl] = torch.where(any_hit, flat_classes[linear[rows, first]], out_class[sl])
        out_distance[sl] = torch.where(any_hit, t[rows, first], out_distance[sl])
        out_axis[sl] = torch.where(any_hit, axis, out_axis[sl])
    return out_class, out_distance, out_axis


def shade(
    hit_class: Int[Tensor, "*pixels"], distance_m: Float[Tensor, "*pixels"], axis: Int[Tensor, "*pixels"],
    max_distance_m: float = 90.0,
) -> np.ndarray:
    """uint8 RGB [*pixels, 3]: palette colour x face light x distance falloff; background where nothing was hit."""
    palette = np.concatenate([OCC3D_PALETTE, [[255, 255, 255]]]).astype(np.float32)  # + EGO_ID
    cls = hit_class.clamp(min=0).numpy()
    light = np.asarray(FACE_LIGHT + (0.9,), dtype=np.float32)[axis.numpy()]  # index -1 -> 0.9 (inside a voxel)
    falloff = 1.0 - 0.45 * np.clip(distance_m.numpy() / max_distance_m, 0.0, 1.0)
    rgb = palette[cls] * (light * falloff)[..., None]
    rgb[hit_class.numpy() < 0] = BACKGROUND_RGB
    return np.clip(rgb, 0, 255).astype(np.uint8)


def with_ego_box(classes: Int[Tensor, "X Y Z"], box_m: Sequence[float] = EGO_BOX_M) -> Tensor:
    """The class grid with the voxels whose centre lies in the ego box set to `EGO_ID`."""
    from selfocc_ns.data.occ3d import voxel_centres_m

    xs, ys, zs = (torch.from_numpy(c) for c in voxel_centres_m())
    inside = [((c >= box_m[i]) & (c <= box_m[i + 3])) for i, c in enumerate((xs, ys, zs))]
    out = classes.clone()
    out[inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]] = EGO_ID
    return out


def chase_view(classes: Int[Tensor, "X Y Z"], image_hw: Tuple[int, int], eye_m=(-20.0, 0.0, 16.0),
               target_m=(14.0, 0.0, 0.0), fov_deg: float = 70.0) -> np.ndarray:
    """uint8 [H, W, 3] image of a class grid seen from a chase camera in the ego frame."""
    origins, directions = look_at_rays(eye_m, target_m, image_hw, fov_deg)
    hit_class, distance, axis = raycast_voxels(with_ego_box(classes), origins.reshape(-1, 3), directions.reshape(-1, 3))
    return shade(hit_class, distance, axis).reshape(*image_hw, 3)


# ----------------------------------------------------------------------------------------------
# Camera panels and frame layout
# ----------------------------------------------------------------------------------------------


def resize(image: np.ndarray, width: int, nearest: bool = False, height: Optional[int] = None) -> np.ndarray:
    """`image` scaled to `width` (and `height`; default: keeping the aspect ratio)."""
    from PIL import Image

    height = height or max(1, round(image.shape[0] * width / image.shape[1]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.NEAREST if nearest else Image.BILINEAR))


def mosaic(images: dict, width: int, height: Optional[int] = None, nearest: bool = False) -> np.ndarray:
    """The six camera images in `MOSAIC_ROWS` order, each resized to width x height (default height: keeping the
    aspect ratio); a camera absent from the rig is black."""
    sample = resize(next(iter(images.values())), width, nearest, height)
    blank = np.zeros_like(sample)
    rows = [np.concatenate([resize(images[ch], width, nearest, sample.shape[0]) if ch in images else blank
                            for ch in row], axis=1) for row in MOSAIC_ROWS]
    return np.concatenate(rows, axis=0)


def label(image: np.ndarray, text: str) -> np.ndarray:
    """`text` written in the top-left corner (white on a dark box)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image)
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((4, 3), text)
    draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(img)


def compose_frame(chase: np.ndarray, panels: Sequence[np.ndarray]) -> np.ndarray:
    """The chase view (resized to the panels' total height) left of the panels stacked top to bottom; even size."""
    right = np.concatenate(list(panels), axis=0)
    height = right.shape[0]
    from PIL import Image

    left = np.asarray(Image.fromarray(chase).resize((round(chase.shape[1] * height / chase.shape[0]), height)))
    frame = np.concatenate([left, right], axis=1)
    pad = ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0))  # h264 wants even sizes
    return np.pad(frame, pad)


# ----------------------------------------------------------------------------------------------
# One keyframe -> one video frame
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneVideoOptions:
    protocol: Literal["selfocc", "occ3d"] = "occ3d"
    """Occupancy grid shown: 'occ3d' samples the SDF at the voxel centres; 'selfocc' as the official eval."""
    threshold: float = 0.0
    """Occupied where SDF <= this (metres)."""
    camera_width: int = 192
    """Width of each camera image in the panels (pixels)."""
    render_width: int = 96
    """Width at which depth and semantics are rendered per camera (then scaled to --camera-width)."""
    chase_hw: Tuple[int, int] = (360, 360)
    """Size of the chase-camera image before it is scaled to the panels' height."""
    fps: float = 2.0
    """Video frames per second (nuScenes keyframes are 2 Hz: 2 = real time)."""


def scaled_camera(intrinsics: Tensor, cam2ego: Tensor, image_hw: Tuple[int, int], width: int):
    """An `EgoCamera` of the same view at `width` pixels (intrinsics' first two rows scaled)."""
    from selfocc_ns.viewer.render import EgoCamera

    scale = width / image_hw[1]
    k = intrinsics.clone().float().cpu()
    k[:2] *= scale
    return EgoCamera(k, cam2ego.float().cpu(), (max(1, round(image_hw[0] * scale)), width))


@torch.no_grad()
def keyframe_frame(model, batch, camera_names: Sequence[str], options: SceneVideoOptions, title: str) -> np.ndarray:
    """The video frame of one keyframe batch (B = 1): chase view, inputs, rendered depth and semantics."""
    from nerfstudio.utils import colormaps

    from selfocc_ns.eval.runner import predict_occupancy
    from selfocc_ns.viewer.render import render_ego_camera, semantic_colours
    from selfocc_ns.viewer.samples import encode_sample

    grid = encode_sample(model, batch)
    pred, _ = predict_occupancy(grid, options.protocol, options.threshold, batch.ego2ref_of(0),
                                model.semantic_label_space)
    image_hw = tuple(batch.anchor_images.shape[-2:])
    inputs, depths, semantics = {}, {}, {}
    for c, name in enumerate(camera_names):
        inputs[name] = (batch.anchor_images[0, c].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        view = scaled_camera(batch.anchor_intrinsics[0, c], batch.anchor_cam2ego[0, c], image_hw, options.render_width)
        render = render_ego_camera(model, grid, view)
        depth = colormaps.apply_depth_colormap(render.depth[0, 0].cpu(), near_plane=1.0, far_plane=60.0)
        depths[name] = (depth.numpy() * 255).astype(np.uint8)
        if render.semantics is not None:
            colours = semantic_colours(render.semantics[0, 0].cpu(), render.accumulation[0, 0].cpu(),
                                       model.semantic_label_space)
            semantics[name] = (colours.numpy() * 255).astype(np.uint8)
    width = options.camera_width
    height = max(1, round(image_hw[0] * width / image_hw[1]))  # every panel shows the cameras at the input's size
    panels = [label(mosaic(inputs, width, height), f"input  {title}"),
              label(mosaic(depths, width, height, nearest=True), "rendered depth (1-60 m)")]
    if semantics:
        panels.append(label(mosaic(semantics, width, height, nearest=True), "rendered semantics"))
    chase = label(chase_view(pred.cpu(), options.chase_hw), f"predicted occupancy ({options.protocol})")
    return compose_frame(chase, panels)


def scene_samples(pipeline, scene: str, split: str = "auto") -> Tuple[str, List[int]]:
    """(split, sample indices in time order) of the keyframes of `scene`; 'auto' looks in val, then train."""
    dm = pipeline.datamanager
    known = {}
    for name, index in (("eval", dm.eval_index), ("train", dm.train_index)):
        if split not in ("auto", "val" if name == "eval" else "train"):
            continue
        picks = [i for i in range(len(index.samples)) if index.sample_frame(i).scene_name == scene]
        known[name] = sorted({index.sample_frame(i).scene_name for i in range(len(index.samples))})
        if picks:
            return name, sorted(picks, key=lambda i: index.sample_frame(i).timestamp_us)
    raise ValueError(f"--scene {scene}: no keyframe of that scene in the "
                     + " or ".join(f"{k} split (scenes: {', '.join(v)})" for k, v in known.items()))


def render_scene_frames(pipeline, scene: str, options: SceneVideoOptions = SceneVideoOptions(), split: str = "auto",
                        max_keyframes: Optional[int] = None, progress: bool = True) -> List[np.ndarray]:
    """One uint8 [H, W, 3] frame per keyframe of the scene, in time order (a progress bar per keyframe)."""
    from selfocc_ns.data.dataset import collate_samples

    which, samples = scene_samples(pipeline, scene, split)
    samples = samples[:max_keyframes] if max_keyframes else samples
    dm, model = pipeline.datamanager, pipeline.model
    index = dm.eval_index if which == "eval" else dm.train_index
    dataset = dm.make_dataset(which, "eval")
    iterator = samples
    if progress:
        from tqdm import tqdm

        iterator = tqdm(samples, desc=f"selfocc render {scene}", unit="keyframe")
    frames = []
    for k, sample_index in enumerate(iterator):
        batch = collate_samples([dataset[(sample_index, 0, 0)]]).to(model.device)
        frame = index.sample_frame(sample_index)
        title = f"{scene}  keyframe {k + 1}/{len(samples)}  {frame.sample_token[:8]}"
        frames.append(keyframe_frame(model, batch, index.cameras, options, title))
    return frames


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """.gif (Pillow, loops) or .mp4 / other ffmpeg formats (mediapy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return path
    import mediapy

    mediapy.write_video(str(path), list(frames), fps=fps)
    return path


@dataclass
class SelfOccRenderScene:
    """Render a video of one scene: predicted occupancy from a chase camera beside the inputs, depth and semantics."""

    load_config: Path
    """config.yml of the training run (as for ns-eval)."""
    scene: str
    """Scene name, e.g. scene-0103."""
    output: Path = Path("scene.mp4")
    """Video to write: .mp4 (needs ffmpeg) or .gif."""
    split: Literal["auto", "val", "train"] = "auto"
    """Split that holds the scene (auto: val, then train)."""
    video: SceneVideoOptions = SceneVideoOptions()
    """What the frames show."""
    max_keyframes: Optional[int] = None
    """Render at most this many keyframes from the start of the scene."""
    load_step: Optional[int] = None
    """Render with the checkpoint of this step (default: the newest valid one)."""

    def main(self) -> Path:
        from selfocc_ns.eval.outputs import check_output_file
        from selfocc_ns.scripts.eval import load_pipeline

        check_output_file(self.output, "--output")  # before any work
        if self.output.suffix.lower() != ".gif" and shutil.which("ffmpeg") is None:
            raise SystemExit(f"--output {self.output}: writing {self.output.suffix} needs ffmpeg (apt-get install "
                             "ffmpeg), or ask for a .gif")
        _, pipeline, checkpoint, step = load_pipeline(self.load_config, load_step=self.load_step, max_workers=0)
        start = time.perf_counter()
        frames = render_scene_frames(pipeline, self.scene, self.video, self.split, self.max_keyframes)
        write_video(self.output, frames, self.video.fps)
        print(f"wrote {self.output}: {len(frames)} keyframes of {self.scene} ({frames[0].shape[1]}x{frames[0].shape[0]}, "
              f"{self.video.fps:g} fps) from {checkpoint} (step {step}) in {time.perf_counter() - start:.1f} s")
        return self.output


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(SelfOccRenderScene).main()


if __name__ == "__main__":
    entrypoint()
