"""Which frames a training step uses (official `nuScenes_One_Frame_Sweeps_Dist`; docs/architecture.md).

- input: always a keyframe t;
- anchor (casts the training rays): t with probability `cur_prob`, else a frame before t (probability
  `prev_prob`) or after t, uniformly among keyframes and sweeps whose CAM_FRONT lies in
  [min_dist, max_dist] of t's;
- sources (reprojection): per camera one frame before and one after the anchor, among the anchor's
  neighbours in [min_dist, max_dist] (measured between that camera's centres), with probability
  proportional to a Gaussian of the distance (mean `source_mu_m`, sigma `source_sigma_m`).

`frame_sampling="official"` follows the official code exactly instead (`draw_official`): distances between
the ego positions at CAM_FRONT, each neighbour list scanned outwards until the first frame beyond max_dist,
strict min_dist; an input keyframe whose drawn list, or whose anchor's previous or next list, is empty is
replaced by a random keyframe of the split (the anchor choice kept); per camera and side the source is drawn
from the anchor's own CAM_FRONT lists, with the same probabilities for every camera.

Everything draws from a `numpy.random.Generator` the caller seeds from (seed, step, rank), so a resumed
run replays the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Sequence, Tuple

import numpy as np

from selfocc_ns.data.frames import Frame, Neighbour, SelfOccIndex, neighbours, official_neighbours

MAX_OFFICIAL_REDRAWS = 10_000
"""`draw_official` gives up (with an error naming the lists) after this many replaced input keyframes."""


@dataclass(frozen=True)
class FrameSamplingConfig:
    cur_prob: float = 0.333
    """Probability that the anchor is the input keyframe itself."""
    prev_prob: float = 0.5
    """Given the anchor is another frame, the probability that it lies before t."""
    min_dist_m: float = 0.4
    """Neighbours closer than this (CAM_FRONT centres) are too close to give parallax."""
    max_dist_m: float = 30.0
    """Anchor neighbours farther than this are not drawn (sources use `source_max_dist_m`)."""
    source_max_dist_m: float = 30.0
    """Sources farther than this from the anchor are not drawn."""
    source_mu_m: float = 0.5
    """Mean of the Gaussian weighting source distances."""
    source_sigma_m: float = 0.5
    """Sigma of the Gaussian weighting source distances."""
    frame_sampling: Literal["camera_centre", "official"] = "camera_centre"
    """'official': ego-at-CAM_FRONT distances, scan until max_dist, redraw the keyframe when a list is empty."""


def draw_anchor(frames: Sequence[Frame], t: int, cfg: FrameSamplingConfig, rng: np.random.Generator) -> int:
    """Index of the anchor frame for input keyframe `frames[t]`."""
    if rng.random() < cfg.cur_prob:
        return t
    prev, nxt = neighbours(frames, t, cfg.min_dist_m, cfg.max_dist_m)
    sides = [prev, nxt] if rng.random() < cfg.prev_prob else [nxt, prev]
    for side in sides:  # the other side when the drawn one is empty (scene start/end)
        if side:
            return side[int(rng.integers(len(side)))].frame_index
    return t  # ego standing still: nothing in range


def _camera_distances(frames: Sequence[Frame], anchor: int, channel: str) -> np.ndarray:
    centre = frames[anchor].cameras[channel].cam2global[:3, 3]
    return np.array([np.linalg.norm(f.cameras[channel].cam2global[:3, 3] - centre) for f in frames])


def draw_sources(
    frames: Sequence[Frame],
    anchor: int,
    channels: Sequence[str],
    cfg: FrameSamplingConfig,
    rng: np.random.Generator,
    counters: Dict[str, int] | None = None,
) -> List[Tuple[int, int]]:
    """Per camera channel, (previous, next) source frame indices of the anchor.

    A side with no frame in range borrows the other side's draw; with nothing in range at all the nearest
    frames in time are used (the reprojection then degenerates to identity, which auto-masking handles).
    Such fallbacks are counted in `counters`.
    """
    out: List[Tuple[int, int]] = []
    for channel in channels:
        dist = _camera_distances(frames, anchor, channel)
        usable = np.array([not f.held_out for f in frames]) & (dist >= cfg.min_dist_m) & (dist <= cfg.source_max_dist_m)
        usable[anchor] = False
        before = np.flatnonzero(usable[:anchor])
        after = anchor + 1 + np.flatnonzero(usable[anchor + 1 :])
        picks = []
        for side in (before, after):
            if len(side) == 0:
                picks.append(None)
                continue
            weight = np.exp(-0.5 * ((dist[side] - cfg.source_mu_m) / cfg.source_sigma_m) ** 2) + 1e-12
            picks.append(int(rng.choice(side, p=weight / weight.sum())))
        if picks[0] is None and picks[1] is None:
            _count(counters, "sources: nothing in range, nearest frames used")
            adjacent = [i for i in (anchor - 1, anchor + 1) if 0 <= i < len(frames) and not frames[i].held_out]
            adjacent = adjacent or [anchor]
            picks = [adjacent[0], adjacent[-1]]
        elif picks[0] is None or picks[1] is None:
            _count(counters, "sources: one side empty, other side used twice")
            picks = [picks[0] if picks[0] is not None else picks[1], picks[1] if picks[1] is not None else picks[0]]
        out.append((picks[0], picks[1]))
    return out


def _count(counters: Dict[str, int] | None, key: str) -> None:
    if counters is not None:
        counters[key] = counters.get(key, 0) + 1


@dataclass(frozen=True)
class OfficialDraw:
    """What `draw_official` drew for one batch item."""

    sample_index: int
    """The input keyframe (index into `SelfOccIndex.samples`): the requested one unless it was replaced."""
    anchor: int
    """Frame index of the anchor in the input keyframe's scene."""
    sources: List[Tuple[int, int]]
    """Per camera channel, the (previous, next) source frame indices."""
    redraws: int
    """How many times the input keyframe was replaced by a random one."""


def gaussian_choice(distances_m: Sequence[float], mu_m: float, sigma_m: float, rng: np.random.Generator) -> int:
    """Index into `distances_m` drawn with probability proportional to exp(-(d - mu)^2 / (2 sigma^2))."""
    d = np.asarray(distances_m, dtype=np.float64)
    weight = np.exp(-0.5 * ((d - mu_m) / sigma_m) ** 2)
    return int(rng.choice(len(d), p=weight / weight.sum()))


def draw_official(
    index: SelfOccIndex, sample_index: int, channels: Sequence[str], cfg: FrameSamplingConfig,
    rng: np.random.Generator,
) -> OfficialDraw:
    """Input keyframe, anchor and sources as the official `__getitem__` draws them (module docstring).

    The anchor side ('curr' with probability `cur_prob`, else 'prev' with `prev_prob`, else 'next') is drawn
    once; the input's lists use `max_dist_m`, the anchor's (source) lists `source_max_dist_m` (the official
    code has one max_dist; the presets set both equal). Raises when no keyframe qualifies.
    """
    if rng.random() < cfg.cur_prob:
        side = "curr"
    else:
        side = "prev" if rng.random() < cfg.prev_prob else "next"
    for redraws in range(MAX_OFFICIAL_REDRAWS):
        scene, t = index.samples[sample_index]
        frames = index.scenes[scene].frames
        anchor = t
        if side != "curr":
            candidates = official_neighbours(frames, t, cfg.min_dist_m, cfg.max_dist_m)[0 if side == "prev" else 1]
            anchor = candidates[int(rng.integers(len(candidates)))].frame_index if candidates else -1
        if anchor >= 0:
            source_lists = official_neighbours(frames, anchor, cfg.min_dist_m, cfg.source_max_dist_m)
            if all(source_lists):
                return OfficialDraw(sample_index, anchor, _official_sources(source_lists, channels, cfg, rng), redraws)
        sample_index = int(rng.integers(len(index.samples)))
    raise ValueError(
        f"frame_sampling 'official': no keyframe found with a {side!r} anchor whose previous and next frames lie "
        f"within ({cfg.min_dist_m}, {cfg.source_max_dist_m}] m after {MAX_OFFICIAL_REDRAWS} draws; lower min_dist_m "
        "or raise max_dist_m / source_max_dist_m")


def _official_sources(
    lists: Tuple[List[Neighbour], List[Neighbour]], channels: Sequence[str], cfg: FrameSamplingConfig,
    rng: np.random.Generator,
) -> List[Tuple[int, int]]:
    """Per camera (previous, next) from the anchor's two lists; all previous draws first, as the official order."""
    picks = [[side[gaussian_choice([n.distance_m for n in side], cfg.source_mu_m, cfg.source_sigma_m, rng)].frame_index
              for _ in channels] for side in lists]
    return list(zip(picks[0], picks[1]))


def step_generator(seed: int, step: int, rank: int, item: int = 0, stream: int = 0) -> np.random.Generator:
    """The generator of one batch item of one step on one rank: a pure function of its arguments.

    `stream` > 0 gives an independent generator for the same item (e.g. the photometric augmentation), so one
    consumer's draws never shift another's; stream 0 is the frame draws' generator.
    """
    spawn_key = (stream,) if stream else ()
    return np.random.default_rng(np.random.SeedSequence([seed, step, rank, item], spawn_key=spawn_key))
