"""The sensor rig of the synthetic car: six nuScenes-like cameras and a LIDAR_TOP, plus pose helpers.

Frames: ego x forward, y left, z up (nuScenes); cameras OpenCV (x right, y down, z forward);
the LiDAR frame as on the real nuScenes car (x right, y forward, z up, i.e. yawed -90 deg to ego).
Quaternions are [w, x, y, z] as in the nuScenes tables. Intrinsics and mounts are rounded values
of the real v1.0-mini calibration (1600x900 images), scaled to the chosen image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from selfocc_ns.data.frames import CAMERA_CHANNELS

NUSCENES_IMAGE_WH: Tuple[int, int] = (1600, 900)
"""Size of the real nuScenes images the reference intrinsics refer to."""


@dataclass(frozen=True)
class CameraMount:
    """One camera of the rig: pose on the car and intrinsics at 1600x900."""

    channel: str
    translation_m: Tuple[float, float, float]
    """Camera centre in the ego frame."""
    yaw_deg: float
    """Heading of the optical axis in the ego frame, counter-clockwise from ego x."""
    pitch_deg: float
    """Small downward tilt of the optical axis (positive looks down), like the real mounts."""
    focal_px: float
    principal_px: Tuple[float, float]
    fire_offset_ms: float
    """When the camera fires relative to the frame's LiDAR time (nuScenes cameras fire as the LiDAR
    sweeps past them, so the six images of a frame are up to ~40 ms apart)."""


# Firing offsets: the LiDAR turns clockwise (seen from above) at 20 Hz starting behind CAM_FRONT; a camera
# fires when the beam crosses its optical axis: offset = clockwise angle / 360 * 50 ms - 8 ms.
CAMERA_MOUNTS: Tuple[CameraMount, ...] = (
    CameraMount("CAM_FRONT", (1.700, 0.016, 1.511), 0.0, 0.4, 1266.4, (816.3, 491.5), -8.0),
    CameraMount("CAM_FRONT_RIGHT", (1.551, -0.493, 1.496), -55.0, 0.6, 1260.8, (808.0, 495.3), -0.4),
    CameraMount("CAM_FRONT_LEFT", (1.524, 0.495, 1.509), 55.0, 0.3, 1272.6, (826.6, 479.8), 34.4),
    CameraMount("CAM_BACK", (0.028, 0.003, 1.579), 180.0, 0.5, 809.2, (829.2, 481.8), 17.0),
    CameraMount("CAM_BACK_LEFT", (1.036, 0.485, 1.591), 110.0, 0.4, 1256.7, (792.1, 492.8), 26.7),
    CameraMount("CAM_BACK_RIGHT", (1.015, -0.481, 1.562), -110.0, 0.7, 1259.5, (807.3, 501.2), 7.3),
)
assert tuple(m.channel for m in CAMERA_MOUNTS) == CAMERA_CHANNELS

LIDAR_CHANNEL = "LIDAR_TOP"
LIDAR_TRANSLATION_M: Tuple[float, float, float] = (0.943713, 0.0, 1.84023)
"""LIDAR_TOP position on the real nuScenes car (ego frame)."""
LIDAR_YAW_DEG = -90.0
"""LiDAR x points right, y forward: the sensor frame is yawed -90 deg relative to ego."""


@dataclass(frozen=True)
class LidarPattern:
    """Beam pattern of the simulated 32-beam spinning LiDAR (like the HDL-32E on the nuScenes car)."""

    beams: int = 32
    elevation_min_deg: float = -30.67
    elevation_max_deg: float = 10.67
    azimuth_step_deg: float = 0.4
    max_range_m: float = 70.0
    min_range_m: float = 1.0

    @property
    def columns(self) -> int:
        return round(360.0 / self.azimuth_step_deg)

    def elevations_rad(self) -> np.ndarray:
        """(beams,) beam elevations, ring 0 lowest."""
        return np.deg2rad(np.linspace(self.elevation_min_deg, self.elevation_max_deg, self.beams))

    def azimuths_rad(self) -> np.ndarray:
        """(columns,) azimuths in the LiDAR frame, counter-clockwise from its x axis, starting at -pi."""
        return -math.pi + np.arange(self.columns) * np.deg2rad(self.azimuth_step_deg)

    def directions(self) -> np.ndarray:
        """(beams, columns, 3) unit ray directions in the LiDAR frame."""
        el = self.elevations_rad()[:, None]
        az = self.azimuths_rad()[None, :]
        return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)), -1)


# ----------------------------------------------------------------------------------------------- rotations


def yaw_quaternion(yaw_rad: float) -> List[float]:
    """[w, x, y, z] of a rotation by `yaw_rad` about +z."""
    return [math.cos(yaw_rad / 2.0), 0.0, 0.0, math.sin(yaw_rad / 2.0)]


def quaternion_to_matrix(q_wxyz: Sequence[float]) -> np.ndarray:
    """3x3 rotation matrix of a (normalised) [w, x, y, z] quaternion."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray) -> List[float]:
    """[w, x, y, z] (w >= 0) of a 3x3 rotation matrix (Shepperd's method, stable for all angles)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    if q[0] < 0:
        q = [-c for c in q]
    norm = math.sqrt(sum(c * c for c in q))
    return [c / norm for c in q]


def pose_matrix(rotation_wxyz: Sequence[float], translation_m: Sequence[float]) -> np.ndarray:
    """4x4 float64 transform from a nuScenes (rotation, translation) record pair."""
    pose = np.eye(4)
    pose[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    pose[:3, 3] = np.asarray(translation_m, dtype=np.float64)
    return pose


def rotation_z(yaw_rad: float) -> np.ndarray:
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# OpenCV camera looking along ego +x: camera x -> ego -y, camera y -> ego -z, camera z -> ego +x.
_OPENCV_TO_FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_rotation(mount: CameraMount) -> np.ndarray:
    """3x3 camera (OpenCV) -> ego rotation of a mount: yaw about ego z after a small downward pitch."""
    pitch = math.radians(mount.pitch_deg)
    # Pitching down = rotating about the camera's own x axis (x right) so that +z tilts towards +y (down).
    c, s = math.cos(pitch), math.sin(pitch)
    pitch_cam = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])
    return rotation_z(math.radians(mount.yaw_deg)) @ _OPENCV_TO_FORWARD @ pitch_cam


def scaled_intrinsics(mount: CameraMount, width: int, height: int) -> np.ndarray:
    """3x3 pinhole matrix of `mount` for a `width` x `height` image.

    Pixel (i, j) covers [j, j + 1) x [i, i + 1) (centre (j + 0.5, i + 0.5), nerfstudio's convention), so
    resizing the image by s scales the first two rows of the matrix by s exactly.
    """
    sx = width / NUSCENES_IMAGE_WH[0]
    sy = height / NUSCENES_IMAGE_WH[1]
    cx, cy = mount.principal_px
    return np.array(
        [
            [mount.focal_px * sx, 0.0, cx * sx],
            [0.0, mount.focal_px * sy, cy * sy],
            [0.0, 0.0, 1.0],
        ]
    )


def camera_calibration(mount: CameraMount, width: int, height: int) -> Dict[str, object]:
    """calibrated_sensor fields (translation, rotation, camera_intrinsic) of a camera."""
    return {
        "translation": [float(v) for v in mount.translation_m],
        "rotation": matrix_to_quaternion(camera_rotation(mount)),
        "camera_intrinsic": scaled_intrinsics(mount, width, height).tolist(),
    }


def lidar_calibration() -> Dict[str, object]:
    """calibrated_sensor fields of LIDAR_TOP (no intrinsics)."""
    return {
        "translation": list(LIDAR_TRANSLATION_M),
        "rotation": yaw_quaternion(math.radians(LIDAR_YAW_DEG)),
        "camera_intrinsic": [],
    }
