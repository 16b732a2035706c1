"""Colour-mapped depth images written by `ns-eval --render-output-path` and `selfocc-eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from PIL import Image

from selfocc_ns.data.batch import SelfOccBatch


def depth_to_rgb(depth_m: torch.Tensor, near_m: float = 1.0, far_m: float = 60.0) -> np.ndarray:
    """(h, w) depth -> (h, w, 3) uint8 with nerfstudio's depth colormap (inverse depth, turbo)."""
    from nerfstudio.utils import colormaps

    rgb = colormaps.apply_depth_colormap(depth_m[..., None].float().cpu(), near_plane=near_m, far_plane=far_m)
    return (rgb.clamp(0, 1).numpy() * 255).astype(np.uint8)


def write_eval_images(folder: Path, batch: SelfOccBatch, outputs: Dict[str, Any], sample_index: int) -> None:
    """`<folder>/eval_depth_<idx:04d>.png`: the six cameras' rendered depth side by side, with inputs above."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if "depth" not in outputs:
        return
    depth = outputs["depth"][0]  # N h w
    row = np.concatenate([depth_to_rgb(d) for d in depth], axis=1)
    h, w = depth.shape[-2:]
    images = torch.nn.functional.interpolate(batch.anchor_images[0], size=(h, w), mode="bilinear", align_corners=False)
    inputs = (images.permute(0, 2, 3, 1).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    top = np.concatenate(list(inputs), axis=1)
    Image.fromarray(np.concatenate([top, row], axis=0)).save(folder / f"eval_depth_{sample_index:04d}.png")
