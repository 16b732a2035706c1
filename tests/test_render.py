"""The nerfstudio render workflow on SelfOcc checkpoints: `ns-render dataset | spiral | interpolate | camera-path`.

Outside the viewer each camera is rendered from its nearest keyframe (selfocc_ns/viewer/keyframe_cameras.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_command, training_dir


def test_every_dataset_camera_is_rendered_from_its_own_keyframe(tiny_pipeline):
    from selfocc_ns.viewer.keyframe_cameras import KeyframeCameraRenderer

    renderer = KeyframeCameraRenderer(tiny_pipeline)
    dm = tiny_pipeline.datamanager
    for split, outputs, index in (("train", dm.train_dataparser_outputs, dm.train_index),
                                  ("eval", dm.eval_dataparser_outputs, dm.eval_index)):
        for i, image in enumerate(outputs.image_filenames):
            choice = renderer.choose(outputs.cameras[i : i + 1])
            frame = index.sample_frame(choice.sample_index)
            assert (choice.split, choice.world_split) == (split, split)
            assert choice.distance_m < 1e-4 and image in [c.image_path for c in frame.cameras.values()]


def test_a_path_camera_takes_the_keyframe_it_passes_closest_to(tiny_pipeline):
    """A camera 1 m behind eval keyframe 2's CAM_FRONT (in the eval world) is rendered from keyframe 2."""
    from selfocc_ns.data.nuscenes import OPENCV_TO_OPENGL
    from selfocc_ns.viewer.keyframe_cameras import KeyframeCameraRenderer

    renderer = KeyframeCameraRenderer(tiny_pipeline)
    dm = tiny_pipeline.datamanager
    front = dm.eval_index.sample_frame(2).cameras["CAM_FRONT"]
    cam2global = front.cam2global.copy()
    cam2global[:3, 3] -= cam2global[:3, 2] * 1.0  # 1 m back along the optical axis
    c2w_ns = renderer.worlds["eval"].nerfstudio_from_global(cam2global @ OPENCV_TO_OPENGL)[:3]
    camera = dm.eval_dataparser_outputs.cameras[0:1]
    camera.camera_to_worlds = torch.from_numpy(c2w_ns).float()[None]
    outputs = renderer(camera)
    choice = renderer.choices[-1]
    assert (choice.split, choice.sample_index, choice.world_split) == ("eval", 2, "eval")
    assert choice.distance_m <= 1.0 + 1e-6  # at most its own CAM_FRONT, 1 m away (another rig camera may be nearer)
    height, width = int(camera.height), int(camera.width)
    assert outputs["rgb"].shape == (height, width, 3) and outputs["depth"].shape == (height, width, 1)
    assert float(outputs["accumulation"].max()) > 0  # not the black fallback


def test_cameras_reach_a_lidar_frame_field_through_ego2ref(tiny_pipeline, monkeypatch):
    """With the LiDAR reference frame, a dataset camera is rendered at its pose in that frame (the batch's cam2ref)."""
    import selfocc_ns.viewer.keyframe_cameras as keyframe_cameras
    from selfocc_ns.data.dataset import collate_samples

    dm = tiny_pipeline.datamanager
    monkeypatch.setattr(dm.config, "reference_frame", "lidar")
    views = []
    render = keyframe_cameras.render_ego_camera
    monkeypatch.setattr(keyframe_cameras, "render_ego_camera",
                        lambda model, grid, view, chunk=None: views.append(view) or render(model, grid, view, chunk))
    renderer = keyframe_cameras.KeyframeCameraRenderer(tiny_pipeline)
    renderer(dm.eval_dataparser_outputs.cameras[0:1])
    choice = renderer.choices[-1]
    batch = collate_samples([dm.make_dataset(choice.split, "eval")[(choice.sample_index, 0, 0)]])
    assert not torch.allclose(batch.ego2ref_of(0), torch.eye(4, dtype=batch.ego2ref_of(0).dtype))
    image = dm.eval_dataparser_outputs.image_filenames[0]
    channel = next(c for c, cam in renderer.frame(choice).cameras.items() if cam.image_path == image)
    cam2ref = batch.anchor_cam2ego[0, dm.eval_index.cameras.index(channel)]
    assert torch.allclose(views[-1].cam2ego.double(), cam2ref.double(), atol=1e-4)


def camera_path_json(outputs, path: Path, cameras: int = 2) -> Path:
    """A viewer-style camera path through the first training cameras (what the viewer's render tab exports)."""
    cams = outputs.cameras
    height, width = int(cams.height[0]), int(cams.width[0])
    entries = []
    for i in range(cameras):
        c2w = np.eye(4)
        c2w[:3] = cams.camera_to_worlds[i].numpy()
        fov = math.degrees(2 * math.atan(height / (2 * float(cams.fy[i]))))
        entries.append({"camera_to_world": c2w.reshape(-1).tolist(), "fov": fov, "aspect": width / height})
    path.write_text(json.dumps({"render_height": height, "render_width": width, "camera_type": "perspective",
                                "seconds": 0.5, "camera_path": entries}))
    return path


@pytest.fixture
def render_in_process(tiny_run, tiny_pipeline, monkeypatch):
    """nerfstudio's render commands run in this process on the session pipeline (eval_setup not repeated)."""
    import yaml
    from nerfstudio.scripts import render

    config = yaml.load(tiny_run.read_text(), Loader=yaml.Loader)
    checkpoint = sorted((tiny_run.parent / "nerfstudio_models").glob("*.ckpt"))[-1]
    monkeypatch.setattr(render, "eval_setup", lambda *args, **kwargs: (config, tiny_pipeline, checkpoint, 0))
    monkeypatch.chdir(training_dir(tiny_run))
    return render


def test_ns_render_dataset_renders_every_camera_of_the_split(render_in_process, tiny_pipeline, tmp_path):
    from PIL import Image

    render_in_process.DatasetRender(load_config=Path("config.yml"), output_path=tmp_path, split="test",
                                    rendered_output_names=["depth"]).main()
    images = sorted((tmp_path / "test" / "depth").rglob("*.jpg"))
    assert len(images) == len(tiny_pipeline.datamanager.eval_dataparser_outputs.image_filenames) == 24
    assert all(np.asarray(Image.open(p)).std() > 0 for p in images)  # rendered, not the black fallback


def test_ns_render_interpolate_and_camera_path_write_videos(render_in_process, tiny_pipeline, tmp_path):
    assert shutil.which("ffmpeg"), "ns-render's videos need ffmpeg (README; .ci/run installs it)"
    interpolated, path_video = tmp_path / "interpolate.mp4", tmp_path / "path.mp4"
    render_in_process.RenderInterpolated(load_config=Path("config.yml"), output_path=interpolated,
                                         interpolation_steps=1, frame_rate=4, pose_source="eval").main()
    path_json = camera_path_json(tiny_pipeline.datamanager.train_dataparser_outputs, tmp_path / "path.json")
    render_in_process.RenderCameraPath(load_config=Path("config.yml"), output_path=path_video,
                                       camera_path_filename=path_json).main()
    for video in (interpolated, path_video):
        assert video.is_file() and video.stat().st_size > 1000


@pytest.mark.slow
def test_ns_render_spiral_cli_on_a_selfocc_checkpoint(tiny_run, tmp_path):
    """The real command line: eval_setup, nerfstudio's datamanager type checks, the first eval camera, ffmpeg."""
    assert shutil.which("ffmpeg"), "ns-render's videos need ffmpeg (README; .ci/run installs it)"
    out = tmp_path / "spiral.mp4"
    run_command(["ns-render", "spiral", "--load-config", str(tiny_run), "--output-path", str(out), "--seconds", "0.5",
                 "--frame-rate", "4"], cwd=training_dir(tiny_run))
    assert out.is_file() and out.stat().st_size > 1000
