"""Fault injection, data side: every corrupt input stops at start-up with one error naming the file, scene,
sample and channel (or, for what only decoding finds, with `--check-files True`).

Each test corrupts a private copy of the session world (`world_copy`) as a user would meet it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.validate import DataValidationError, label_coverage

VAL_SCENE = "scene-0103"


def parse(world: Path, split: str = "train", **flags):
    return SelfOccNuScenesDataParserConfig(data_dir=world, **flags).setup().get_dataparser_outputs(split=split)


def table(world: Path, name: str) -> list:
    return json.loads((world / "v1.0-mini" / f"{name}.json").read_text())


def write_table(world: Path, name: str, rows: list) -> None:
    (world / "v1.0-mini" / f"{name}.json").write_text(json.dumps(rows))


def keyframe_record(world: Path, channel: str, keyframe: int = 1, scene: str = "scene-0061") -> dict:
    """The sample_data record of `channel` at the scene's `keyframe`-th sample."""
    scene_token = next(s["token"] for s in table(world, "scene") if s["name"] == scene)
    samples = sorted((s for s in table(world, "sample") if s["scene_token"] == scene_token), key=lambda s: s["timestamp"])
    token = samples[keyframe]["token"]
    return next(sd for sd in table(world, "sample_data")
                if sd["sample_token"] == token and sd["is_key_frame"] and f"__{channel}__" in sd["filename"])


def test_clean_world_validates_and_reports_counts(small_world, capsys):
    parse(small_world)
    out = capsys.readouterr().out
    assert "mini_train data validated (42 images, 7 lidar, 4 gts)" in out


@pytest.mark.parametrize("field, value, message", [
    ("camera_intrinsic", [[math.nan, 0, 80], [0, 100, 45], [0, 0, 1]], "camera_intrinsic is not finite"),
    ("rotation", [math.nan, 0.0, 0.0, 1.0], "calibrated_sensor (cam2ego) is not finite"),
])
def test_nan_in_one_cameras_calibration_stops_at_start_up(world_copy, field, value, message):
    record = keyframe_record(world_copy, "CAM_FRONT_LEFT")
    sensors = table(world_copy, "calibrated_sensor")
    for cs in sensors:
        if cs["token"] == record["calibrated_sensor_token"]:
            cs[field] = value
    write_table(world_copy, "calibrated_sensor", sensors)
    with pytest.raises(DataValidationError, match="problem") as err:
        parse(world_copy)
    assert message in str(err.value) and "CAM_FRONT_LEFT" in str(err.value) and "scene scene-0061" in str(err.value)


def test_nan_in_an_ego_pose_names_its_sample_data(world_copy):
    record = keyframe_record(world_copy, "CAM_BACK", keyframe=2)
    poses = table(world_copy, "ego_pose")
    for pose in poses:
        if pose["token"] == record["ego_pose_token"]:
            pose["translation"][0] = math.nan
    write_table(world_copy, "ego_pose", poses)
    with pytest.raises(DataValidationError, match=f"ego_pose of sample_data {record['token']} is not finite"):
        parse(world_copy)


def test_sample_without_its_cam_back_record_names_sample_scene_and_channel(world_copy):
    record = keyframe_record(world_copy, "CAM_BACK", keyframe=2)
    write_table(world_copy, "sample_data", [sd for sd in table(world_copy, "sample_data") if sd["token"] != record["token"]])
    with pytest.raises(ValueError, match=f"sample {record['sample_token']} \\(scene scene-0061.*has no CAM_BACK sample_data"):
        parse(world_copy)


def test_dangling_sample_data_link_names_both_records(world_copy):
    """A sweep's CAM_BACK record missing: the neighbour's prev/next points nowhere (devkit: bare KeyError)."""
    sweep = next(sd for sd in table(world_copy, "sample_data") if not sd["is_key_frame"] and "__CAM_BACK__" in sd["filename"])
    write_table(world_copy, "sample_data", [sd for sd in table(world_copy, "sample_data") if sd["token"] != sweep["token"]])
    with pytest.raises(ValueError, match=f"sample_data {sweep['token']} is missing from .*sample_data.json: it is the "
                                         "(prev|next) of sample_data .* \\(CAM_BACK, sample .*, scene scene-0061\\)"):
        parse(world_copy)


def lidar_files(world: Path, folder: str = "samples") -> list:
    return sorted((world / folder / "LIDAR_TOP").glob("*.pcd.bin"))


def test_lidar_file_cut_mid_point_is_refused_at_start_up_and_on_read(world_copy):
    from selfocc_ns.data.dataset import load_lidar_points

    path = lidar_files(world_copy)[-1]  # a val keyframe
    path.write_bytes(path.read_bytes()[: 20_000 + 2])
    with pytest.raises(DataValidationError, match=re.escape(f"LiDAR file {path}") + " has 20002 bytes, not a whole number of 20-byte"):
        parse(world_copy, split="val")
    with pytest.raises(ValueError, match="20002 bytes is not a whole number of 20-byte points"):
        load_lidar_points(path, "test")


def test_missing_sweep_lidar_is_named_at_start_up(world_copy):
    path = lidar_files(world_copy, "sweeps")[0]
    path.unlink()
    with pytest.raises(DataValidationError, match=re.escape(f"Missing LiDAR file {path} (scene scene-0061, sweep frame 1, LIDAR_TOP)")):
        parse(world_copy)


def gts_file(world: Path, scene: str = VAL_SCENE) -> Path:
    return sorted((world / "gts" / scene).rglob("labels.npz"))[1]


@pytest.mark.parametrize("fault, message", [
    ("mask_camera_shape", "'mask_camera' has shape (200, 200), expected (200, 200, 16)"),
    ("semantics_float", "'semantics' has dtype float32, expected an integer type"),
    ("random_bytes", "unreadable Occ3D ground truth"),
    ("no_mask_camera", "has no 'mask_camera'"),
])
def test_corrupt_or_misshaped_gts_stop_at_start_up(world_copy, fault, message):
    path = gts_file(world_copy)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data}
    if fault == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    else:
        if fault == "mask_camera_shape":
            arrays["mask_camera"] = arrays["mask_camera"][..., 0]
        elif fault == "semantics_float":
            arrays["semantics"] = arrays["semantics"].astype(np.float32)
        else:
            arrays.pop("mask_camera")
        np.savez_compressed(path, **arrays)
    with pytest.raises(DataValidationError) as err:
        parse(world_copy, split="val")
    assert message in str(err.value) and str(path) in str(err.value) and "scene scene-0103, sample" in str(err.value)


def test_wrong_shape_mask_camera_on_read_names_the_file(world_copy):
    from selfocc_ns.data.occ3d import load_labels

    path = gts_file(world_copy)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data}
    arrays["mask_camera"] = arrays["mask_camera"][:100]
    np.savez_compressed(path, **arrays)
    with pytest.raises(ValueError, match=re.escape(f"{path}: mask_camera shape (100, 200, 16)")):
        load_labels(path)


@pytest.mark.parametrize("fault", ["truncated", "random_bytes"])
def test_corrupt_jpeg_is_found_by_check_files_at_start_up(world_copy, fault, capsys):
    path = sorted((world_copy / "sweeps" / "CAM_FRONT_RIGHT").glob("*.jpg"))[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if fault == "truncated" else np.random.default_rng(1).bytes(len(data)))
    parse(world_copy)  # the fast default only sees that the file exists
    with pytest.raises(DataValidationError, match=re.escape(f"unreadable image {path}") + ".*CAM_FRONT_RIGHT"):
        parse(world_copy, check_files=True)
    assert "selfocc --check-files (mini_train)" in capsys.readouterr().err  # the progress bar


def test_check_files_decodes_every_file_of_a_clean_world(small_world, capsys):
    parse(small_world, check_files=True)
    out = capsys.readouterr().out
    assert "decoded images" in out and "decoded lidar" in out and "decoded gts" in out and "decoded labels" in out


def test_every_problem_is_listed_in_one_error(world_copy):
    for path in lidar_files(world_copy, "sweeps")[:2]:
        path.unlink()
    next((world_copy / "samples" / "CAM_BACK").glob("*.jpg")).unlink()
    with pytest.raises(DataValidationError, match="3 problem\\(s\\)") as err:
        parse(world_copy)
    assert str(err.value).count("Missing") == 3


def test_label_coverage_counts_keyframes_and_sweeps(world_copy):
    index = parse(world_copy).metadata["selfocc"]
    assert label_coverage(index).describe() == "4 of 4 keyframes and 3 of 3 sweep frames have 2D labels for every camera"
    for png in (world_copy / "semantics").rglob("*.png"):
        if "__" in png.name and png.with_suffix(".jpg").name not in {p.name for p in (world_copy / "samples").rglob("*.jpg")}:
            png.unlink()
    index = parse(world_copy).metadata["selfocc"]
    coverage = label_coverage(index)
    assert (coverage.keyframes_labelled, coverage.sweeps_labelled) == (4, 0) and not coverage.complete
