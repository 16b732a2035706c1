"""The nuScenes tables (v1.0 schema, as nuscenes-devkit 1.2.0 loads them) of the synthetic world.

Tokens are 32 hex digits derived from (seed, what, which), so a seed always gives the same tables.
As in real nuScenes, an ego_pose record shares its token with its sample_data record, a sweep's
sample_token is the next keyframe's sample, and every sensor's sample_data form one prev/next chain
per scene (keyframes and sweeps interleaved in time).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from selfocc_ns.data.frames import CAMERA_CHANNELS
from selfocc_ns.data.synthetic.rig import LIDAR_CHANNEL, matrix_to_quaternion, pose_matrix

TABLE_NAMES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
               "scene", "sample", "sample_data", "sample_annotation", "map")
"""Every table `nuscenes.NuScenes` loads."""

CATEGORIES = (
    ("animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", "Adult subcategory."),
    ("human.pedestrian.child", "Child subcategory."),
    ("human.pedestrian.construction_worker", "Construction worker"),
    ("human.pedestrian.personal_mobility", "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", "Police officer."),
    ("human.pedestrian.stroller", "Strollers."),
    ("human.pedestrian.wheelchair", "Wheelchairs."),
    ("movable_object.barrier", "Temporary road barrier placed in the scene."),
    ("movable_object.debris", "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", "All types of traffic cone."),
    ("static_object.bicycle_rack", "Area or device intended to park or secure the bicycles in a row."),
    ("vehicle.bicycle", "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", "Bendy bus subcategory."),
    ("vehicle.bus.rigid", "Rigid bus subcategory."),
    ("vehicle.car", "Vehicle designed primarily for personal use."),
    ("vehicle.construction", "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", "All types of ambulances."),
    ("vehicle.emergency.police", "All types of police vehicles."),
    ("vehicle.motorcycle", "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", "Any vehicle trailer."),
    ("vehicle.truck", "Vehicles primarily designed to haul cargo."),
)
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
VISIBILITIES = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
ANNOTATION_RADIUS_M = 60.0
"""Objects with a category are annotated at a keyframe when their centre is this close to the ego."""


def make_token(*parts: object) -> str:
    """Deterministic 32-hex-digit token of its parts."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class SensorRecord:
    """One sample_data (and its ego_pose) of the plan."""

    channel: str
    token: str
    timestamp_us: int
    filename: str
    """Relative to the dataroot."""
    ego_rotation: List[float]
    ego_translation: List[float]
    calibrated_sensor_token: str

    @property
    def ego2global(self) -> np.ndarray:
        return pose_matrix(self.ego_rotation, self.ego_translation)


@dataclass
class FramePlan:
    """One instant of a scene: a keyframe or a sweep, with its seven sample_data."""

    frame_index: int
    is_key_frame: bool
    timestamp_us: int
    """LIDAR_TOP time (= the sample timestamp of a keyframe)."""
    sample_token: str
    """Own sample for a keyframe, the next keyframe's sample for a sweep."""
    sensors: Dict[str, SensorRecord] = field(default_factory=dict)


@dataclass
class ScenePlan:
    name: str
    token: str
    log_token: str
    logfile: str
    map_token: str
    description: str
    calibration: Dict[str, Dict]
    """Per channel: calibrated_sensor record."""
    frames: List[FramePlan]
    sample_tokens: List[str]


def ego_pose_fields(ego2global: np.ndarray) -> Dict[str, List[float]]:
    return {"rotation": matrix_to_quaternion(ego2global[:3, :3]), "translation": [float(v) for v in ego2global[:3, 3]]}


def static_tables(seed: int) -> Dict[str, List[Dict]]:
    """category, attribute, visibility and sensor tables."""
    return {
        "category": [{"token": make_token(seed, "category", n), "name": n, "description": d} for n, d in CATEGORIES],
        "attribute": [{"token": make_token(seed, "attribute", n), "name": n, "description": n} for n in ATTRIBUTES],
        "visibility": [{"token": t, "level": lvl, "description": f"visibility of whole object is {lvl}"}
                       for t, lvl in VISIBILITIES],
        "sensor": [{"token": make_token(seed, "sensor", ch), "channel": ch,
                    "modality": "lidar" if ch == LIDAR_CHANNEL else "camera"}
                   for ch in CAMERA_CHANNELS + (LIDAR_CHANNEL,)],
    }


def scene_tables(seed: int, plan: ScenePlan, width: int, height: int, date: str) -> Dict[str, List[Dict]]:
    """log, map, calibrated_sensor, scene, sample, sample_data and ego_pose records of one scene."""
    out: Dict[str, List[Dict]] = {name: [] for name in ("log", "map", "calibrated_sensor", "scene", "sample",
                                                          "sample_data", "ego_pose")}
    out["log"].append({"token": plan.log_token, "logfile": plan.logfile, "vehicle": "n900", "date_captured": date,
                       "location": "synthetic-street"})
    out["map"].append({"token": plan.map_token, "log_tokens": [plan.log_token], "category": "semantic_prior",
                       "filename": f"maps/{plan.map_token}.png"})
    for channel, record in plan.calibration.items():
        out["calibrated_sensor"].append(dict(record, sensor_token=make_token(seed, "sensor", channel)))
    out["scene"].append({"token": plan.token, "log_token": plan.log_token, "nbr_samples": len(plan.sample_tokens),
                         "first_sample_token": plan.sample_tokens[0], "last_sample_token": plan.sample_tokens[-1],
                         "name": plan.name, "description": plan.description})
    keyframes = [f for f in plan.frames if f.is_key_frame]
    for i, frame in enumerate(keyframes):
        out["sample"].append({"token": frame.sample_token, "timestamp": frame.timestamp_us,
                              "prev": keyframes[i - 1].sample_token if i > 0 else "",
                              "next": keyframes[i + 1].sample_token if i + 1 < len(keyframes) else "",
                              "scene_token": plan.token})
    for channel in plan.calibration:
        chain = [f.sensors[channel] for f in plan.frames]
        for i, (frame, rec) in enumerate(zip(plan.frames, chain)):
            is_camera = channel != LIDAR_CHANNEL
            out["sample_data"].append({
                "token": rec.token, "sample_token": frame.sample_token, "ego_pose_token": rec.token,
                "calibrated_sensor_token": rec.calibrated_sensor_token, "timestamp": rec.timestamp_us,
                "fileformat": "jpg" if is_camera else "pcd", "is_key_frame": frame.is_key_frame,
                "height": height if is_camera else 0, "width": width if is_camera else 0, "filename": rec.filename,
                "prev": chain[i - 1].token if i > 0 else "", "next": chain[i + 1].token if i + 1 < len(chain) else "",
            })
            out["ego_pose"].append({"token": rec.token, "timestamp": rec.timestamp_us, "rotation": rec.ego_rotation,
                                    "translation": rec.ego_translation})
    return out


def annotation_tables(seed: int, plan: ScenePlan, world, lidar_counts: Dict[int, Dict[int, int]]) -> Dict[str, List]:
    """instance and sample_annotation records of one scene.

    `lidar_counts[frame_index][object index]` = LiDAR returns on that object in the keyframe's sweep. An
    object with a category is annotated at a keyframe when its centre is within ANNOTATION_RADIUS_M of the
    ego; visibility is '4' when the LiDAR saw it, else '1' (no image-based visibility is computed).
    """
    per_object: Dict[int, List[Dict]] = {}
    for frame in plan.frames:
        if not frame.is_key_frame:
            continue
        ego_xy = frame.sensors[LIDAR_CHANNEL].ego2global[:2, 3]
        counts = lidar_counts.get(frame.frame_index, {})
        for i, obj in enumerate(world.objects):
            if obj["category"] is None:
                continue
            x, y, _, yaw = world.object_pose(i, frame.timestamp_us)
            if math.hypot(x - ego_xy[0], y - ego_xy[1]) > ANNOTATION_RADIUS_M:
                continue
            n_pts = int(counts.get(i, 0))
            per_object.setdefault(i, []).append({
                "token": make_token(seed, plan.name, "annotation", i, frame.sample_token),
                "sample_token": frame.sample_token, "instance_token": make_token(seed, plan.name, "instance", i),
                "visibility_token": "4" if n_pts > 0 else "1",
                "attribute_tokens": [make_token(seed, "attribute", obj["attribute"])] if obj["attribute"] else [],
                "translation": [x, y, obj["box_centre_z"]], "size": obj["box_wlh"],
                "rotation": [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)],
                "num_lidar_pts": n_pts, "num_radar_pts": 0,
            })
    instances, annotations = [], []
    for i, anns in sorted(per_object.items()):
        for k, ann in enumerate(anns):
            ann["prev"] = anns[k - 1]["token"] if k > 0 else ""
            ann["next"] = anns[k + 1]["token"] if k + 1 < len(anns) else ""
        annotations.extend(anns)
        instances.append({"token": anns[0]["instance_token"],
                          "category_token": make_token(seed, "category", world.objects[i]["category"]),
                          "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                          "last_annotation_token": anns[-1]["token"]})
    return {"instance": instances, "sample_annotation": annotations}


def write_tables(table_dir: Path, tables: Dict[str, List[Dict]], indent: Optional[int] = 0) -> None:
    """Write every table as `<name>.json` (all tables must be present, possibly empty)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    for name in TABLE_NAMES:
        with open(table_dir / f"{name}.json", "w") as f:
            json.dump(tables[name], f, indent=indent)
