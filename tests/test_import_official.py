"""`selfocc-import-official`: a manifest-built official checkpoint becomes a run that nerfstudio's `eval_setup`
(ns-eval, selfocc-eval, ns-viewer, selfocc-export) loads with exactly the converted weights; bad input writes
nothing; end to end, `selfocc-eval` scores the imported full preset on the embedded world."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_command
from official_state import random_official_state_dict
from selfocc_ns.configs.nuscenes_depth import DEPTH_RANGE_M
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.model import official
from selfocc_ns.scripts.import_official import CHECKPOINT_NAME, import_official


def _checkpoint(path: Path, wrapped: bool, seed: int = 0, **changes) -> Path:
    state = random_official_state_dict("depth", DEPTH_RANGE_M, seed=seed)
    state.update(changes)
    torch.save({"state_dict": state, "epoch": 24} if wrapped else state, path)
    return path


def test_imported_run_loads_through_eval_setup_with_the_converted_weights(small_world, tmp_path) -> None:
    from selfocc_ns.scripts.eval import load_pipeline

    checkpoint = _checkpoint(tmp_path / "model_state_dict.pth", wrapped=True)
    config_path = import_official(checkpoint, "depth", tmp_path / "run",
                                  SelfOccNuScenesDataParserConfig(data_dir=small_world))
    assert config_path == (tmp_path / "run" / "config.yml").resolve()
    saved = torch.load(config_path.parent / "nerfstudio_models" / CHECKPOINT_NAME, map_location="cpu")
    assert saved["step"] == 0 and set(saved) == {"step", "pipeline", "optimizers", "schedulers", "scalers"}

    config, pipeline, checkpoint_path, step = load_pipeline(config_path, max_workers=0)
    assert step == 0 and checkpoint_path.name == CHECKPOINT_NAME
    assert config.method_name == "selfocc-depth" and config.get_base_dir() == config_path.parent
    assert config.pipeline.model.image_encoder.pretrained is False
    state = torch.load(checkpoint, map_location="cpu")["state_dict"]
    back = official.selfocc_to_official(pipeline.model.state_dict(), pipeline.model.config)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], v) for k, v in state.items()), "the run holds exactly the official weights"


def test_bad_checkpoints_and_used_folders_write_nothing(small_world, tmp_path) -> None:
    dataparser = SelfOccNuScenesDataParserConfig(data_dir=small_world)
    bad = _checkpoint(tmp_path / "bad.pth", wrapped=False, **{"lifter.tpv_hw": torch.zeros(1, 3, 96)})
    with pytest.raises(official.OfficialCheckpointError, match=r"lifter\.tpv_hw has shape \[1, 3, 96\], expected "
                                                               r"shape \[1, 66049, 96\]"):
        import_official(bad, "depth", tmp_path / "run", dataparser)
    assert not (tmp_path / "run").exists()

    other_preset = _checkpoint(tmp_path / "occ-box.pth", wrapped=False)
    with pytest.raises(official.OfficialCheckpointError, match="density_net.3.weight has shape"):
        import_official(other_preset, "novel-depth", tmp_path / "run", dataparser)  # depth head (1 row) != 4 rows
    assert not (tmp_path / "run").exists()

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(official.OfficialCheckpointError, match="cannot read"):
        import_official(tmp_path / "junk.pth", "depth", tmp_path / "run", dataparser)
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        import_official(tmp_path / "missing.pth", "depth", tmp_path / "run", dataparser)
    assert not (tmp_path / "run").exists()

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.yml").write_text("x")
    with pytest.raises(FileExistsError, match="already holds a run"):
        import_official(other_preset, "depth", tmp_path / "used", dataparser)
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["config.yml"]


@pytest.mark.slow
def test_import_cli_then_selfocc_eval_on_the_embedded_world(small_world, tmp_path) -> None:
    """The documented commands on a bare manifest-built checkpoint of the novel-depth preset (RGB head included):
    ~35 s import and ~3 min for one keyframe's full-preset encode plus depth eval on 2 CPU cores."""
    checkpoint = tmp_path / "model_state_dict.pth"
    torch.save(random_official_state_dict("novel-depth", DEPTH_RANGE_M), checkpoint)
    result = run_command([sys.executable, "-m", "selfocc_ns.scripts.import_official", "--checkpoint", str(checkpoint),
                          "--preset", "novel-depth", "--output-dir", str(tmp_path / "run"),
                          "--data-dir", str(small_world)], cwd=tmp_path)
    assert "wrote" in result.stdout and (tmp_path / "run" / "nerfstudio_models" / CHECKPOINT_NAME).is_file()
    run_command(["selfocc-eval", "--load-config", str(tmp_path / "run" / "config.yml"), "--max-samples", "1",
                 "--tasks", "depth", "--output-path", str(tmp_path / "eval.json")], cwd=tmp_path)
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["method_name"] == "selfocc-novel-depth" and report["step"] == 0 and report["num_samples"] == 1
    abs_rel = report["results"]["depth/raw/abs_rel"]
    assert 0.0 < abs_rel < 10.0
