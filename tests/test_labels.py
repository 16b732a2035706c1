"""`selfocc-labels`: label maps, and the command on a tiny hand-made nuScenes-format folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tyro
from PIL import Image

from selfocc_ns.data.occ3d import CLASS_ID, IGNORE_ID, SKY_ID
from selfocc_ns.data.label_maps import (
    LABEL_SPACE_FILE,
    OPENSEED_PROMPTS,
    apply_label_map,
    folder_label_space,
    get_label_map,
)
from selfocc_ns.scripts.labels import LabelsConfig, label_path, load_segmentor, run_labels

HEIGHT, WIDTH = 8, 12
CHANNELS = ("CAM_FRONT", "CAM_BACK")
RED = {"CAM_FRONT": 40, "CAM_BACK": 220}
"""Flat image colour per camera: the toy segmentor reads it, so the test sees the image reached it."""

TOY_SEGMENTOR = """
import numpy as np

def segment(image):
    assert image.dtype == np.uint8 and image.shape[2] == 3
    rows, cols = np.mgrid[: image.shape[0], : image.shape[1]]
    bright = (image[..., 0] > 128).astype(np.int64)
    return (rows + cols + 5 * bright) % 22  # OpenSeeD ids 0..20, and 21 which no prompt has

def wrong_shape(image):
    return np.zeros((3, 3), dtype=np.int64)
"""


def expected_segment(channel: str) -> np.ndarray:
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    return (rows + cols + 5 * int(RED[channel] > 128)) % 22


# ---------------------------------------------------------------- label maps


def test_openseed_map_follows_the_official_table_with_sky_17():
    lut = get_label_map("openseed")
    assert len(OPENSEED_PROMPTS) == 21 and OPENSEED_PROMPTS[7] == "person" and OPENSEED_PROMPTS[20] == "sky"
    expected = [1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 14, 15, 15, 16, SKY_ID]
    assert lut[:21].tolist() == expected
    assert lut[7] == CLASS_ID["pedestrian"] and lut[16] == CLASS_ID["terrain"] and lut[18] == CLASS_ID["manmade"]
    assert (lut[21:] == IGNORE_ID).all()
    labels, out_of_range = apply_label_map(np.array([[0, 20, 21, -1, 300]]), lut)
    assert labels.tolist() == [[1, SKY_ID, IGNORE_ID, IGNORE_ID, IGNORE_ID]] and out_of_range == 2


def test_identity_and_json_maps(tmp_path):
    identity = get_label_map("identity")
    assert identity[:18].tolist() == list(range(18)) and identity[18] == IGNORE_ID and identity[255] == IGNORE_ID
    (tmp_path / "list.json").write_text(json.dumps([4, 17, 255]))
    assert get_label_map(tmp_path / "list.json")[:4].tolist() == [4, 17, 255, 255]
    (tmp_path / "dict.json").write_text(json.dumps({"3": 11, "200": 0}))
    lut = get_label_map(str(tmp_path / "dict.json"))
    assert (lut[3], lut[200], lut[0]) == (11, 0, IGNORE_ID)
    (tmp_path / "bad.json").write_text(json.dumps({"1": 40}))
    with pytest.raises(ValueError, match="must be 0..17 or 255"):
        get_label_map(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown label map"):
        get_label_map("cityscapes")
    with pytest.raises(ValueError, match="integer class ids"):
        apply_label_map(np.zeros((2, 2), dtype=np.float32), identity)


# ---------------------------------------------------------------- a tiny nuScenes-format folder


def _rec(token: str, **fields):
    return {"token": token, **fields}


def make_nuscenes(root: Path, version: str = "v1.0-mini") -> None:
    """Two scenes (scene-0061 of mini_train, scene-0103 of mini_val), 2 keyframes + 1 sweep per camera."""
    tables = {name: [] for name in ("category", "attribute", "visibility", "instance", "sample_annotation")}
    tables["sensor"] = [_rec(f"sensor_{c}", channel=c, modality="camera") for c in CHANNELS]
    tables["calibrated_sensor"] = [
        _rec(f"cs_{c}", sensor_token=f"sensor_{c}", translation=[1.0, 0.0, 1.5], rotation=[0.5, -0.5, 0.5, -0.5],
             camera_intrinsic=[[10.0, 0.0, 6.0], [0.0, 10.0, 4.0], [0.0, 0.0, 1.0]])
        for c in CHANNELS
    ]  # fmt: skip
    tables["log"] = [_rec("log0", logfile="log0", vehicle="v", date_captured="2018-01-01", location="boston-seaport")]
    tables["map"] = [_rec("map0", log_tokens=["log0"], category="semantic_prior", filename="maps/map0.png")]
    tables["scene"], tables["sample"], tables["sample_data"], tables["ego_pose"] = [], [], [], []
    t = 1_000_000
    for scene in ("scene-0061", "scene-0103"):
        samples = [f"{scene}_s0", f"{scene}_s1"]
        tables["scene"].append(
            _rec(
                f"tok_{scene}",
                log_token="log0",
                nbr_samples=2,
                first_sample_token=samples[0],
                last_sample_token=samples[1],
                name=scene,
                description="",
            )
        )
        for i, s in enumerate(samples):
            tables["sample"].append(
                _rec(
                    s,
                    timestamp=t + i * 500_000,
                    scene_token=f"tok_{scene}",
                    prev=samples[i - 1] if i else "",
                    next=samples[i + 1] if i == 0 else "",
                )
            )
        for c in CHANNELS:
            chain = [(samples[0], True, 0), (samples[1], False, 250_000), (samples[1], True, 500_000)]
            tokens = [f"{scene}_{c}_{k}" for k in range(len(chain))]
            for k, (sample, is_key, dt) in enumerate(chain):
                folder = "samples" if is_key else "sweeps"
                filename = f"{folder}/{c}/{scene}__{c}__{t + dt}.jpg"
                (root / filename).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (WIDTH, HEIGHT), (RED[c], 90, 90)).save(root / filename, quality=95)
                tables["ego_pose"].append(
                    _rec(f"ep_{tokens[k]}", timestamp=t + dt, rotation=[1.0, 0, 0, 0], translation=[0.0, 0, 0])
                )
                tables["sample_data"].append(_rec(
                    tokens[k], sample_token=sample, ego_pose_token=f"ep_{tokens[k]}", calibrated_sensor_token=f"cs_{c}",
                    timestamp=t + dt, fileformat="jpg", is_key_frame=is_key, height=HEIGHT, width=WIDTH,
                    filename=filename, prev=tokens[k - 1] if k else "",
                    next=tokens[k + 1] if k + 1 < len(chain) else "",
                ))  # fmt: skip
        t += 10_000_000
    (root / "maps").mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), 255).save(root / "maps" / "map0.png")  # the devkit opens the map mask at load time
    (root / version).mkdir(parents=True)
    for name, rows in tables.items():
        (root / version / f"{name}.json").write_text(json.dumps(rows))


@pytest.fixture()
def world(tmp_path):
    root = tmp_path / "nuscenes"
    make_nuscenes(root)
    segmentor_file = tmp_path / "toy_segmentor.py"
    segmentor_file.write_text(TOY_SEGMENTOR)
    return root, segmentor_file


def _cli(*args: str) -> LabelsConfig:
    return tyro.cli(LabelsConfig, args=list(args))


def test_labels_command_writes_mapped_pngs_and_resumes(world):
    root, seg = world
    args = ("--segmentor", f"{seg}:segment", "--data-dir", str(root), "--version", "v1.0-mini",
            "--split", "mini_train", "--cameras", *CHANNELS, "--include-sweeps")  # fmt: skip
    summary = _cli(*args).main()
    assert (summary.images_in_split, summary.written, summary.skipped_existing, summary.scenes) == (6, 6, 0, 1)
    lut = get_label_map("openseed")
    written = sorted((root / "semantics").rglob("*"))
    pngs = [p for p in written if p.is_file() and p.name != LABEL_SPACE_FILE]
    assert len(pngs) == 6 and all(p.suffix == ".png" for p in pngs)  # no leftover temporary files
    assert folder_label_space(root / "semantics") == "occ3d"
    for channel in CHANNELS:
        files = sorted((root / "semantics" / channel).glob("*.png"))
        assert [f.name for f in files] == [f"scene-0061__{channel}__{t}.png" for t in (1000000, 1250000, 1500000)]
        labels = np.asarray(Image.open(files[1]))
        assert labels.dtype == np.uint8 and labels.shape == (HEIGHT, WIDTH)
        assert np.array_equal(labels, lut[expected_segment(channel)])
    assert summary.label_pixel_counts[IGNORE_ID] > 0 and summary.label_pixel_counts[SKY_ID] > 0
    assert "written 6" in summary.format()

    again = _cli(*args).main()
    assert (again.written, again.skipped_existing) == (0, 6)
    (root / "semantics" / "CAM_BACK" / "scene-0061__CAM_BACK__1250000.png").unlink()
    resumed = _cli(*args).main()
    assert (resumed.written, resumed.skipped_existing) == (1, 5)


def test_labels_split_keyframes_out_dir_and_mapping(world, tmp_path):
    root, seg = world
    out = tmp_path / "labels_out"
    cfg = LabelsConfig(segmentor=f"{seg}:segment", data_dir=root, version="v1.0-mini", split="mini_val",
                       cameras=CHANNELS, mapping="identity", out_dir=out)  # fmt: skip
    summary = run_labels(cfg)
    assert (summary.images_in_split, summary.written) == (4, 4)  # 2 keyframes x 2 cameras, no sweeps
    target = label_path(out, "CAM_FRONT", "samples/CAM_FRONT/scene-0103__CAM_FRONT__11000000.jpg")
    assert target.is_file() and not (root / "semantics").exists()
    ids = expected_segment("CAM_FRONT")
    assert np.array_equal(np.asarray(Image.open(target)), np.where(ids <= 17, ids, IGNORE_ID))


def test_labels_errors(world):
    root, seg = world
    base = dict(data_dir=root, version="v1.0-mini", cameras=CHANNELS)
    with pytest.raises(ValueError, match="does not belong to v1.0-mini"):
        run_labels(LabelsConfig(segmentor=f"{seg}:segment", split="train", **base))
    with pytest.raises(ValueError, match=r"returned shape \(3, 3\)"):
        run_labels(LabelsConfig(segmentor=f"{seg}:wrong_shape", split="mini_val", **base))
    with pytest.raises(ValueError, match="module:function"):
        load_segmentor("no_colon_here")
    with pytest.raises(FileNotFoundError, match="nuScenes tables not found"):
        run_labels(
            LabelsConfig(
                segmentor=f"{seg}:segment", split="val", cameras=CHANNELS, version="v1.0-trainval", data_dir=root / "x"
            )
        )
    assert load_segmentor("numpy:zeros_like") is np.zeros_like


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "selfocc_ns.scripts.labels", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and "--include-sweeps" in result.stdout and "--mapping" in result.stdout


def test_labels_land_where_the_synthetic_world_keeps_its_own(small_world, tmp_path):
    """On the embedded world, the label files of both mini splits (with sweeps) are exactly its own label files."""
    seg = tmp_path / "const_segmentor.py"
    seg.write_text("import numpy as np\n\ndef segment(image):\n    return np.full(image.shape[:2], 4)\n")
    written = 0
    for split in ("mini_train", "mini_val"):
        cfg = LabelsConfig(segmentor=f"{seg}:segment", data_dir=small_world, version="v1.0-mini", split=split,
                           include_sweeps=True, mapping="identity", out_dir=tmp_path / "out")  # fmt: skip
        written += run_labels(cfg).written
    ours = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.png"))
    theirs = sorted(p.relative_to(small_world) for p in (small_world / "semantics").rglob("*.png"))
    assert written == len(ours) == len(theirs) > 0 and ours == theirs
    assert (np.asarray(Image.open(tmp_path / "out" / ours[0])) == 4).all()
