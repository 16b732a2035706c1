"""Training through nerfstudio: registration, the ns-train run, tensorboard, checkpoints, resume, variants."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN_STEPS, ns_train_command, run_command

LOSS_KEYS = ("reprojection_loss", "rgb_loss", "eikonal_loss", "hessian_loss", "semantic_loss")


def scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(run_dir.glob("events.out.tfevents.*"))
    assert events, f"no tensorboard event file in {run_dir}"
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def checkpoint(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "nerfstudio_models" / f"step-{step:09d}.ckpt", map_location="cpu", weights_only=False)


def test_the_four_methods_are_registered_with_their_presets():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    for name in ("selfocc", "selfocc-depth", "selfocc-novel-depth", "selfocc-tiny"):
        assert name in methods and descriptions[name]
    occ, depth = methods["selfocc"], methods["selfocc-depth"]
    assert occ.pipeline.model.grid_xyz == (257, 257, 25) and depth.pipeline.model.grid_xyz == (257, 257, 31)
    assert depth.pipeline.model.range_m == (-51.2, -51.2, -4.0, 51.2, 51.2, 5.0)
    occ_dm, depth_dm = occ.pipeline.datamanager, depth.pipeline.datamanager
    assert occ_dm.sampling.max_dist_m == 30.0 and depth_dm.sampling.max_dist_m == 6.0
    assert depth_dm.sampling.cur_prob == 1.0 and depth_dm.geometry.ray_crop_fraction == 1.0
    assert occ.pipeline.evaluation.tasks == ("depth", "occupancy") and depth.pipeline.evaluation.tasks == ("depth",)
    assert occ.max_num_iterations == 12 * 3516 and occ.grad_clip_max_norm == 35.0
    assert occ.optimizers["backbone"]["optimizer"].lr == pytest.approx(0.1 * occ.optimizers["model"]["optimizer"].lr)


def test_ns_train_help_lists_the_flags():
    out = subprocess.run(["ns-train", "selfocc", "nuscenes-data", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for flag in ("--data-dir", "--cameras", "--include-sweeps", "--gts-dir", "--semantics-dir", "--train-split-fraction"):
        assert flag in out.stdout
    out = subprocess.run(["ns-train", "selfocc-tiny", "--help"], capture_output=True, text=True, timeout=300)
    for flag in ("--pipeline.model.reprojection-loss-weight", "--pipeline.datamanager.sampling.cur-prob",
                 "--pipeline.datamanager.geometry.scale-rate", "--pipeline.evaluation.tasks", "--grad-clip-max-norm"):
        assert flag in out.stdout
    # scene-wide quantities live on the model config only: a copy on the field or encoder would be ignored
    for flag in ("--pipeline.model.field.grid-xyz", "--pipeline.model.encoder.range-m", "--pipeline.model.field.bev"):
        assert flag not in out.stdout


def test_tiny_run_logs_every_loss_and_saves_checkpoints(tiny_run):
    run_dir = tiny_run.parent
    logged = scalars(run_dir)
    for key in LOSS_KEYS:
        values = logged[f"Train Loss Dict/{key}"]
        assert len(values) == TINY_RUN_STEPS and all(math.isfinite(v) for _, v in values), key
    assert all(math.isfinite(v) for _, v in logged["Train Loss"])
    assert "Train Metrics Dict/data_wait_s" in logged and "Train Metrics Dict/grad_norm" in logged
    assert logged["Train Metrics Dict/skipped_steps"][-1][1] == 0.0
    # the lr follows the schedule over the whole (6-step) run: linear warm-up, then x0.1 at 75 % (step 4);
    # nerfstudio logs the lr after the scheduler stepped, so entry i is the lr of step i + 1
    lrs = [v for _, v in logged["learning_rate/model"]]
    assert lrs[0] < lrs[1] < lrs[2]
    assert lrs[3] < 0.2 * lrs[2] and lrs[4] > lrs[3]
    steps = sorted(int(p.stem.split("-")[1]) for p in (run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    assert steps == [3, TINY_RUN_STEPS - 1]


def test_resume_continues_from_the_saved_step_with_identical_parameters(small_world, tiny_run, tmp_path):
    """Resuming at step 3 replays steps 4 and 5 exactly: the parameters equal the uninterrupted run's."""
    run_dir = tiny_run.parent
    run_command(
        ns_train_command(
            small_world, tmp_path / "outputs", "--max-num-iterations", str(TINY_RUN_STEPS), "--steps-per-save", "3",
            "--save-only-latest-checkpoint", "False", "--load-dir", str(run_dir / "nerfstudio_models"), "--load-step", "3",
        ),
        cwd=tmp_path,
    )
    resumed_dir = next((tmp_path / "outputs").rglob("config.yml")).parent
    resumed_steps = sorted(int(p.stem.split("-")[1]) for p in (resumed_dir / "nerfstudio_models").glob("step-*.ckpt"))
    assert resumed_steps == [TINY_RUN_STEPS - 1], "a resumed run starts after the loaded step and ends where the run ends"
    logged = scalars(resumed_dir)
    assert [s for s, _ in logged["Train Loss"]] == list(range(4, TINY_RUN_STEPS))
    original = checkpoint(run_dir, TINY_RUN_STEPS - 1)["pipeline"]
    resumed = checkpoint(resumed_dir, TINY_RUN_STEPS - 1)["pipeline"]
    at_step3 = checkpoint(run_dir, 3)["pipeline"]
    assert original.keys() == resumed.keys()
    moved = 0
    for key, value in original.items():
        if value.is_floating_point():
            torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-6, msg=key)
            moved += int(not torch.equal(value, at_step3[key]))
    assert moved > 10, "steps 4-5 must have changed the parameters"


@pytest.mark.slow
def test_two_step_bev_run_without_semantics(small_world, tmp_path):
    run_command(
        ns_train_command(
            small_world, tmp_path / "outputs", "--max-num-iterations", "2",
            "--pipeline.model.encoder.representation", "bev", "--pipeline.model.sparsity-loss-weight", "0.001",
            "--pipeline.model.semantic-loss-weight", "0", "--pipeline.model.field.num-semantic-classes", "0",
        ),
        cwd=tmp_path,
    )
    run_dir = next((tmp_path / "outputs").rglob("config.yml")).parent
    logged = scalars(run_dir)
    assert "Train Loss Dict/sparsity_loss" in logged and "Train Loss Dict/semantic_loss" not in logged
    assert all(math.isfinite(v) for _, v in logged["Train Loss"])
    state = checkpoint(run_dir, 1)["pipeline"]
    assert any("z_embedding" in key for key in state), "the BEV field lifts the plane with a per-height embedding"
    assert any(key.endswith("queries.xy") for key in state)
    assert not any(key.endswith("queries.xz") or key.endswith("queries.yz") for key in state)
