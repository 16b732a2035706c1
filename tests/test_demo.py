"""`selfocc-demo`, the README's main job, end to end at test scale (the session world, 3 training steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_command
from selfocc_ns.scripts.demo import summary_lines


@pytest.mark.slow
def test_demo_trains_evaluates_and_prints_the_next_commands(small_world, tmp_path):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "world").symlink_to(small_world, target_is_directory=True)  # the demo reuses an existing world
    result = run_command(["selfocc-demo", "--workdir", str(workdir), "--steps", "3", "--max-minutes", "10", "--seed", "3"], cwd=tmp_path)
    out = result.stdout
    assert "using the existing world" in out
    assert "$ ns-train selfocc-tiny" in out and "--machine.device-type cpu" in out  # the real commands, echoed
    assert "--machine.seed 3 --pipeline.model.seed 3 --pipeline.datamanager.seed 3" in out
    assert "$ selfocc-eval --load-config" in out
    report = json.loads((workdir / "eval.json").read_text())
    assert report["method_name"] == "selfocc-tiny" and report["step"] == 2 and report["split"] == "mini_val"
    results = report["results"]
    assert report["num_samples"] == 4 and results["occ/num_samples"] == 4  # every val keyframe
    assert results["depth/num_images"] == 4 * 6 and results["depth/num_images_without_points"] == 0
    assert results["occ/baseline/flat_ground/iou"] == pytest.approx(flat_ground_iou(small_world), abs=1e-9)
    assert 0.0 <= results["occ/iou"] <= 1.0 and results["depth/raw/abs_rel"] > 0.0
    assert "\n".join(summary_lines(results)) in out  # the metrics beside the baselines, and the verdicts
    config = sorted((workdir / "outputs").rglob("config.yml"))[-1]
    for line in (f"checkpoint: {report['checkpoint']}", f"ns-viewer --load-config {config}",
                 f"ns-eval --load-config {config}", f"selfocc-export --load-config {config}"):
        assert line in out, line


def flat_ground_iou(world: Path) -> float:
    """The flat-ground baseline's IoU over the val scene's gts, by hand (official protocol): occupied where the
    official query point lies at z <= 0, z index >= 12 and a 6-voxel x/y border forced empty; ground truth
    occupied where the class is neither 17 (free) nor 0 (others); only mask_camera voxels count."""
    z_m = np.linspace(-1.0, 5.4, 16)
    pred = np.zeros((200, 200, 16), dtype=bool)
    pred[6:-6, 6:-6, :12] = (z_m[:12] <= 0.0)[None, None, :]
    tp = fp = fn = 0
    for labels_path in sorted((world / "gts" / "scene-0103").glob("*/labels.npz")):
        with np.load(labels_path) as labels:
            gt = (labels["semantics"] != 17) & (labels["semantics"] != 0)
            seen = labels["mask_camera"].astype(bool)
        tp += int((pred & gt & seen).sum())
        fp += int((pred & ~gt & seen).sum())
        fn += int((~pred & gt & seen).sum())
    return tp / (tp + fp + fn)


def test_demo_summary_prints_both_tasks_beside_their_baselines_with_a_verdict():
    results = {"occ/iou": 0.301, "occ/precision": 0.4, "occ/recall": 0.55, "occ/miou": 0.062, "occ/protocol": "selfocc",
               "occ/baseline/flat_ground/iou": 0.527, "occ/baseline/flat_ground/miou": 0.051,
               "depth/raw/abs_rel": 0.25, "depth/raw/a1": 0.6, "depth/baseline/raw/abs_rel": 0.471,
               "depth/baseline/raw/a1": 0.328}
    lines = summary_lines(results)
    assert "model IoU 30.1 (precision 40.0, recall 55.0), mIoU 6.2" in lines[0] and "flat ground IoU 52.7" in lines[0]
    assert lines[1] == "  verdict: occupancy is below flat ground by -22.6 IoU"
    assert lines[3] == "  verdict: depth beats constant depth by +0.221 abs_rel"
    results["occ/iou"] = 0.6
    assert summary_lines(results)[1] == "  verdict: occupancy beats flat ground by +7.3 IoU"
    assert summary_lines({"depth/raw/abs_rel": 0.5, "depth/raw/a1": 0.3, "depth/baseline/raw/abs_rel": 0.471,
                          "depth/baseline/raw/a1": 0.328})[1] == "  verdict: depth is below constant depth by -0.029 abs_rel"
