"""`selfocc-labels`: run any 2D segmentor over a nuScenes split's camera images and write label PNGs.

    selfocc-labels --segmentor my_pkg.seg:segment --data-dir data/nuscenes --version v1.0-trainval \
        --split train --include-sweeps --mapping openseed [--label-space openseed]

The segmentor is any Python callable given as `module:function` (or `path/to/file.py:function`):
it takes one RGB image (numpy uint8 [H, W, 3]) and returns a class map [H, W] (numpy or torch,
integer ids of the segmentor's own classes). The ids are mapped to this project's label ids in the chosen
label space (`--label-space`: "occ3d", Occ3D 0..16, 17 sky, 255 ignore; or "openseed", the 21 OpenSeeD
prompt ids the official occ preset trains on; `selfocc_ns.data.label_maps`) and written as uint8 PNGs to
`<out-dir>/semantics/<CHANNEL>/<image file stem>.png` (out-dir defaults to the data dir, where
the `nuscenes-data` dataparser looks for them), with `<out-dir>/semantics/label_space.json` naming the label
space (training checks it against the model's). Files already there are skipped, so an
interrupted run resumes where it stopped; each PNG is written to a temporary name first and
renamed, so a killed run never leaves a half-written file that would count as done.

`--source-labels DIR` relabels existing label PNGs (DIR/<CHANNEL>/<stem>.png) instead of running a
segmentor, e.g. the synthetic world's Occ3D labels as OpenSeeD ids:

    selfocc-labels --source-labels ROOT/semantics --label-space openseed --data-dir ROOT --version v1.0-mini \
        --split all --include-sweeps --out-dir ROOT/openseed

(then train with `nuscenes-data --semantics-dir ROOT/openseed/semantics`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tyro
from PIL import Image
from tqdm import tqdm

from selfocc_ns.data.frames import CAMERA_CHANNELS
from selfocc_ns.data.label_maps import (
    OPENSEED_PROMPTS,
    SemanticLabelSpace,
    apply_label_map,
    get_label_map,
    write_folder_label_space,
)
from selfocc_ns.data.occ3d import IGNORE_ID, OCC3D_CLASSES

Segmentor = Callable[[np.ndarray], object]
"""image uint8 [H, W, 3] RGB -> class map [H, W] of integer ids (numpy array or torch tensor)."""

SPLITS_BY_VERSION = {
    "v1.0-mini": ("mini_train", "mini_val", "all"),
    "v1.0-trainval": ("train", "val", "train_detect", "train_track", "all"),
    "v1.0-test": ("test", "all"),
}
"""Official nuScenes scene splits (`nuscenes.utils.splits`) valid for each version; "all" = every scene."""


@dataclass
class LabelsConfig:
    """Write 2D semantic label PNGs for a nuScenes split with any segmentor."""

    segmentor: Optional[str] = None
    """Python callable `module:function` or `path/to/file.py:function`: RGB uint8 [H, W, 3] -> class ids [H, W]."""
    source_labels: Optional[Path] = None
    """Relabel the label PNGs of this folder (<dir>/<CHANNEL>/<stem>.png) instead of running a segmentor."""
    label_space: SemanticLabelSpace = "occ3d"
    """Labels to write: occ3d (Occ3D ids, 17 sky, 255 ignore) or openseed (the 21 OpenSeeD ids, official occ)."""
    data_dir: Path = Path("data/nuscenes")
    """nuScenes data root (holds the version folder, samples/ and sweeps/)."""
    version: str = "v1.0-trainval"
    """nuScenes version: v1.0-trainval, v1.0-mini or v1.0-test."""
    split: str = "train"
    """Official scene split (train, val, mini_train, mini_val, test, train_detect, train_track) or all."""
    include_sweeps: bool = False
    """Also label the non-keyframe camera images (sweeps), which SelfOcc's anchors and sources use."""
    cameras: Tuple[str, ...] = CAMERA_CHANNELS
    """Camera channels to label."""
    mapping: Optional[str] = None
    """Ids -> labels: openseed (21 prompts), identity, from-occ3d, or a JSON file (default: openseed; with
    --source-labels: identity, or from-occ3d into openseed)."""
    out_dir: Optional[Path] = None
    """Root of the output; PNGs go to <out-dir>/semantics/<CHANNEL>/. Default: the data dir."""
    limit: Optional[int] = None
    """Label at most this many images (after skipping done ones); for trying a segmentor out."""

    def main(self) -> "LabelRunSummary":
        summary = run_labels(self)
        print(summary.format())
        return summary


@dataclass
class LabelRunSummary:
    """What a `selfocc-labels` run did."""

    out_root: Path
    images_in_split: int = 0
    written: int = 0
    skipped_existing: int = 0
    scenes: int = 0
    scenes_missing: List[str] = field(default_factory=list)
    """Scenes of the split that the loaded version does not hold (e.g. a partial download)."""
    out_of_range_pixels: int = 0
    label_pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    """Pixels per written label id (0..17 or 0..20, 255), over the images written in this run."""
    label_space: str = "occ3d"

    def format(self) -> str:
        lines = [
            f"selfocc-labels: {self.images_in_split} images in {self.scenes} scenes -> {self.out_root}",
            f"  written {self.written}, skipped (already done) {self.skipped_existing}",
        ]
        if self.scenes_missing:
            names = ", ".join(self.scenes_missing[:5]) + (" ..." if len(self.scenes_missing) > 5 else "")
            lines.append(f"  scenes of the split not in this dataset: {len(self.scenes_missing)} ({names})")
        if self.out_of_range_pixels:
            lines.append(f"  pixels with ids outside 0..255 (written as ignore): {self.out_of_range_pixels}")
        total = int(self.label_pixel_counts.sum())
        if total:
            names = list(OCC3D_CLASSES[:17]) + ["sky"] if self.label_space == "occ3d" else list(OPENSEED_PROMPTS)
            counts = self.label_pixel_counts[: len(names)]
            shares = [f"{names[i]} {100.0 * c / total:.1f}%" for i, c in enumerate(counts) if c]
            ignored = self.label_pixel_counts[IGNORE_ID]
            if ignored:
                shares.append(f"ignore {100.0 * ignored / total:.1f}%")
            lines.append("  label pixels: " + ", ".join(shares))
        return "\n".join(lines)


def load_segmentor(spec: str) -> Segmentor:
    """Import the callable named by `module:function` or `path/to/file.py:function`."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"segmentor must look like 'module:function' or 'file.py:function', got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FileNotFoundError(f"segmentor file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{attr!r} in {module_name} is not a callable")
    return fn


def split_scene_names(version: str, split: str) -> Optional[List[str]]:
    """Scene names of an official split (None for "all"); raises on a split that does not fit the version."""
    if version not in SPLITS_BY_VERSION:
        raise ValueError(f"unknown nuScenes version {version!r}; expected one of {list(SPLITS_BY_VERSION)}")
    if split not in SPLITS_BY_VERSION[version]:
        raise ValueError(f"split {split!r} does not belong to {version}; use one of {SPLITS_BY_VERSION[version]}")
    if split == "all":
        return None
    from nuscenes.utils.splits import create_splits_scenes

    return list(create_splits_scenes()[split])


def label_path(out_root: Path, channel: str, image_filename: str) -> Path:
    """Where the label of an image goes: <out_root>/semantics/<CHANNEL>/<image file stem>.png."""
    return Path(out_root) / "semantics" / channel / (Path(image_filename).stem + ".png")


def camera_images(
    nusc, scene_names: Optional[Sequence[str]], cameras: Sequence[str], include_sweeps: bool
) -> Tuple[List[Tuple[str, str, str]], List[str], int]:
    """(channel, image filename relative to the data root, sample_data token) of every image to label.

    Walks each camera's sample_data chain from the scene's first keyframe to its end (in time
    order), keeping keyframes and, with `include_sweeps`, sweeps. Returns the images, the split's
    scenes missing from the dataset, and the number of scenes found.
    """
    by_name = {scene["name"]: scene for scene in nusc.scene}
    wanted = list(by_name) if scene_names is None else list(scene_names)
    missing = [name for name in wanted if name not in by_name]
    found = [by_name[name] for name in wanted if name in by_name]
    images: List[Tuple[str, str, str]] = []
    for scene in found:
        first_sample = nusc.get("sample", scene["first_sample_token"])
        for channel in cameras:
            if channel not in first_sample["data"]:
                raise ValueError(f"scene {scene['name']}: first sample {first_sample['token']} has no {channel} image")
            token = first_sample["data"][channel]
            while token:
                record = nusc.get("sample_data", token)
                if record["is_key_frame"] or include_sweeps:
                    images.append((channel, record["filename"], token))
                token = record["next"]
    return images, missing, len(found)


def segment_image(segmentor: Segmentor, image_path: Path, token: str) -> Tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image [H, W, 3], segmentor class map [H, W]) of one image, with shape checks."""
    if not image_path.is_file():
        raise FileNotFoundError(f"camera image not found: {image_path} (sample_data {token})")
    with Image.open(image_path) as img:
        rgb = np.asarray(img.convert("RGB"))
    class_map = segmentor(rgb)
    if hasattr(class_map, "detach"):
        class_map = class_map.detach().cpu().numpy()
    class_map = np.asarray(class_map)
    if class_map.shape != rgb.shape[:2]:
        raise ValueError(
            f"segmentor returned shape {class_map.shape} for {image_path} of size {rgb.shape[:2]}; "
            "it must return [H, W]"
        )
    return rgb, class_map


def relabel_source(source_labels: Path, channel: str, image_filename: str) -> np.ndarray:
    """The class map of an image from an existing label folder (<source>/<CHANNEL>/<stem>.png)."""
    path = Path(source_labels) / channel / (Path(image_filename).stem + ".png")
    if not path.is_file():
        raise FileNotFoundError(f"--source-labels has no label for {image_filename}: {path}")
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.uint8).astype(np.int64)


def resolve_mapping(config: "LabelsConfig") -> str:
    """The map a run uses: `--mapping`, else openseed (segmentor) / identity or from-occ3d (--source-labels)."""
    if config.mapping is not None:
        return config.mapping
    if config.source_labels is None:
        return "openseed"
    return "from-occ3d" if config.label_space == "openseed" else "identity"


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Write a uint8 label PNG atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(labels.astype(np.uint8), mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)


def run_labels(config: LabelsConfig) -> LabelRunSummary:
    """Label every camera image of the configured split (see the module docstring)."""
    from nuscenes.nuscenes import NuScenes

    scene_names = split_scene_names(config.version, config.split)
    if (config.segmentor is None) == (config.source_labels is None):
        raise ValueError("give exactly one of --segmentor (run a segmentor) and --source-labels (relabel PNGs)")
    mapping = resolve_mapping(config)
    lut = get_label_map(mapping, config.label_space)
    segmentor = load_segmentor(config.segmentor) if config.segmentor is not None else None
    data_dir = Path(config.data_dir)
    if not (data_dir / config.version).is_dir():
        raise FileNotFoundError(f"nuScenes tables not found: {data_dir / config.version}")
    nusc = NuScenes(version=config.version, dataroot=str(data_dir), verbose=False)
    images, missing, num_scenes = camera_images(nusc, scene_names, config.cameras, config.include_sweeps)
    if num_scenes == 0:
        raise ValueError(f"split {config.split!r} selects no scene of {config.version} in {data_dir}")
    out_root = Path(config.out_dir) if config.out_dir is not None else data_dir
    summary = LabelRunSummary(out_root=out_root, images_in_split=len(images), scenes=num_scenes, scenes_missing=missing,
                              label_space=config.label_space)
    write_folder_label_space(out_root / "semantics", config.label_space, mapping)
    todo = []
    for channel, filename, token in images:
        target = label_path(out_root, channel, filename)
        if target.is_file() and target.stat().st_size > 0:
            summary.skipped_existing += 1
        else:
            todo.append((channel, filename, token, target))
    if config.limit is not None:
        todo = todo[: config.limit]
    for channel, filename, token, target in tqdm(todo, desc="selfocc-labels", unit="img"):
        if segmentor is not None:
            _, class_map = segment_image(segmentor, data_dir / filename, token)
        else:
            class_map = relabel_source(Path(config.source_labels), channel, filename)
        labels, out_of_range = apply_label_map(class_map, lut)
        write_label_png(target, labels)
        summary.written += 1
        summary.out_of_range_pixels += out_of_range
        summary.label_pixel_counts += np.bincount(labels.ravel(), minlength=256)
    return summary


def entrypoint() -> None:
    """Console script `selfocc-labels`."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(LabelsConfig).main()


if __name__ == "__main__":
    entrypoint()
