"""`ns-eval` and `selfocc-eval` as a user runs them, on the session's tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_command, training_dir
from PIL import Image

from selfocc_ns.data.frames import CAMERA_CHANNELS
from selfocc_ns.eval.options import EvalOptions
from selfocc_ns.metrics import DEPTH_METRIC_NAMES



def test_ns_eval_writes_the_depth_protocol_baselines_and_pngs(tiny_run, tmp_path):
    """ns-eval: the preset's tasks (selfocc-tiny: depth and occupancy) on the 4 val keyframes, floats only."""
    out = tmp_path / "ns_eval.json"
    renders = tmp_path / "renders"
    run_command(["ns-eval", "--load-config", str(tiny_run), "--output-path", str(out), "--render-output-path",
                 str(renders)], cwd=training_dir(tiny_run))
    report = json.loads(out.read_text())
    assert report["method_name"] == "selfocc-tiny" and report["checkpoint"].endswith("step-000000005.ckpt")
    results = report["results"]
    assert all(isinstance(v, float) for v in results.values())
    for source in ("", "baseline/"):
        for mode in ("raw", "median"):
            for metric in DEPTH_METRIC_NAMES:
                key = f"depth/{source}{mode}/{metric}"
                assert key in results and f"{key}_std" in results, key
                for camera in CAMERA_CHANNELS:
                    assert f"depth/{source}{mode}/{camera}/{metric}" in results
    assert results["depth/num_images"] == 24 and results["depth/num_points"] > 10000
    assert results["depth/num_images_without_points"] == 0
    assert 0 < results["depth/raw/a1"] <= 1 and results["depth/raw/abs_rel"] > 0
    assert 1 < results["depth/baseline/depth_m"] < 80  # median training LiDAR depth
    assert results["occ/protocol/selfocc"] == 1.0 and results["occ/num_samples"] == 4
    assert "occ/baseline/flat_ground/iou" in results and "occ/miou_sum17" in results
    assert results["eval/lattice_fraction"] == 0.5 and results["depth/flip"] == 0.0
    for idx in range(4):
        depth_png = Image.open(renders / f"eval_depth_{idx:04d}.png")
        assert depth_png.size == (6 * 80, 2 * 38)  # six cameras side by side, input above depth (half of 160x77)
        assert Image.open(renders / f"eval_occupancy_{idx:04d}.png").size == (2 * 400 + 4, 400)


def test_selfocc_eval_cli_flags_table_progress_and_json(tiny_run, tmp_path):
    out = tmp_path / "eval.json"
    result = run_command(
        ["selfocc-eval", "--load-config", str(tiny_run), "--tasks", "depth", "novel-depth", "occupancy",
         "--occupancy-protocol", "occ3d", "--occupancy-threshold", "0.1", "--flip", "--max-samples", "1", "--split", "val",
         "--output-path", str(out)],
        cwd=training_dir(tiny_run),
    )
    report = json.loads(out.read_text())
    assert report["split"] == "mini_val" and report["num_samples"] == 1 and report["step"] == 5
    assert report["protocol"] == {"occupancy": "occ3d", "threshold_m": 0.1, "occupancy_mask": "camera",
                                  "depth_flip": True, "lattice_fraction": 0.5}
    results = report["results"]
    assert results["occ/protocol"] == "occ3d" and results["occ/threshold_m"] == 0.1 and results["depth/flip"] == 1.0
    assert "occ/miou" in results and "occ/miou_sum17" not in results  # the clean protocol: Occ3D's own mIoU
    assert results["depth/num_images"] == 6 and results["occ/num_samples"] == 1
    assert results["novel_depth/num_images"] > 0 and results["novel_depth_baseline/num_images"] == results[
        "novel_depth/num_images"]
    assert any(k.startswith("novel_depth/bin_") for k in results)
    for line in ("Occupancy [occ] protocol occ3d", "Depth [depth]: 6 images", "Novel depth [novel_depth]",
                 "Novel depth [novel_depth_baseline]", "flat ground", "evaluated 1 keyframes"):
        assert line in result.stdout, line
    assert "selfocc eval" in result.stderr and "1/1" in result.stderr  # tqdm progress bar



def test_selfocc_eval_load_step_picks_that_checkpoint(tiny_run, tmp_path):
    from selfocc_ns.scripts.eval import load_pipeline

    out = tmp_path / "step3.json"
    run_command(["selfocc-eval", "--load-config", str(tiny_run), "--load-step", "3", "--max-samples", "1",
                 "--lattice-fraction", "0.25", "--output-path", str(out)], cwd=training_dir(tiny_run))
    report = json.loads(out.read_text())
    assert report["step"] == 3 and report["checkpoint"].endswith("step-000000003.ckpt")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 4: .*found: step-000000003.ckpt, step-000000005.ckpt"):
        load_pipeline(tiny_run, load_step=4, max_workers=0)


def test_selfocc_eval_flags_default_to_the_runs_evaluation_options(tmp_path):
    """A run of an official preset is scored with its own (official) protocol unless a flag says otherwise."""
    import dataclasses

    import yaml

    from selfocc_ns.methods import selfocc
    from selfocc_ns.scripts.eval import cli

    config = selfocc.config
    run_options = config.pipeline.evaluation
    assert run_options.eval_lattice == "official" and run_options.novel_depth_gt == "keyframe_lidar2img"
    run_options = dataclasses.replace(run_options, tasks=("occupancy",), occupancy_threshold=0.25)
    config = dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, evaluation=run_options))
    path = tmp_path / "config.yml"
    path.write_text(yaml.dump(config), "utf8")

    parsed = cli(["--load-config", str(path)])
    assert parsed.evaluation == run_options and parsed.load_config == path
    parsed = cli([f"--load-config={path}", "--tasks", "depth", "--occupancy-mask", "lidar"])
    assert parsed.evaluation == dataclasses.replace(run_options, tasks=("depth",), occupancy_mask="lidar")
    # an unreadable config leaves the package defaults (eval_setup reports the real error in main())
    broken = tmp_path / "broken.yml"
    broken.write_text("{: not yaml", "utf8")
    assert cli(["--load-config", str(broken)]).evaluation == EvalOptions()
