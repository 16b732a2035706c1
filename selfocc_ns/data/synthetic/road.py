"""The street: a circular arc of road with raised sidewalks, in (s, d) road coordinates.

`s` is the arc length along the road centre line (metres, increasing in the ego's driving
direction), `d` the signed lateral offset from it (metres, positive to the left of the driving
direction). A very large radius gives a nearly straight road; the sign of the turn is `turn_sign`.
Everything is in the global frame (x, y metres, z up); the ground is the plane z = 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import numpy as np

from selfocc_ns.data.occ3d import CLASS_ID

DRIVEABLE = CLASS_ID["driveable_surface"]
SIDEWALK = CLASS_ID["sidewalk"]
TERRAIN = CLASS_ID["terrain"]
OTHER_FLAT = CLASS_ID["other_flat"]


@dataclass(frozen=True)
class ArcRoad:
    """A road along a circular arc, with a sidewalk on each side."""

    centre_x_m: float
    centre_y_m: float
    """Centre of the arc's circle (global)."""
    radius_m: float
    """Radius of the road's centre line."""
    turn_sign: int
    """+1: the road turns left (counter-clockwise) with increasing s; -1: right."""
    theta0_rad: float
    """Angle (seen from the circle centre) of the centre-line point s = 0."""
    half_width_m: float
    """Kerb-to-kerb half width of the carriageway."""
    sidewalk_width_m: float
    kerb_height_m: float
    s_min_m: float
    s_max_m: float
    """The street (sidewalks, buildings) exists for s in [s_min_m, s_max_m]; beyond is flat terrain."""
    lane_width_m: float = 3.5

    # ------------------------------------------------------------------ conversions

    def theta(self, s_m: np.ndarray) -> np.ndarray:
        return self.theta0_rad + self.turn_sign * np.asarray(s_m) / self.radius_m

    def radius_at(self, d_m: np.ndarray) -> np.ndarray:
        """Distance from the circle centre of points at lateral offset d (for a left turn, left is inwards)."""
        return self.radius_m - self.turn_sign * np.asarray(d_m)

    def xy(self, s_m: np.ndarray, d_m: np.ndarray) -> np.ndarray:
        """(..., 2) global xy of road coordinates (s, d)."""
        th = self.theta(s_m)
        r = self.radius_at(d_m)
        return np.stack([self.centre_x_m + r * np.cos(th), self.centre_y_m + r * np.sin(th)], axis=-1)

    def heading(self, s_m: np.ndarray) -> np.ndarray:
        """Yaw (rad, counter-clockwise from global x) of the direction of increasing s."""
        return self.theta(s_m) + self.turn_sign * (math.pi / 2.0)

    def sd(self, x_m: np.ndarray, y_m: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Road coordinates (s, d) of global points (valid for |s| < pi * radius)."""
        dx = np.asarray(x_m, dtype=np.float64) - self.centre_x_m
        dy = np.asarray(y_m, dtype=np.float64) - self.centre_y_m
        r = np.hypot(dx, dy)
        dtheta = np.angle(np.exp(1j * (np.arctan2(dy, dx) - self.theta0_rad)))  # wrapped to (-pi, pi]
        return self.turn_sign * self.radius_m * dtheta, self.turn_sign * (self.radius_m - r)

    # ------------------------------------------------------------------ sidewalk solids

    def sidewalk_radii(self) -> List[Tuple[float, float]]:
        """(r_inner, r_outer) of the two sidewalk slabs (left, right) around the circle centre."""
        out = []
        for side in (1.0, -1.0):
            d_near = side * self.half_width_m
            d_far = side * (self.half_width_m + self.sidewalk_width_m)
            r_a, r_b = float(self.radius_at(d_near)), float(self.radius_at(d_far))
            out.append((min(r_a, r_b), max(r_a, r_b)))
        return out

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)

    @staticmethod
    def from_dict(values: Dict[str, float]) -> "ArcRoad":
        return ArcRoad(**values)


@dataclass(frozen=True)
class GroundPatches:
    """Class of the flat ground beyond the sidewalks: intervals of s per side (terrain or other_flat)."""

    left: Tuple[Tuple[float, float, int], ...]
    """(s_start, s_end, class id) on the left side (d > 0)."""
    right: Tuple[Tuple[float, float, int], ...]
    default_class: int = TERRAIN

    def to_dict(self) -> Dict[str, object]:
        return {"left": [list(p) for p in self.left], "right": [list(p) for p in self.right],
                "default_class": self.default_class}

    @staticmethod
    def from_dict(values: Dict[str, object]) -> "GroundPatches":
        return GroundPatches(
            left=tuple((float(a), float(b), int(c)) for a, b, c in values["left"]),
            right=tuple((float(a), float(b), int(c)) for a, b, c in values["right"]),
            default_class=int(values["default_class"]),
        )


def ground_class(road: ArcRoad, patches: GroundPatches, x_m: np.ndarray, y_m: np.ndarray) -> np.ndarray:
    """Occ3D class id (uint8) of the ground solid z <= 0 under global points (x, y).

    The carriageway is driveable_surface, the sidewalk band sidewalk (the raised slab sits on it),
    and beyond it the patches of terrain / other_flat; outside the street's s range, terrain.
    """
    s, d = road.sd(x_m, y_m)
    return ground_class_sd(road, patches, s, d)


def ground_class_sd(road: ArcRoad, patches: GroundPatches, s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """`ground_class` from road coordinates (s, d)."""
    out = np.full(s.shape, patches.default_class, dtype=np.uint8)
    in_street = (s >= road.s_min_m) & (s <= road.s_max_m)
    for side, intervals in ((1.0, patches.left), (-1.0, patches.right)):
        beyond = in_street & (side * d > road.half_width_m + road.sidewalk_width_m)
        for s0, s1, cls in intervals:
            out[beyond & (s >= s0) & (s < s1)] = cls
    abs_d = np.abs(d)
    out[in_street & (abs_d <= road.half_width_m + road.sidewalk_width_m)] = SIDEWALK
    out[abs_d <= road.half_width_m] = DRIVEABLE  # the carriageway continues beyond the street's ends
    return out
