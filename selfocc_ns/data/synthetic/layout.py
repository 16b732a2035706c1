"""Procedural street layout of one scene -> a JSON-serialisable world description.

The description is the single source of truth: `world.SceneWorld` rebuilds every solid from it, the
generator renders from that rebuilt world, and `load_world` reads the same JSON back. Objects have a
pose (static, or a track along a lane for moving vehicles) and parts in object-local coordinates
(x forward along the object, y left, z up from the ground). Parts are sunk 5 cm into what they stand
on, so an object and the ground never tie at their contact (occupancy then prefers the object).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from selfocc_ns.data.occ3d import CLASS_ID
from selfocc_ns.data.synthetic import shading as mat
from selfocc_ns.data.synthetic.raycast import BOX, CYLINDER, SPHERE
from selfocc_ns.data.synthetic.road import OTHER_FLAT, TERRAIN, ArcRoad

SINK_M = 0.05
"""How deep object parts reach into the surface they stand on."""
STREET_MARGIN_M = 120.0
"""Street (buildings, sidewalks) extent before the first and after the last ego position."""
MAP_MARGIN_M = 30.0
"""Smallest global x / y of the street area (the nuScenes map PNG starts at the global origin)."""

_FACADES = [(0.76, 0.68, 0.56), (0.62, 0.36, 0.28), (0.70, 0.70, 0.72), (0.55, 0.60, 0.66), (0.82, 0.78, 0.70),
            (0.48, 0.45, 0.42)]
_CAR_PAINTS = [(0.75, 0.10, 0.10), (0.12, 0.20, 0.55), (0.85, 0.85, 0.85), (0.15, 0.15, 0.16), (0.55, 0.57, 0.60),
               (0.20, 0.45, 0.25), (0.85, 0.60, 0.15)]


def _part(shape: int, centre, half, class_name: str, material: int, colour, yaw: float = 0.0) -> Dict:
    return {"shape": shape, "centre": [float(c) for c in centre], "half": [float(h) for h in half],
            "yaw": float(yaw), "class_id": CLASS_ID[class_name], "material": material,
            "colour": [float(c) for c in colour]}


def _object(parts: List[Dict], pose, rng: np.random.Generator, category: Optional[str] = None,
            attribute: Optional[str] = None, box_wlh=None, base_z: float = 0.0, track: int = -1) -> Dict:
    obj = {"parts": parts, "pose": [float(v) for v in pose], "track": track, "category": category,
           "attribute": attribute, "texture_offset": [float(v) for v in rng.uniform(0, 200, 2)]}
    if category is not None:
        obj["box_wlh"] = [float(v) for v in box_wlh]
        obj["box_centre_z"] = float(base_z + box_wlh[2] / 2.0)
    return obj


def _jitter(rng: np.random.Generator, colour, amount: float = 0.06) -> List[float]:
    return [float(np.clip(c + rng.uniform(-amount, amount), 0, 1)) for c in colour]


def vehicle_parts(rng: np.random.Generator, truck: bool = False) -> Tuple[List[Dict], List[float], str, str]:
    """Parts of a car (body + glass cabin) or a box truck; returns (parts, wlh, category, class name)."""
    paint = _jitter(rng, _CAR_PAINTS[rng.integers(len(_CAR_PAINTS))])
    if truck:
        length, width, height = rng.uniform(6.5, 8.0), rng.uniform(2.3, 2.5), rng.uniform(2.9, 3.4)
        cab = 1.9
        parts = [
            _part(BOX, (-cab / 2, 0, (height - SINK_M) / 2), (length / 2 - cab / 2, width / 2, (height + SINK_M) / 2),
                  "truck", mat.CAR_PAINT, _jitter(rng, (0.85, 0.85, 0.82))),
            _part(BOX, (length / 2 - cab / 2, 0, (2.4 - SINK_M) / 2), (cab / 2, width / 2 - 0.05, (2.4 + SINK_M) / 2),
                  "truck", mat.CAR_PAINT, paint),
        ]
        return parts, [width, length, height], "vehicle.truck", "truck"
    length, width, height = rng.uniform(4.2, 4.9), rng.uniform(1.8, 2.0), rng.uniform(1.45, 1.7)
    body_h = 0.6 * height
    parts = [
        _part(BOX, (0, 0, (body_h - SINK_M) / 2), (length / 2, width / 2, (body_h + SINK_M) / 2), "car",
              mat.CAR_PAINT, paint),
        _part(BOX, (-0.05 * length, 0, (body_h + height) / 2), (0.28 * length, width / 2 - 0.08, (height - body_h) / 2),
              "car", mat.GLASS, paint),
    ]
    return parts, [width, length, height], "vehicle.car", "car"


def _tree_parts(rng: np.random.Generator, base_z: float, big: bool) -> List[Dict]:
    trunk_h = rng.uniform(2.6, 3.4) + (1.0 if big else 0.0)
    trunk_r = rng.uniform(0.12, 0.2) + (0.08 if big else 0.0)
    crown_r = rng.uniform(1.4, 2.1) + (0.9 if big else 0.0)
    green = _jitter(rng, (0.22, 0.40, 0.14), 0.05)
    z0 = base_z - SINK_M
    top = base_z + trunk_h
    parts = [
        _part(CYLINDER, (0, 0, (z0 + top) / 2), (trunk_r, trunk_r, (top - z0) / 2), "vegetation", mat.BARK,
              _jitter(rng, (0.36, 0.26, 0.17), 0.04)),
        _part(SPHERE, (0, 0, top + 0.5 * crown_r), (crown_r,) * 3, "vegetation", mat.FOLIAGE, green),
    ]
    if rng.random() < 0.6:
        r2 = 0.7 * crown_r
        offset = rng.uniform(-0.6, 0.6, 2) * crown_r
        parts.append(_part(SPHERE, (offset[0], offset[1], top + 0.9 * crown_r), (r2,) * 3, "vegetation",
                           mat.FOLIAGE, _jitter(rng, green, 0.04)))
    return parts


def _pedestrian_parts(rng: np.random.Generator, base_z: float) -> Tuple[List[Dict], List[float]]:
    height = rng.uniform(1.6, 1.85)
    body_top = base_z + height - 0.24
    z0 = base_z - SINK_M
    parts = [
        _part(CYLINDER, (0, 0, (z0 + body_top) / 2), (0.24, 0.24, (body_top - z0) / 2), "pedestrian", mat.CLOTH,
              _jitter(rng, (rng.uniform(0.1, 0.8), rng.uniform(0.1, 0.6), rng.uniform(0.1, 0.7)), 0.0)),
        _part(SPHERE, (0, 0, base_z + height - 0.12), (0.12,) * 3, "pedestrian", mat.CLOTH, (0.80, 0.62, 0.50)),
    ]
    return parts, [0.6, 0.6, height]


def _cone_parts(base_z: float) -> List[Dict]:
    orange = (0.95, 0.45, 0.08)
    z0 = base_z - SINK_M
    stack = [(z0, base_z + 0.06, 0.2), (base_z + 0.06, base_z + 0.36, 0.13), (base_z + 0.36, base_z + 0.7, 0.07)]
    return [_part(CYLINDER, (0, 0, (a + b) / 2), (r, r, (b - a) / 2), "traffic_cone", mat.CONE, orange)
            for a, b, r in stack]


def _place(road: ArcRoad, s: float, d: float, flip: bool = False) -> Tuple[float, float, float]:
    x, y = road.xy(np.array(s), np.array(d))
    yaw = float(road.heading(np.array(s))) + (math.pi if flip else 0.0)
    return float(x), float(y), yaw


def _intervals(rng: np.random.Generator, s0: float, s1: float, gap: Tuple[float, float], length: Tuple[float, float]):
    """Consecutive (start, end) intervals from s0 to s1 with random gaps and lengths."""
    out, s = [], s0
    while True:
        s += rng.uniform(*gap)
        ln = rng.uniform(*length)
        if s + ln > s1:
            return out
        out.append((s, s + ln))
        s += ln


def scene_description(name: str, scene_index: int, seed: int, keyframes: int, t0_us: int,
                      moving_vehicles: int) -> Dict:
    """The world description (JSON-ready dict) of one scene."""
    rng = np.random.default_rng([seed, scene_index, 7])
    speed = float(rng.uniform(6.0, 9.0))
    travel = speed * 0.5 * max(keyframes - 1, 1)
    radius = float(rng.uniform(150.0, 500.0)) if rng.random() < 0.75 else 3000.0
    turn = int(rng.choice([-1, 1]))
    half_width = float(rng.uniform(5.6, 6.4))
    sidewalk = float(rng.uniform(2.5, 3.8))
    s_min, s_max = -STREET_MARGIN_M, travel + STREET_MARGIN_M
    theta0 = float(rng.uniform(-math.pi, math.pi))
    provisional = ArcRoad(0.0, 0.0, radius, turn, theta0, half_width, sidewalk, 0.15, s_min, s_max)
    ss, dd = np.meshgrid(np.linspace(s_min, s_max, 64), np.linspace(-45, 45, 7))
    xy = provisional.xy(ss, dd).reshape(-1, 2)
    shift = MAP_MARGIN_M - xy.min(axis=0)
    road = ArcRoad(float(shift[0]), float(shift[1]), radius, turn, theta0, half_width, sidewalk, 0.15, s_min, s_max)

    kerb_top = road.kerb_height_m
    objects: List[Dict] = []
    patches = {}
    for side_name, side in (("left", 1.0), ("right", -1.0)):
        outer = half_width + sidewalk
        patches[side_name] = [[a, b, int(rng.choice([TERRAIN, OTHER_FLAT]))]
                              for a, b in _intervals(rng, s_min, s_max, (0.0, 0.1), (8.0, 30.0))]
        # Buildings with gaps; big trees in some gaps.
        for a, b in _intervals(rng, s_min + 2, s_max - 2, (2.0, 10.0), (10.0, 28.0)):
            length = b - a
            if rng.random() < 0.15:
                x, y, _ = _place(road, (a + b) / 2, side * (outer + rng.uniform(3.0, 6.0)))
                objects.append(_object(_tree_parts(rng, 0.0, big=True), (x, y, 0.0, rng.uniform(0, 6.28)), rng))
                continue
            depth, height = rng.uniform(8.0, 16.0), rng.uniform(6.0, 22.0)
            setback = rng.uniform(0.8, 4.0) + length**2 / (8.0 * radius)
            x, y, yaw = _place(road, (a + b) / 2, side * (outer + setback + depth / 2))
            colour = _jitter(rng, _FACADES[rng.integers(len(_FACADES))], 0.04)
            parts = [_part(BOX, (0, 0, (height - SINK_M) / 2), (length / 2, depth / 2, (height + SINK_M) / 2),
                           "manmade", mat.FACADE, colour)]
            objects.append(_object(parts, (x, y, 0.0, yaw), rng))
        # Street trees and lamp posts on the sidewalk.
        for a, _ in _intervals(rng, s_min + 3, s_max - 3, (6.0, 12.0), (1.0, 2.0)):
            if rng.random() < 0.7:
                x, y, _ = _place(road, a, side * (half_width + 0.9))
                objects.append(_object(_tree_parts(rng, kerb_top, big=False), (x, y, 0.0, 0.0), rng))
        for a, _ in _intervals(rng, s_min + 5, s_max - 5, (18.0, 30.0), (1.0, 1.0)):
            x, y, _ = _place(road, a, side * (half_width + 0.35))
            parts = [_part(CYLINDER, (0, 0, (kerb_top - SINK_M + 6.0) / 2), (0.09, 0.09, (6.0 - kerb_top + SINK_M) / 2),
                           "manmade", mat.METAL, (0.45, 0.46, 0.48))]
            objects.append(_object(parts, (x, y, 0.0, 0.0), rng))
        # Pedestrians standing on the sidewalk.
        for a, _ in _intervals(rng, -40.0, travel + 60.0, (8.0, 30.0), (1.0, 1.0)):
            x, y, _ = _place(road, a, side * (half_width + rng.uniform(1.4, sidewalk - 0.4)))
            parts, wlh = _pedestrian_parts(rng, kerb_top)
            objects.append(_object(parts, (x, y, 0.0, rng.uniform(-math.pi, math.pi)), rng,
                                   "human.pedestrian.adult", "pedestrian.standing", wlh, kerb_top))

    # Cones and barriers in the parking lanes near the ego's path, then parked vehicles elsewhere.
    reserved: Dict[float, List[Tuple[float, float]]] = {1.0: [], -1.0: []}
    cone_side, cone_s = float(rng.choice([-1.0, 1.0])), float(rng.uniform(8.0, travel + 25.0))
    for k in range(4):
        x, y, _ = _place(road, cone_s + 1.6 * k, cone_side * (half_width - 0.7))
        objects.append(_object(_cone_parts(0.0), (x, y, 0.0, 0.0), rng, "movable_object.trafficcone", None,
                               [0.4, 0.4, 0.7]))
    reserved[cone_side].append((cone_s - 3.0, cone_s + 8.0))
    barrier_side, barrier_s = -cone_side, float(rng.uniform(0.0, travel + 30.0))
    for k in range(3):
        x, y, yaw = _place(road, barrier_s + 2.2 * k, barrier_side * (half_width - 0.5))
        parts = [_part(BOX, (0, 0, (0.9 - SINK_M) / 2), (1.0, 0.3, (0.9 + SINK_M) / 2), "barrier", mat.BARRIER,
                       (0.85, 0.15, 0.12))]
        objects.append(_object(parts, (x, y, 0.0, yaw), rng, "movable_object.barrier", None, [0.6, 2.0, 0.9]))
    reserved[barrier_side].append((barrier_s - 3.5, barrier_s + 8.0))
    for side in (1.0, -1.0):
        s = s_min + 2.0
        while s < s_max - 10.0:
            parts, wlh, category, _ = vehicle_parts(rng, truck=rng.random() < 0.1)
            a = s + rng.uniform(0.8, 7.0)
            b = a + wlh[1]
            s = b
            if rng.random() < 0.35 or any(a < r1 and b > r0 for r0, r1 in reserved[side]):
                continue
            x, y, yaw = _place(road, (a + b) / 2, side * (half_width - 0.2 - wlh[0] / 2), flip=side > 0)
            objects.append(_object(parts, (x, y, 0.0, yaw + rng.uniform(-0.03, 0.03)), rng, category,
                                   "vehicle.parked", wlh))

    crosswalk_s = float(travel + rng.uniform(12.0, 30.0))
    tracks = []
    lane = road.lane_width_m / 2
    for k in range(moving_vehicles):
        if k % 2 == 0:  # oncoming, passes the ego around mid-scene
            v = -float(rng.uniform(6.0, 10.0))
            meet_s = travel / 2 + 6.0 * k
            t_mid = 0.5 * 0.5 * max(keyframes - 1, 1)
            s0 = meet_s - v * t_mid + 0.0
            d = lane
        else:  # same lane ahead, about the ego's speed
            v = speed * float(rng.uniform(1.0, 1.1))
            s0 = float(rng.uniform(16.0, 24.0)) + 10.0 * k
            d = -lane
        tracks.append({"s0_m": float(s0), "d_m": float(d), "speed_mps": float(v), "t0_us": int(t0_us)})
        parts, wlh, category, _ = vehicle_parts(rng, truck=False)
        objects.append(_object(parts, (0.0, 0.0, 0.0, 0.0), rng, category, "vehicle.moving", wlh, track=k))

    return {
        "name": name,
        "seed": int(seed),
        "road": road.to_dict(),
        "ground_patches": {"left": patches["left"], "right": patches["right"], "default_class": TERRAIN},
        "markings": {
            "dash_period_m": 9.0,
            "dash_length_m": 3.0,
            "edge_lines_d_m": [half_width - 2.3, -(half_width - 2.3)],
            "crosswalks_s_m": [[crosswalk_s, crosswalk_s + 4.0]],
        },
        "ego": {"s0_m": 0.0, "d_m": -lane, "speed_mps": speed, "t0_us": int(t0_us)},
        "tracks": tracks,
        "objects": objects,
    }
