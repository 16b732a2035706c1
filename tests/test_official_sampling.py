"""`frame_sampling="official"`: the official neighbour lists, anchor and source draws, and the keyframe redraw,
against hand-made frame sequences with known answers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pytest

from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.data.frames import CameraImage, Frame, SceneFrames, SelfOccIndex, neighbours, official_neighbours
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.sampling import FrameSamplingConfig, draw_official, step_generator

CHANNELS = ("CAM_FRONT", "CAM_BACK")


def pose(x_m: float, yaw_rad: float = 0.0) -> np.ndarray:
    out = np.eye(4)
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    out[:2, :2] = [[c, -s], [s, c]]
    out[0, 3] = x_m
    return out


def make_frames(xs_m: Sequence[float], yaws_rad: Sequence[float] = (), keyframes: Sequence[int] = ()) -> List[Frame]:
    """Frames whose ego sits at (x, 0, 0) with a yaw; CAM_FRONT is mounted 2 m ahead, so camera-centre distances
    differ from the ego distances the official code uses whenever the yaw changes."""
    yaws = list(yaws_rad) or [0.0] * len(xs_m)
    frames = []
    for i, (x, yaw) in enumerate(zip(xs_m, yaws)):
        mount = np.eye(4)
        mount[0, 3] = 2.0
        cams = {ch: CameraImage(ch, f"sd{i}{ch}", Path(f"/none/{i}{ch}.jpg"), i, 16, 9, np.eye(3),
                                mount if ch == "CAM_FRONT" else np.eye(4), pose(x, yaw)) for ch in CHANNELS}
        frames.append(Frame("scene", i, i in keyframes, i, cams, sample_token=f"t{i}" if i in keyframes else None))
    return frames


def test_official_lists_scan_outwards_until_max_dist_with_a_strict_min():
    """Ego x positions 0, 0.4, 1, 2, 9 (too far: the scan stops), 3 (never reached), then 5 frames ahead."""
    frames = make_frames([3.0, 0.4, 1.0, 2.0, 9.0, 3.0, 10.0, 10.2, 10.5, 11.0, 20.0])
    prev, nxt = official_neighbours(frames, 5, min_dist_m=0.4, max_dist_m=5.0)
    assert [(n.frame_index, round(n.distance_m, 6)) for n in prev] == []  # frame 4 (6 m) stops the scan at once
    prev, nxt = official_neighbours(frames, 3, min_dist_m=0.4, max_dist_m=5.0)
    # backwards from 2 m: 1 m (d 1), 0.4 m (d 1.6), then frame 0 at 3 m (d 1): nearest in time first
    assert [(n.frame_index, round(n.distance_m, 6)) for n in prev] == [(2, 1.0), (1, 1.6), (0, 1.0)]
    assert [n.frame_index for n in nxt] == []  # frame 4 at 9 m (d 7 > 5) breaks before frame 5 (d 1)
    prev, _ = official_neighbours(frames, 2, min_dist_m=0.6, max_dist_m=5.0)
    assert [n.frame_index for n in prev] == [0]  # frame 1 (d 0.6) is not strictly farther than min_dist
    # the camera-centre lists of this project: inclusive, every frame of the scene, no break
    cam_prev, cam_next = neighbours(frames, 3, 0.4, 5.0)
    assert [n.frame_index for n in cam_prev] == [0, 1, 2] and [n.frame_index for n in cam_next] == [5]


def test_official_distances_are_between_ego_positions_at_cam_front():
    """Two frames 1 m apart whose ego turned by 90 deg: the CAM_FRONT centres (2 m ahead of the ego) are at (2, 0)
    and (1, 2), sqrt(5) apart; the egos 1 m."""
    frames = make_frames([0.0, 1.0], yaws_rad=[0.0, np.pi / 2])
    assert official_neighbours(frames, 0, 0.0, 5.0)[1][0].distance_m == pytest.approx(1.0)
    assert neighbours(frames, 0, 0.0, 5.0)[1][0].distance_m == pytest.approx(np.sqrt(5.0))


def index_of(frames: List[Frame]) -> SelfOccIndex:
    keys = [(0, f.index) for f in frames if f.is_keyframe]
    return SelfOccIndex([SceneFrames("scene", "tok", frames)], keys, CHANNELS, Path("/none"), "v", "train")


def test_keyframes_without_both_sides_are_redrawn_and_sources_follow_the_anchor_gaussian():
    """Ego x = 0, 1, 1.5, 2, 6: keyframe 0 has no previous frame, so with cur_prob 1 (anchor = input) it is
    replaced by a random keyframe until one has frames on both sides (only frame 2 here). The sources of frame 2
    are drawn from its lists with p ~ exp(-(d - 0.5)^2 / 0.5): previous d = (0.5, 1.5), next d = (0.5, 4.5)."""
    frames = make_frames([0.0, 1.0, 1.5, 2.0, 6.0], keyframes=(0, 2, 4))
    index = index_of(frames)
    cfg = FrameSamplingConfig(cur_prob=1.0, min_dist_m=0.4, max_dist_m=5.0, source_max_dist_m=5.0,
                              frame_sampling="official")
    prev_counts, next_counts, redraws = Counter(), Counter(), []
    for step in range(1500):
        draw = draw_official(index, 0, CHANNELS, cfg, step_generator(0, step, 0))
        assert draw.sample_index == 1 and draw.anchor == 2 and draw.redraws >= 1
        redraws.append(draw.redraws)
        for prev, nxt in draw.sources:
            prev_counts[prev] += 1
            next_counts[nxt] += 1
    # the redraw picks uniformly among the 3 keyframes: geometric with success probability 1/3, mean 3
    assert abs(np.mean(redraws) - 3.0) < 0.25
    w = lambda d: np.exp(-((d - 0.5) ** 2) / 0.5)  # noqa: E731
    total = 1500 * len(CHANNELS)
    assert abs(prev_counts[1] / total - w(0.5) / (w(0.5) + w(1.5))) < 0.02 and set(prev_counts) == {1, 0}
    assert abs(next_counts[3] / total - w(0.5) / (w(0.5) + w(4.5))) < 0.005 and set(next_counts) <= {3, 4}
    # a pure function of the step's generator
    assert draw_official(index, 0, CHANNELS, cfg, step_generator(0, 9, 0)) == draw_official(
        index, 0, CHANNELS, cfg, step_generator(0, 9, 0))


def test_prev_anchor_comes_from_the_input_list_and_sources_from_the_anchors_lists():
    """cur_prob 0, prev_prob 1: the anchor is uniform over the input's previous list; an anchor without a
    previous frame of its own makes the input be redrawn with the same 'prev' choice."""
    frames = make_frames([0.0, 1.0, 2.0, 3.0, 4.0], keyframes=(3,))
    cfg = FrameSamplingConfig(cur_prob=0.0, prev_prob=1.0, min_dist_m=0.4, max_dist_m=2.5, source_max_dist_m=1.5,
                              frame_sampling="official")
    anchors = Counter(draw_official(index_of(frames), 0, CHANNELS, cfg, step_generator(1, s, 0)).anchor
                      for s in range(600))
    # the input's previous list (max 2.5 m) is frames 2 and 1; anchor 1 has frame 0 before it and 2 after it
    # (source lists: max 1.5 m), anchor 2 has 1 and 3: both qualify, each drawn half of the time
    assert set(anchors) == {1, 2} and abs(anchors[1] / 600 - 0.5) < 0.07
    draw = draw_official(index_of(frames), 0, CHANNELS, cfg, step_generator(1, 0, 0))
    assert all(p < draw.anchor < n for p, n in draw.sources)
    lonely = FrameSamplingConfig(cur_prob=1.0, max_dist_m=0.5, source_max_dist_m=0.5, frame_sampling="official")
    with pytest.raises(ValueError, match="no keyframe found"):
        draw_official(index_of(frames), 0, CHANNELS, lonely, step_generator(0, 0, 0))


def test_the_datamanager_draws_officially_and_replays(small_world):
    config = SelfOccDataManagerConfig(
        dataparser=SelfOccNuScenesDataParserConfig(data_dir=small_world), num_workers=0,
        sampling=FrameSamplingConfig(cur_prob=0.333, max_dist_m=6.0, source_max_dist_m=6.0, frame_sampling="official"),
    )
    dm = config.setup(device="cpu", test_mode="val")
    index = dm.train_index
    for step in range(6):
        batch, _ = dm.next_train(step)
        t, anchor = batch.info["frame_indices"][0]
        scene = next(s for s in index.scenes if s.scene_name == batch.scene_names[0])
        assert scene.frames[t].sample_token == batch.sample_tokens[0]
        prev, nxt = official_neighbours(scene.frames, anchor, 0.4, 6.0)
        for p, n in batch.info["source_frames"][0]:
            assert p in {x.frame_index for x in prev} and n in {x.frame_index for x in nxt}
    replay = config.setup(device="cpu", test_mode="val")
    assert replay.next_train(3)[0].info["frame_indices"] == dm.next_train(3)[0].info["frame_indices"]
