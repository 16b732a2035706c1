"""Photometric augmentation of the network's input images, as the official `PhotoMetricDistortionMultiViewImage`.

The official training pipeline distorts each input camera image independently, on float32 BGR values in
0..255 before normalisation and resizing, with no clipping, in this order (draws from `numpy.random`):

1. with probability 1/2: add U(-32, 32) to every value (brightness);
2. draw the contrast mode (0 or 1); mode 1: with probability 1/2 multiply by U(0.8, 1.2) (contrast first);
3. BGR -> HSV (OpenCV on float32: H in degrees [0, 360), S = (V - min) / V, V = max, in 0..255 units);
4. with probability 1/2: S *= U(0.8, 1.2);
5. with probability 1/2: H += U(-18, 18), then H -= 360 where H > 360 and H += 360 where H < 0;
6. HSV -> BGR;
7. mode 0: with probability 1/2 multiply by U(0.8, 1.2) (contrast last);
8. one more coin is drawn for the channel swap, which the official configs disable.

`draw_photometric` makes the draws (in that order) from a `numpy.random.Generator` the dataset seeds from
(seed, step, rank, item), so a resumed run replays them; `apply_photometric` applies them with OpenCV's float
colour conversions (what the official `mmcv.bgr2hsv` / `hsv2bgr` call). `bgr_to_hsv_reference` and
`hsv_to_bgr_reference` are plain numpy versions of those conversions, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

BRIGHTNESS_DELTA = 32.0
"""Official brightness range: +- this, in 0..255 units."""
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_DELTA_DEG = 18.0
_FLT_EPSILON = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class PhotometricDraws:
    """The random choices of one image (None: that step is skipped)."""

    brightness_delta: Optional[float] = None
    contrast_first: bool = False
    """Contrast before the HSV steps (official mode 1) instead of after them (mode 0)."""
    contrast_alpha: Optional[float] = None
    saturation_scale: Optional[float] = None
    hue_delta_deg: Optional[float] = None


def draw_photometric(rng: np.random.Generator) -> PhotometricDraws:
    """One image's draws, in the official order (module docstring, including the unused channel-swap coin)."""

    def maybe(low: float, high: float) -> Optional[float]:
        return float(rng.uniform(low, high)) if rng.integers(2) else None

    brightness = maybe(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    contrast_first = bool(rng.integers(2))
    alpha = maybe(*CONTRAST_RANGE) if contrast_first else None
    saturation = maybe(*SATURATION_RANGE)
    hue = maybe(-HUE_DELTA_DEG, HUE_DELTA_DEG)
    if not contrast_first:
        alpha = maybe(*CONTRAST_RANGE)
    rng.integers(2)  # the channel-swap coin (use_swap_channel=False in the official configs)
    return PhotometricDraws(brightness, contrast_first, alpha, saturation, hue)


def apply_photometric(bgr: np.ndarray, draws: PhotometricDraws) -> np.ndarray:
    """The distorted copy of a float32 BGR image [H, W, 3] in 0..255 units (float32, unclipped)."""
    import cv2

    img = np.array(bgr, dtype=np.float32, copy=True)
    if draws.brightness_delta is not None:
        img += np.float32(draws.brightness_delta)
    if draws.contrast_first and draws.contrast_alpha is not None:
        img *= np.float32(draws.contrast_alpha)
    hue, saturation, value = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))  # contiguous planes: fast arithmetic
    if draws.saturation_scale is not None:
        saturation *= np.float32(draws.saturation_scale)
    if draws.hue_delta_deg is not None:
        hue += np.float32(draws.hue_delta_deg)
        hue = np.where(hue > 360, hue - np.float32(360), hue)
        hue = np.where(hue < 0, hue + np.float32(360), hue)
    img = cv2.cvtColor(cv2.merge([hue, saturation, value]), cv2.COLOR_HSV2BGR)
    if not draws.contrast_first and draws.contrast_alpha is not None:
        img *= np.float32(draws.contrast_alpha)
    return img


def bgr_to_hsv_reference(bgr: np.ndarray) -> np.ndarray:
    """OpenCV's float BGR -> HSV in numpy: H = 60 (G - B) / diff (+ 120, 240 by max channel, + 360 if < 0)."""
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    v = np.maximum(np.maximum(b, g), r)
    diff = v - np.minimum(np.minimum(b, g), r)
    s = diff / (np.abs(v) + _FLT_EPSILON)
    k = 60.0 / (diff + _FLT_EPSILON)
    h = np.where(v == r, (g - b) * k, np.where(v == g, (b - r) * k + 120.0, (r - g) * k + 240.0))
    h = np.where(h < 0, h + 360.0, h)
    return np.stack([h, s, v], axis=-1)


def hsv_to_bgr_reference(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's float HSV -> BGR in numpy (sector of H / 60, wrapped into [0, 6))."""
    h, s, v = (hsv[..., i].astype(np.float64) for i in range(3))
    h6 = np.mod(h / 60.0, 6.0)
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    values = np.stack([v, v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))], axis=-1)
    order = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])  # (b, g, r) per sector
    out = np.take_along_axis(values, order[sector], axis=-1)
    return np.where((s == 0)[..., None], v[..., None].repeat(3, axis=-1), out)
