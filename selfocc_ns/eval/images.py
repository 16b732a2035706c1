"""Images written by `ns-eval --render-output-path` and `selfocc-eval --render-output-path`.

- `eval_depth_<idx:04d>.png`: the six anchor images (top row) above their rendered depth (nerfstudio's
  inverse-depth turbo colormap, 1..60 m), cameras side by side in rig order;
- `eval_occupancy_<idx:04d>.png`: bird's-eye views of the predicted occupancy (left) and the Occ3D
  ground truth (right) in the Occ3D palette, x forward = up (see `export_io.bev_image`).
`idx` is the sample's index in the eval split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from PIL import Image

from selfocc_ns.data.batch import SelfOccBatch

GAP_PX = 4
"""White gap between side-by-side panels."""


def depth_to_rgb(depth_m: torch.Tensor, near_m: float = 1.0, far_m: float = 60.0) -> np.ndarray:
    """(h, w) depth -> (h, w, 3) uint8 with nerfstudio's depth colormap (inverse depth, turbo)."""
    from nerfstudio.utils import colormaps

    rgb = colormaps.apply_depth_colormap(depth_m[..., None].float().cpu(), near_plane=near_m, far_plane=far_m)
    return (rgb.clamp(0, 1).numpy() * 255).astype(np.uint8)


def depth_panel(batch: SelfOccBatch, depth: torch.Tensor, item: int = 0) -> np.ndarray:
    """Anchor images (resized to the lattice) above the colour-mapped depth maps [N, h, w] of one item."""
    row = np.concatenate([depth_to_rgb(d) for d in depth], axis=1)
    h, w = depth.shape[-2:]
    images = torch.nn.functional.interpolate(batch.anchor_images[item].float().cpu(), size=(h, w), mode="bilinear",
                                             align_corners=False)
    inputs = (images.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)
    return np.concatenate([np.concatenate(list(inputs), axis=1), row], axis=0)


def side_by_side(panels: List[np.ndarray], gap_px: int = GAP_PX) -> np.ndarray:
    """RGB panels of equal height joined horizontally with white gaps."""
    height = panels[0].shape[0]
    gap = np.full((height, gap_px, 3), 255, dtype=np.uint8)
    parts: List[np.ndarray] = []
    for panel in panels:
        parts += [panel, gap]
    return np.concatenate(parts[:-1], axis=1)


def write_eval_images(folder: Path, batch: SelfOccBatch, outputs: Dict[str, Any], sample_index: int) -> List[Path]:
    """Write the depth and occupancy images of one evaluated sample (B = 1); returns the paths written."""
    from selfocc_ns.eval.export_io import bev_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    if "depth" in outputs:
        path = folder / f"eval_depth_{sample_index:04d}.png"
        Image.fromarray(depth_panel(batch, outputs["depth"][0])).save(path)
        written.append(path)
    if "occupancy" in outputs and batch.occ_semantics is not None:
        pred = bev_image(outputs["occupancy"][0], pixels_per_voxel=2)
        truth = bev_image(batch.occ_semantics[0].cpu().numpy().astype(np.uint8), pixels_per_voxel=2)
        path = folder / f"eval_occupancy_{sample_index:04d}.png"
        Image.fromarray(side_by_side([pred, truth])).save(path)
        written.append(path)
    return written
