"""Occ3D-nuScenes constants: grid, class table, palette, and labels.npz read/write.

Grid: x, y in [-40, 40] m, z in [-1, 5.4] m, voxel 0.4 m, shape (200, 200, 16),
index order [x, y, z], index 0 at the minimum corner, ego frame of the keyframe (x forward, y left, z up).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

OCC3D_RANGE_M: Tuple[float, float, float, float, float, float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
"""(x_min, y_min, z_min, x_max, y_max, z_max) of the Occ3D-nuScenes grid in metres (ego frame)."""
OCC3D_VOXEL_M: float = 0.4
OCC3D_SHAPE: Tuple[int, int, int] = (200, 200, 16)

OCC3D_CLASSES: Tuple[str, ...] = (
    "others",  # 0
    "barrier",  # 1
    "bicycle",  # 2
    "bus",  # 3
    "car",  # 4
    "construction_vehicle",  # 5
    "motorcycle",  # 6
    "pedestrian",  # 7
    "traffic_cone",  # 8
    "trailer",  # 9
    "truck",  # 10
    "driveable_surface",  # 11
    "other_flat",  # 12
    "sidewalk",  # 13
    "terrain",  # 14
    "manmade",  # 15
    "vegetation",  # 16
    "free",  # 17
)
FREE_ID = 17
"""Occ3D 'free' class id in `labels.npz` semantics."""
SKY_ID = 17
"""In 2D semantic label PNGs, 17 means sky (there is no 'free' in an image)."""
IGNORE_ID = 255
"""In 2D semantic label PNGs, pixels to ignore."""
NUM_SEMANTIC_CHANNELS = 18
"""Semantic head width: Occ3D classes 0..16 plus sky."""

CLASS_ID: Dict[str, int] = {name: i for i, name in enumerate(OCC3D_CLASSES)}

# Occ3D / nuScenes-lidarseg-style palette (RGB, 0..255), index = class id; 17 (free / sky) light grey-blue.
OCC3D_PALETTE = np.array(
    [
        [0, 0, 0],  # others
        [255, 120, 50],  # barrier
        [255, 192, 203],  # bicycle
        [255, 255, 0],  # bus
        [0, 150, 245],  # car
        [0, 255, 255],  # construction_vehicle
        [200, 180, 0],  # motorcycle
        [255, 0, 0],  # pedestrian
        [255, 240, 150],  # traffic_cone
        [135, 60, 0],  # trailer
        [160, 32, 240],  # truck
        [255, 0, 255],  # driveable_surface
        [139, 137, 137],  # other_flat
        [75, 0, 75],  # sidewalk
        [150, 240, 80],  # terrain
        [230, 230, 250],  # manmade
        [0, 175, 0],  # vegetation
        [135, 206, 235],  # free / sky
    ],
    dtype=np.uint8,
)


def voxel_centres_m() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres of the Occ3D voxels along x, y, z in metres: shapes (200,), (200,), (16,)."""
    x_min, y_min, z_min = OCC3D_RANGE_M[:3]
    nx, ny, nz = OCC3D_SHAPE
    v = OCC3D_VOXEL_M
    return (
        x_min + (np.arange(nx) + 0.5) * v,
        y_min + (np.arange(ny) + 0.5) * v,
        z_min + (np.arange(nz) + 0.5) * v,
    )


def save_labels(path: Union[str, Path], semantics: np.ndarray, mask_lidar: np.ndarray, mask_camera: np.ndarray) -> None:
    """Write an Occ3D `labels.npz` (keys `semantics` uint8, `mask_lidar`, `mask_camera` uint8 0/1)."""
    path = Path(path)
    for name, arr in (("semantics", semantics), ("mask_lidar", mask_lidar), ("mask_camera", mask_camera)):
        if tuple(arr.shape) != OCC3D_SHAPE:
            raise ValueError(f"{name} has shape {arr.shape}, expected {OCC3D_SHAPE} for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        semantics=semantics.astype(np.uint8),
        mask_lidar=mask_lidar.astype(np.uint8),
        mask_camera=mask_camera.astype(np.uint8),
    )


def load_labels(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """Read an Occ3D `labels.npz`; raise one clear error naming the file if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Occ3D ground truth not found: {path}")
    try:
        with np.load(path) as data:
            out = {key: np.asarray(data[key]) for key in ("semantics", "mask_lidar", "mask_camera") if key in data}
    except Exception as err:  # zip/pickle errors differ by numpy version: report them all the same way
        raise ValueError(f"Occ3D ground truth unreadable: {path} ({err})") from err
    if "semantics" not in out or "mask_camera" not in out:
        raise ValueError(f"Occ3D ground truth {path} lacks 'semantics' or 'mask_camera' (keys: {sorted(out)})")
    for key, value in out.items():
        if tuple(value.shape) != OCC3D_SHAPE:
            raise ValueError(f"Occ3D ground truth {path}: {key} shape {value.shape} != {OCC3D_SHAPE}")
    return out
