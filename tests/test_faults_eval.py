"""Fault injection, evaluation side: outputs checked before work, JSON always valid, partial reports, masks."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from selfocc_ns.eval.outputs import OutputPathError, check_output_dir, check_output_file, json_safe


@pytest.mark.parametrize("where", ["under_a_file", "read_only", "is_a_folder"])
def test_output_paths_are_refused_before_any_work(tiny_run, tmp_path, where):
    from selfocc_ns.scripts.eval import SelfOccEval

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    path = {"under_a_file": blocker / "eval" / "report.json", "read_only": Path("/proc/selfocc/report.json"),
            "is_a_folder": tmp_path}[where]
    message = {"under_a_file": f"{blocker} is a file", "read_only": "is not writable", "is_a_folder": "is a folder"}[where]
    with pytest.raises(OutputPathError, match=message):
        SelfOccEval(load_config=Path("/nonexistent/config.yml"), output_path=path).main()  # fails before loading
    with pytest.raises(OutputPathError, match="--output-dir"):
        from selfocc_ns.scripts.export import SelfOccExport

        SelfOccExport(load_config=Path("/nonexistent/config.yml"), output_dir=blocker / "out").main()


def test_output_checks_accept_new_folders_and_leave_nothing(tmp_path):
    check_output_file(tmp_path / "new" / "deeper" / "report.json", "--output-path")
    check_output_dir(tmp_path / "renders", "--render-output-path")
    assert list(tmp_path.iterdir()) == []


def test_non_finite_metrics_become_null_with_a_warning(tmp_path, capsys):
    from selfocc_ns.eval.runner import write_results_json

    report = {"results": {"occ/iou": math.nan, "occ/iou/car": float("inf"), "depth/raw/abs_rel": 0.25},
              "per_class": [1.0, math.nan]}
    assert json_safe(report)[1] == ["results.occ/iou", "results.occ/iou/car", "per_class[1]"]
    path = write_results_json(tmp_path / "r.json", report)
    loaded = json.loads(path.read_text())  # strict JSON: no NaN token
    assert "NaN" not in path.read_text() and loaded["results"]["occ/iou"] is None and loaded["per_class"] == [1.0, None]
    assert "3 non-finite value(s) written as null" in capsys.readouterr().out


def test_ns_eval_metrics_report_non_finite_as_null(tiny_pipeline, monkeypatch, capsys):
    """What ns-eval json.dumps: without a step, a NaN metric is None (strict JSON `null`), with a warning."""
    monkeypatch.setattr(tiny_pipeline, "evaluate", lambda **kw: {"occ/iou": math.nan, "eval/num_samples": 4.0})
    metrics = tiny_pipeline.get_average_eval_image_metrics()
    assert metrics == {"occ/iou": None, "eval/num_samples": 4.0}
    assert "non-finite metric(s) reported as null: occ/iou" in capsys.readouterr().out
    json.dumps(metrics, allow_nan=False)


def test_a_file_broken_mid_eval_gives_a_partial_report_naming_it(tiny_run, world_copy, tmp_path):
    """A JPEG that only fails when decoded (not checked without --check-files) stops the eval at its keyframe."""
    from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
    from selfocc_ns.eval.options import EvalOptions
    from selfocc_ns.scripts.eval import SelfOccEval

    index = SelfOccNuScenesDataParserConfig(data_dir=world_copy).setup().get_dataparser_outputs("val").metadata["selfocc"]
    broken = index.sample_frame(2).cameras["CAM_BACK_LEFT"].image_path
    broken.write_bytes(broken.read_bytes()[:300])
    out = tmp_path / "report.json"
    options = EvalOptions(tasks=("depth",), lattice_fraction=0.25)
    with pytest.raises(SystemExit, match="evaluation stopped after 2 of 4 keyframes: Unreadable image .*"
                                         + re.escape(broken.name)):
        SelfOccEval(load_config=tiny_run, data_dir=world_copy, output_path=out, evaluation=options).main()
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["num_samples_done"] == 2 and report["num_samples"] == 4
    assert broken.name in report["error"] and report["results"]["eval/num_samples"] == 2.0
    assert math.isfinite(report["results"]["depth/raw/abs_rel"])


def test_occupancy_masks_select_camera_lidar_or_both(tiny_pipeline):
    from selfocc_ns.eval.options import EvalOptions
    from selfocc_ns.eval.runner import occupancy_mask

    batch = next(tiny_pipeline.datamanager.iter_eval_batches([0]))
    camera, lidar = batch.occ_mask_camera[0].bool(), batch.occ_mask_lidar[0].bool()
    assert torch.equal(occupancy_mask(batch, 0, "camera"), camera)
    assert torch.equal(occupancy_mask(batch, 0, "lidar"), lidar)
    assert torch.equal(occupancy_mask(batch, 0, "camera_lidar"), camera & lidar)
    assert 0 < int((camera & lidar).sum()) < min(int(camera.sum()), int(lidar.sum()))  # the masks differ here
    scored = {}
    for mask in ("camera", "camera_lidar"):
        results = tiny_pipeline.evaluate(EvalOptions(tasks=("occupancy",), occupancy_mask=mask), indices=[0])
        assert results["occ/mask"] == mask
        scored[mask] = results
    assert scored["camera"]["occ/iou"] != scored["camera_lidar"]["occ/iou"]
    batch.occ_mask_lidar = None
    with pytest.raises(ValueError, match="needs mask_lidar"):
        occupancy_mask(batch, 0, "lidar")


def test_busy_viewer_port_is_reported_with_the_port_really_used(capsys):
    """viser binds the next free port when the asked one is busy; the banner must show that one."""
    import socket
    from types import SimpleNamespace

    import viser

    from conftest import free_port
    from selfocc_ns.viewer.controls import report_actual_port

    busy = free_port()
    with socket.socket() as blocker:
        blocker.bind(("0.0.0.0", busy))
        blocker.listen()
        server = viser.ViserServer(host="127.0.0.1", port=busy)
        try:
            actual = server.get_port()
            assert actual != busy
            viewer = SimpleNamespace(
                viser_server=server, config=SimpleNamespace(websocket_port=busy, websocket_port_default=7007),
                viewer_info=[f"Viewer running locally at: http://127.0.0.1:{busy}"])
            assert report_actual_port(viewer) == actual
        finally:
            server.stop()
    assert viewer.viewer_info == [f"Viewer running locally at: http://127.0.0.1:{actual}"]
    assert f"port {busy} is busy; the viewer runs on port {actual}" in capsys.readouterr().out
