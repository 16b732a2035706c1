"""`selfocc-demo`, the README's main job, end to end at test scale (the session world, 3 training steps)."""

from __future__ import annotations

import json

import pytest

from conftest import run_command


@pytest.mark.slow
def test_demo_trains_evaluates_and_prints_the_next_commands(small_world, tmp_path):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "world").symlink_to(small_world, target_is_directory=True)  # the demo reuses an existing world
    result = run_command(["selfocc-demo", "--workdir", str(workdir), "--steps", "3", "--max-minutes", "10"], cwd=tmp_path)
    out = result.stdout
    assert "using the existing world" in out
    assert "$ ns-train selfocc-tiny" in out and "--machine.device-type cpu" in out  # the real commands, echoed
    assert "$ selfocc-eval --load-config" in out
    report = json.loads((workdir / "eval.json").read_text())
    assert report["method_name"] == "selfocc-tiny" and report["step"] == 2 and report["split"] == "mini_val"
    results = report["results"]
    for key in ("depth/raw/abs_rel", "depth/baseline/raw/abs_rel", "occ/iou", "occ/baseline/flat_ground/iou"):
        assert 0.0 <= results[key] < 100.0, key
    config = sorted((workdir / "outputs").rglob("config.yml"))[-1]
    for line in (f"checkpoint: {report['checkpoint']}", f"ns-viewer --load-config {config}",
                 f"ns-eval --load-config {config}", f"selfocc-export --load-config {config}"):
        assert line in out, line
