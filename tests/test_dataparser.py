"""The nuscenes-data dataparser on the synthetic world: geometry, neighbours, splits, compatibility, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfocc_ns.data.frames import CAMERA_CHANNELS, neighbours
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.nuscenes_index import pose_matrix


def parse(root: Path, split: str = "train", **kwargs):
    config = SelfOccNuScenesDataParserConfig(data_dir=root, **kwargs)
    return config.setup().get_dataparser_outputs(split=split)


@pytest.fixture(scope="module")
def nusc(small_world):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(small_world), verbose=False)


@pytest.fixture(scope="module")
def train_index(small_world):
    return parse(small_world).metadata["selfocc"]


def test_official_mini_splits_select_the_right_scenes(small_world):
    train = parse(small_world, "train").metadata["selfocc"]
    val = parse(small_world, "val").metadata["selfocc"]
    test = parse(small_world, "test").metadata["selfocc"]
    assert [s.scene_name for s in train.scenes] == ["scene-0061"]
    assert [s.scene_name for s in val.scenes] == ["scene-0103"]
    assert [s.scene_name for s in test.scenes] == ["scene-0103"]  # nerfstudio "test" is the official val
    assert train.split == "mini_train" and val.split == "mini_val"
    assert len(train.samples) == 4 and train.cameras == CAMERA_CHANNELS


def test_frames_hold_keyframes_and_sweeps_in_time_order(train_index):
    frames = train_index.scenes[0].frames
    assert sum(f.is_keyframe for f in frames) == 4
    assert len(frames) == 4 + 3  # one sweep per gap
    stamps = [f.timestamp_us for f in frames]
    assert stamps == sorted(stamps)
    for f in frames:
        assert set(f.cameras) == set(CAMERA_CHANNELS)
        assert f.lidar_path is not None and f.lidar_path.is_file()
        if f.is_keyframe:
            assert f.occ_path is not None and f.occ_path.is_file()


def test_known_world_point_projects_to_the_known_pixel(small_world, nusc, train_index):
    """Annotated car centres, projected through the metadata alone, land on pixels labelled car (Occ3D 4)."""
    checked = hits = 0
    for s, t in train_index.samples:
        frame = train_index.scenes[s].frames[t]
        sample = nusc.get("sample", frame.sample_token)
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if not ann["category_name"].startswith("vehicle.car"):
                continue
            centre_global = np.asarray(ann["translation"])
            for cam in frame.cameras.values():
                global2cam = np.linalg.inv(cam.cam2global)
                p = global2cam[:3, :3] @ centre_global + global2cam[:3, 3]
                if p[2] < 2.0 or p[2] > 25.0:
                    continue
                u, v = (cam.intrinsics @ p)[:2] / p[2]
                if not (5 <= u < cam.width - 5 and 5 <= v < cam.height - 5):
                    continue
                labels = np.asarray(Image.open(cam.semantics_path))
                window = labels[int(v) - 1 : int(v) + 2, int(u) - 1 : int(u) + 2]
                checked += 1
                hits += int((window == 4).any())
    assert checked >= 3, "the world should show some parked cars close to the cameras"
    # An occluder may hide a centre; most visible centres must read "car".
    assert hits >= 0.7 * checked


def test_metric_scale_and_neighbours_match_the_raw_tables(nusc, train_index):
    frames = train_index.scenes[0].frames
    # Raw CAM_FRONT centres straight from the JSON tables (independent of the index code).
    raw = []
    for f in frames:
        sd = nusc.get("sample_data", f.cameras["CAM_FRONT"].sample_data_token)
        ego = nusc.get("ego_pose", sd["ego_pose_token"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        raw.append((pose_matrix(ego["rotation"], ego["translation"]) @ pose_matrix(cs["rotation"], cs["translation"]))[:3, 3])
    raw = np.stack(raw)
    index_positions = np.stack([f.front_position for f in frames])
    np.testing.assert_allclose(index_positions, raw, atol=1e-9)
    t = 3  # a middle keyframe
    prev, nxt = neighbours(frames, t, 0.4, 30.0)
    expected_prev = [j for j in range(t) if 0.4 <= np.linalg.norm(raw[j] - raw[t]) <= 30.0]
    expected_next = [j for j in range(t + 1, len(frames)) if 0.4 <= np.linalg.norm(raw[j] - raw[t]) <= 30.0]
    assert [n.frame_index for n in prev] == expected_prev
    assert [n.frame_index for n in nxt] == expected_next
    for n in prev + nxt:
        assert n.distance_m == pytest.approx(np.linalg.norm(raw[n.frame_index] - raw[t]), abs=1e-9)
    # Metric: the ego drives at a plausible speed between consecutive keyframes (0.5 s apart).
    keys = [f.index for f in frames if f.is_keyframe]
    speed = np.linalg.norm(raw[keys[1]] - raw[keys[0]]) / 0.5
    assert 3.0 <= speed <= 15.0


def test_one_scene_mode_matches_nerfstudios_builtin_cameras(small_world):
    from nerfstudio.data.dataparsers.nuscenes_dataparser import NuScenesDataParserConfig

    ours = parse(small_world, "train", data=Path("scene-0061"), cameras=("FRONT",), train_split_fraction=0.5)
    builtin = NuScenesDataParserConfig(
        data=Path("scene-0061"), data_dir=small_world, cameras=("FRONT",), train_split_fraction=0.5
    ).setup().get_dataparser_outputs(split="train")
    assert [p.name for p in ours.image_filenames] == [p.name for p in builtin.image_filenames]
    torch.testing.assert_close(ours.cameras.camera_to_worlds, builtin.cameras.camera_to_worlds, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.cameras.fx, builtin.cameras.fx)
    val = parse(small_world, "val", data=Path("scene-0061"), cameras=("FRONT",), train_split_fraction=0.5)
    builtin_val = NuScenesDataParserConfig(
        data=Path("scene-0061"), data_dir=small_world, cameras=("FRONT",), train_split_fraction=0.5
    ).setup().get_dataparser_outputs(split="val")
    torch.testing.assert_close(val.cameras.camera_to_worlds, builtin_val.cameras.camera_to_worlds, atol=1e-5, rtol=0)
    # The held-out keyframes are never offered to the train split's samplers.
    index = ours.metadata["selfocc"]
    held = [f.index for f in index.scenes[0].frames if f.held_out]
    assert len(held) == len(val.metadata["selfocc"].samples) and held


def test_dataparser_transform_maps_global_poses_to_the_cameras(small_world):
    out = parse(small_world, "train", data=Path("scene-0061"))
    index = out.metadata["selfocc"]
    frame = index.sample_frame(0)
    cam = frame.cameras[index.cameras[0]]
    transform = out.dataparser_transform.double().numpy()
    expected_t = (transform[:, :3] @ cam.cam2global[:3, 3] + transform[:, 3]) * out.dataparser_scale
    np.testing.assert_allclose(out.cameras.camera_to_worlds[0, :3, 3].numpy(), expected_t, atol=1e-4)


@pytest.mark.slow
def test_nerfacto_trains_two_cpu_steps_on_one_front_camera(small_world, tmp_path, monkeypatch):
    import torchmetrics.image.lpip as lpip_module
    from nerfstudio.configs.method_configs import method_configs
    from nerfstudio.scripts.train import train_loop

    # nerfacto builds LPIPS, whose AlexNet weights would be downloaded; no eval runs here, so stub it.
    monkeypatch.setattr(lpip_module, "LearnedPerceptualImagePatchSimilarity", lambda **kwargs: torch.nn.Identity())

    config = method_configs["nerfacto"]
    config.pipeline.datamanager.dataparser = SelfOccNuScenesDataParserConfig(
        data=Path("scene-0061"), data_dir=small_world, cameras=("FRONT",), train_split_fraction=0.5
    )
    config.machine.device_type = "cpu"
    config.mixed_precision = False
    config.max_num_iterations = 2
    config.vis = "tensorboard"
    config.output_dir = tmp_path
    config.steps_per_eval_batch = 10**6
    config.steps_per_eval_image = 10**6
    config.steps_per_eval_all_images = 10**6
    config.pipeline.datamanager.train_num_rays_per_batch = 256
    config.pipeline.datamanager.eval_num_rays_per_batch = 256
    config.pipeline.model.eval_num_rays_per_chunk = 256
    config.pipeline.model.implementation = "torch"
    config.set_timestamp()
    train_loop(local_rank=0, world_size=1, config=config)
    ckpts = list(tmp_path.rglob("step-*.ckpt"))
    assert ckpts, "nerfacto should have saved a checkpoint"


# -- bad input -------------------------------------------------------------------------------------------


@pytest.fixture()
def world_copy(small_world, tmp_path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(small_world, root)
    return root


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(), FileNotFoundError, "data root not found: .*nowhere"),
        (dict(version="v1.0-trainval"), FileNotFoundError, "v1.0-trainval.*v1.0-mini"),
        (dict(data=Path("scene-9999")), ValueError, "Unknown scene 'scene-9999'.*scene-0061"),
        (dict(split="val", data=Path("scene-0061"), train_split_fraction=1.0), ValueError,
         "val split of --data scene-0061 is empty"),
    ],
    ids=["data-root", "version", "scene", "empty-split"],
)
def test_bad_arguments_are_named(small_world, tmp_path, arguments, error, message):
    root = tmp_path / "nowhere" if message.startswith("data root") else small_world
    with pytest.raises(error, match=message):
        parse(root, **arguments)


@pytest.mark.parametrize(
    "sample, victim, message",
    [
        (1, lambda f: (f.cameras["CAM_BACK"].image_path, f.cameras["CAM_BACK"].sample_data_token), "Missing image"),
        (2, lambda f: (f.lidar_path, f.sample_token), "Missing LiDAR file"),
        (0, lambda f: (f.occ_path, f.sample_token), "Missing Occ3D ground truth"),
    ],
    ids=["image", "lidar", "gts"],
)
def test_missing_files_are_named_at_start_up(world_copy, train_index, sample, victim, message):
    path, token = victim(train_index.sample_frame(sample))
    (world_copy / path.relative_to(train_index.data_dir)).unlink()
    with pytest.raises(FileNotFoundError, match=message) as error:
        parse(world_copy)
    assert path.name in str(error.value) and token in str(error.value)


def test_unreadable_image_and_lidar_are_named_at_load_time(world_copy, train_index):
    from selfocc_ns.data.dataset import ImageGeometryConfig, SelfOccSampleDataset
    from selfocc_ns.data.sampling import FrameSamplingConfig

    frame = train_index.sample_frame(0)
    image = world_copy / frame.cameras["CAM_FRONT"].image_path.relative_to(train_index.data_dir)
    image.write_bytes(b"not a jpeg")
    index = parse(world_copy).metadata["selfocc"]
    dataset = SelfOccSampleDataset(index, ImageGeometryConfig(), FrameSamplingConfig(cur_prob=1.0), mode="eval")
    with pytest.raises(OSError, match=f"Unreadable image .*{re.escape(image.name)}.*{frame.sample_token}"):
        dataset[0]
    lidar = world_copy / frame.lidar_path.relative_to(train_index.data_dir)
    lidar.write_bytes(b"1234567")
    shutil.copy(Path(train_index.data_dir) / frame.cameras["CAM_FRONT"].image_path.relative_to(train_index.data_dir), image)
    with pytest.raises(ValueError, match=f"Unreadable LiDAR file .*{re.escape(lidar.name)}"):
        dataset[0]
