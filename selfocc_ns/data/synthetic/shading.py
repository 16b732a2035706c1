"""View-independent textures and Lambertian shading of ray hits, the sky, and LiDAR intensities.

Colour of a surface point = base colour x multi-octave value noise (in coordinates fixed to the
surface, so it moves with moving objects) x painted patterns (lane markings, paving joints,
windows) x (ambient + sun . normal). Nothing depends on the viewer except anti-aliasing: octaves
and pattern edges finer than the pixel footprint are faded to their mean (like mip-mapping), so
warping one image into another with the true geometry reproduces it up to occlusion and resampling.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

ASPHALT, PAVING, KERB, GRASS, PLAZA, FACADE, CAR_PAINT, GLASS, BARK, FOLIAGE, CLOTH, CONE, BARRIER, METAL = range(14)
"""Material codes (`Primitives.material`, `RayHits.material`)."""

SUN_DIRECTION = np.array([0.45, 0.3, 0.84], dtype=np.float32) / np.linalg.norm([0.45, 0.3, 0.84])
"""Unit vector towards the sun (global frame)."""
AMBIENT, SUN_GAIN = 0.5, 0.55

# (frequency in lattice cells per metre, amplitude) of the luminance noise octaves per material.
_OCTAVES: Dict[int, List[Tuple[float, float]]] = {
    ASPHALT: [(0.12, 0.18), (0.5, 0.14), (2.0, 0.10), (7.0, 0.07)],
    PAVING: [(0.2, 0.10), (0.9, 0.08), (3.5, 0.07)],
    KERB: [(0.5, 0.10), (2.5, 0.08)],
    GRASS: [(0.15, 0.25), (0.7, 0.20), (3.0, 0.15), (9.0, 0.08)],
    PLAZA: [(0.15, 0.12), (0.8, 0.10), (3.0, 0.08)],
    FACADE: [(0.1, 0.12), (0.45, 0.10), (2.0, 0.07), (6.0, 0.04)],
    CAR_PAINT: [(0.3, 0.12), (1.2, 0.08), (4.0, 0.05)],
    GLASS: [(0.4, 0.25), (1.5, 0.15)],
    BARK: [(1.0, 0.20), (4.0, 0.15)],
    FOLIAGE: [(0.5, 0.30), (1.6, 0.25), (5.0, 0.15)],
    CLOTH: [(1.0, 0.12), (4.0, 0.08)],
    CONE: [(2.0, 0.06)],
    BARRIER: [(1.0, 0.06), (4.0, 0.05)],
    METAL: [(1.0, 0.08), (4.0, 0.05)],
}
_GROUND_COLOURS = {
    ASPHALT: (0.33, 0.33, 0.35),
    PAVING: (0.62, 0.60, 0.57),
    KERB: (0.72, 0.71, 0.68),
    GRASS: (0.28, 0.45, 0.16),
    PLAZA: (0.58, 0.52, 0.45),
}
GLASS_COLOUR = np.array([0.10, 0.13, 0.17], dtype=np.float32)
ROOF_COLOUR = np.array([0.30, 0.29, 0.28], dtype=np.float32)
MARKING_COLOUR = np.array([0.92, 0.92, 0.88], dtype=np.float32)
LIDAR_REFLECTIVITY = np.array([12, 25, 30, 35, 28, 30, 45, 8, 20, 30, 20, 60, 50, 40], dtype=np.float32)
"""Per material, nuScenes-like intensity scale (0..255); lane markings are brighter (see lidar_intensity)."""

_TABLE_BITS = 8
_TABLE_SIZE = 1 << _TABLE_BITS
_NOISE_TABLES = np.random.default_rng(20231120).uniform(-1.0, 1.0, size=(8, _TABLE_SIZE * _TABLE_SIZE)).astype(
    np.float32
)
"""Fixed random lattice values, one table per octave (the texture must not depend on the seed of a run)."""


def value_noise(u: np.ndarray, v: np.ndarray, octave: int) -> np.ndarray:
    """Smooth 2D value noise in [-1, 1] on a unit lattice, periodic over 256 cells."""
    fu, fv = np.floor(u), np.floor(v)
    tu, tv = u - fu, v - fv
    su, sv = tu * tu * (3.0 - 2.0 * tu), tv * tv * (3.0 - 2.0 * tv)
    mask = _TABLE_SIZE - 1
    iu, iv = fu.astype(np.int32), fv.astype(np.int32)
    i00 = ((iv & mask) << _TABLE_BITS) | (iu & mask)
    i01 = ((iv & mask) << _TABLE_BITS) | ((iu + 1) & mask)
    i10 = (((iv + 1) & mask) << _TABLE_BITS) | (iu & mask)
    i11 = (((iv + 1) & mask) << _TABLE_BITS) | ((iu + 1) & mask)
    table = _NOISE_TABLES[octave % _NOISE_TABLES.shape[0]]
    a, b, c, d = table.take(i00), table.take(i01), table.take(i10), table.take(i11)
    ab = a + (b - a) * su
    cd = c + (d - c) * su
    return ab + (cd - ab) * sv


def octave_weight(frequency: float, footprint_m: np.ndarray) -> np.ndarray:
    """Anti-aliasing fade of an octave: 1 while a cell spans >= 6 pixels, 0 from 2 pixels per cell."""
    return np.clip(1.5 - 3.0 * frequency * footprint_m, 0.0, 1.0)


def fractal_noise(u: np.ndarray, v: np.ndarray, footprint_m: np.ndarray, octaves: List[Tuple[float, float]]
                  ) -> np.ndarray:
    """Sum of faded value-noise octaves (N,) at surface coordinates (u, v) in metres; each octave's lattice
    is rotated and shifted so that lattices don't align."""
    total = np.zeros(u.shape[0], dtype=np.float32)
    for k, (freq, amp) in enumerate(octaves):
        w = octave_weight(freq, footprint_m)
        live = np.count_nonzero(w)
        if live == 0:
            continue
        angle = 0.7 * (k + 1)
        c, s = np.float32(np.cos(angle) * freq), np.float32(np.sin(angle) * freq)
        if live < 0.6 * w.size:  # fine octaves only reach near pixels: evaluate them there only
            idx = np.nonzero(w)[0]
            uu, vv = u[idx], v[idx]
            noise = value_noise(c * uu - s * vv + np.float32(17.3 * k), s * uu + c * vv - np.float32(5.1 * k), k)
            total[idx] += np.float32(amp) * w[idx] * noise
        else:
            noise = value_noise(c * u - s * v + np.float32(17.3 * k), s * u + c * v - np.float32(5.1 * k), k)
            total += np.float32(amp) * w * noise
    return total


def line_coverage(offset_m: np.ndarray, half_width_m: float, footprint_m: np.ndarray) -> np.ndarray:
    """Fraction of a pixel (1D box of width `footprint_m` centred at `offset_m`) covered by a line |x| <= w/2."""
    half_fp = 0.5 * footprint_m
    overlap = np.minimum(offset_m + half_fp, half_width_m) - np.maximum(offset_m - half_fp, -half_width_m)
    return np.clip(overlap / np.maximum(footprint_m, 1e-6), 0.0, 1.0)


def stripe_coverage(coord_m: np.ndarray, period_m: float, width_m: float, footprint_m: np.ndarray) -> np.ndarray:
    """Coverage of periodic stripes (width `width_m` every `period_m`, centred at multiples of the period),
    faded to the mean duty cycle when the pixel footprint approaches the period."""
    offset = coord_m - period_m * np.round(coord_m / period_m)
    sharp = line_coverage(offset, 0.5 * width_m, footprint_m)
    blend = np.clip(2.0 * footprint_m / period_m - 0.5, 0.0, 1.0)
    return (1.0 - blend) * sharp + blend * (width_m / period_m)


def road_markings(s_m: np.ndarray, d_m: np.ndarray, footprint_m: np.ndarray, markings: Dict) -> np.ndarray:
    """Paint coverage (N,) of the lane markings at road coordinates (s, d)."""
    dash = stripe_coverage(s_m - 1.5, markings["dash_period_m"], markings["dash_length_m"], footprint_m)
    paint = line_coverage(d_m, 0.075, footprint_m) * dash
    for edge_d in markings["edge_lines_d_m"]:
        paint = np.maximum(paint, line_coverage(d_m - edge_d, 0.06, footprint_m))
    for s0, s1 in markings["crosswalks_s_m"]:
        inside = line_coverage(s_m - 0.5 * (s0 + s1), 0.5 * (s1 - s0), footprint_m)
        zebra = stripe_coverage(d_m, 1.0, 0.5, footprint_m)
        paint = np.maximum(paint, inside * zebra)
    return paint


def sky_colour(dirs: np.ndarray) -> np.ndarray:
    """(N, 3) sky colour by direction: haze at the horizon to blue at the zenith."""
    elevation = np.clip(dirs[:, 2], -1.0, 1.0)
    up = np.sqrt(np.clip(elevation, 0.0, 1.0))[:, None]
    horizon = np.array([0.80, 0.85, 0.90], dtype=np.float32)
    zenith = np.array([0.33, 0.52, 0.83], dtype=np.float32)
    return horizon + (zenith - horizon) * up


def _mix(channels: List[np.ndarray], colour, weight: np.ndarray) -> List[np.ndarray]:
    """Blend base-colour channels towards `colour` (3 floats or 3 arrays) by `weight` in [0, 1]."""
    return [c * (1 - weight) + np.float32(t) * weight if np.isscalar(t) else c * (1 - weight) + t * weight
            for c, t in zip(channels, colour)]


def shade(surf, dirs: np.ndarray, pixel_angle_rad: float, markings: Dict) -> np.ndarray:
    """(K, 3) float32 colours in [0, 1] of the hits `surf` (a surface.Surface) seen along `dirs` (K, 3).

    `pixel_angle_rad` is the angle one pixel subtends (1 / focal length); the footprint of a pixel on
    a surface is distance * pixel_angle / |cos(incidence)|. Hits are sorted by material so that every
    material works on one contiguous slice.
    """
    order = np.argsort(surf.material, kind="stable")
    material = surf.material[order]
    bounds = np.searchsorted(material, np.arange(len(_OCTAVES) + 1))
    nx, ny, nz = surf.nx[order], surf.ny[order], surf.nz[order]
    d = dirs[order]
    cos_inc = np.abs(nx * d[:, 0] + ny * d[:, 1] + nz * d[:, 2])
    footprint = surf.distance_m[order] * np.float32(pixel_angle_rad) / np.maximum(cos_inc, 0.1)
    u_surface, v_surface = surf.u[order], surf.v[order]
    u, v = u_surface + surf.offset_u[order], v_surface + surf.offset_v[order]
    z = surf.z[order].astype(np.float32)
    face = surf.face[order]
    road_s, road_d = surf.road_s[order], surf.road_d[order]
    rgb = [surf.red[order], surf.green[order], surf.blue[order]]
    lum = np.ones(order.shape[0], dtype=np.float32)
    for mat, octaves in _OCTAVES.items():
        sl = slice(bounds[mat], bounds[mat + 1])
        if sl.start == sl.stop:
            continue
        fp = footprint[sl]
        lum[sl] += fractal_noise(u[sl], v[sl], fp, octaves)
        base = [c[sl] for c in rgb]
        if mat == ASPHALT:
            base = _mix(base, MARKING_COLOUR, road_markings(road_s[sl], road_d[sl], fp, markings))
        elif mat in (PAVING, PLAZA):
            period, width = (1.2, 0.04) if mat == PAVING else (2.0, 0.05)
            joints = np.maximum(stripe_coverage(road_s[sl], period, width, fp),
                                stripe_coverage(road_d[sl], period, width, fp))
            lum[sl] *= 1.0 - 0.35 * joints
        elif mat == FACADE:
            across = stripe_coverage(u_surface[sl], 3.0, 1.4, fp)
            up = stripe_coverage(z[sl] - 1.9, 3.2, 1.6, fp) * (z[sl] > 1.0)
            base = _mix(base, GLASS_COLOUR * 1.4, across * up * (face[sl] == 0))
            base = _mix(base, ROOF_COLOUR, (face[sl] == 1).astype(np.float32))
        elif mat == GLASS:
            base = _mix(base, GLASS_COLOUR, (face[sl] == 0).astype(np.float32))
        elif mat == CONE:
            base = _mix(base, (0.95, 0.95, 0.95), line_coverage(z[sl] - 0.42, 0.07, fp))
        elif mat == BARRIER:
            base = _mix(base, (0.9, 0.9, 0.9), stripe_coverage(u_surface[sl] + z[sl], 0.8, 0.4, fp))
        for c, b in zip(rgb, base):
            c[sl] = b
    sun = SUN_DIRECTION
    light = AMBIENT * (0.85 + 0.15 * nz) + SUN_GAIN * np.maximum(nx * sun[0] + ny * sun[1] + nz * sun[2], 0.0)
    out = np.empty((order.shape[0], 3), dtype=np.float32)
    out[order] = np.stack(rgb, -1) * (lum * light)[:, None]
    return np.clip(out, 0.0, 1.0)


def ground_material(class_ids: np.ndarray) -> np.ndarray:
    """Material of the ground plane by its Occ3D class (driveable, sidewalk, other_flat, terrain)."""
    from selfocc_ns.data.synthetic.road import DRIVEABLE, OTHER_FLAT, SIDEWALK

    out = np.full(class_ids.shape, GRASS, dtype=np.int16)
    out[class_ids == DRIVEABLE] = ASPHALT
    out[class_ids == SIDEWALK] = PAVING
    out[class_ids == OTHER_FLAT] = PLAZA
    return out


def ground_colour(material: np.ndarray) -> np.ndarray:
    """(N, 3) base colours of ground/sidewalk materials."""
    table = np.zeros((len(_OCTAVES), 3), dtype=np.float32)
    for mat, col in _GROUND_COLOURS.items():
        table[mat] = col
    return table[material]


def lidar_intensity(surf, dirs: np.ndarray, markings: Dict) -> np.ndarray:
    """(K,) float32 return intensity of hits `surf` along `dirs` (K, 3): material reflectivity x cos(incidence);
    lane paint reflects strongly."""
    cos_inc = np.abs(surf.nx * dirs[:, 0] + surf.ny * dirs[:, 1] + surf.nz * dirs[:, 2])
    refl = LIDAR_REFLECTIVITY[surf.material]
    sel = np.nonzero(surf.material == ASPHALT)[0]
    if sel.size:
        paint = road_markings(surf.road_s[sel], surf.road_d[sel], np.full(sel.size, 0.05, np.float32), markings)
        refl[sel] += 80.0 * paint
    return np.round(refl * (0.3 + 0.7 * cos_inc)).astype(np.float32)
