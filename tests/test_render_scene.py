"""`selfocc-render-scene`: the chase-view voxel ray-cast against hand geometry, and the video of a scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from selfocc_ns.data.occ3d import FREE_ID, OCC3D_SHAPE
from selfocc_ns.scripts.render_scene import (
    BACKGROUND_RGB,
    SceneVideoOptions,
    look_at_rays,
    raycast_voxels,
    render_scene_frames,
    write_video,
)


def free_grid() -> torch.Tensor:
    return torch.full(OCC3D_SHAPE, FREE_ID, dtype=torch.uint8)


def test_raycast_hits_the_top_face_of_a_ground_slab_at_the_computed_distance():
    grid = free_grid()
    grid[:, :, :2] = 11  # z in [-1.0, -0.2] m
    origins, directions = look_at_rays((0.2, 0.2, 20.0), (0.2, 0.21, 0.0), (8, 8), fov_deg=10.0)
    cls, distance, axis = raycast_voxels(grid, origins.reshape(-1, 3), directions.reshape(-1, 3), step_m=0.05)
    cos = directions.reshape(-1, 3)[:, 2].abs()
    expected = (20.0 - (-0.2)) / cos  # eye height above the slab's top face, along each ray
    assert torch.all(cls == 11) and torch.all(axis == 2)
    assert torch.all(distance >= expected - 1e-3) and torch.all(distance <= expected + 0.05 + 1e-3)


def test_raycast_hits_a_wall_through_its_x_face_and_misses_into_background():
    grid = free_grid()
    grid[150] = 15  # the wall x in [20.0, 20.4] m
    origins = torch.tensor([[0.0, 0.2, 1.0], [0.0, 0.2, 1.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    cls, distance, axis = raycast_voxels(grid, origins, directions, step_m=0.1)
    assert cls.tolist() == [15, -1] and axis.tolist() == [0, -1]
    assert 20.0 <= float(distance[0]) < 20.1 and torch.isinf(distance[1])


def test_scene_video_frames_show_chase_view_and_panels(tiny_pipeline, tmp_path):
    import mediapy
    from PIL import Image

    options = SceneVideoOptions(camera_width=64, render_width=32, chase_hw=(96, 96))
    frames = render_scene_frames(tiny_pipeline, "scene-0103", options, max_keyframes=2, progress=False)
    assert len(frames) == 2 and frames[0].shape == frames[1].shape
    height, width, _ = frames[0].shape
    assert height % 2 == 0 and width % 2 == 0
    # panels: inputs, depth and semantics mosaics (2 rows of 3 cameras, 64 px wide) right of a square chase view
    camera_h = round(90 * 768 / 900 * 64 / 160)
    assert height == 3 * 2 * camera_h + height % 2 and width == height + 3 * 64
    chase = frames[0][:, :height]
    assert (np.abs(chase.astype(int) - BACKGROUND_RGB).sum(-1) > 30).mean() > 0.05  # voxels drawn
    assert (chase.min(-1) > 200).any()  # the white ego box
    gif = write_video(tmp_path / "scene.gif", frames, fps=2)
    with Image.open(gif) as image:
        assert image.n_frames == 2 and image.info["duration"] == 500
    mp4 = write_video(tmp_path / "scene.mp4", frames, fps=2)
    assert mediapy.read_video(str(mp4)).shape[:3] == (2, height, width)


def test_unknown_scene_names_the_scenes_there(tiny_pipeline):
    with pytest.raises(ValueError, match="--scene scene-9999: no keyframe .*scene-0103.*scene-0061"):
        render_scene_frames(tiny_pipeline, "scene-9999", progress=False)


def test_output_is_checked_before_loading(tmp_path):
    from selfocc_ns.eval.outputs import OutputPathError
    from selfocc_ns.scripts.render_scene import SelfOccRenderScene

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputPathError, match="--output"):
        SelfOccRenderScene(load_config=Path("/nonexistent.yml"), scene="scene-0103", output=blocker / "v.mp4").main()
