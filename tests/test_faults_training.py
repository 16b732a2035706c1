"""Fault injection, training side: diverged and non-finite runs stop loudly, checkpoints are never lost.

Each test builds its fault from the session world or run (copied when changed), in-process, in seconds.
"""

from __future__ import annotations

import pytest
import torch

from conftest import copy_run, run_command, training_dir
from test_model_training import tiny_trainer

from selfocc_ns.checkpoints import CheckpointError, checkpoint_path, list_checkpoints, load_newest_valid, partial_path
from selfocc_ns.trainer import TrainingDiverged


def batchnorm_buffers(model) -> dict:
    return {name: buf.clone() for name, buf in model.named_buffers() if "running_" in name or "num_batches" in name}


def set_learning_rate(trainer, lr: float) -> None:
    """Every optimizer's lr (and its scheduler's base lr) set to `lr`: a diverging run."""
    for optimizer in trainer.optimizers.optimizers.values():
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = lr
    for scheduler in trainer.optimizers.schedulers.values():
        scheduler.base_lrs = [lr for _ in scheduler.base_lrs]


def test_diverged_run_stops_after_consecutive_skips_with_clear_error(small_world, tmp_path, capsys):
    trainer = tiny_trainer(small_world, tmp_path, max_num_iterations=10, max_consecutive_skipped_steps=3)
    set_learning_rate(trainer, 1e6)
    with pytest.raises(TrainingDiverged, match="3 consecutive training steps .* non-finite"):
        trainer.train()
    out = capsys.readouterr().out
    # the first step is finite (and ruins the weights); every later one is skipped and printed with its count
    for k in (1, 2, 3):
        assert f"step {k} skipped" in out and f"{k} skipped so far, {k} in a row" in out
    assert trainer.skipped_steps == 3
    assert not list_checkpoints(trainer.checkpoint_dir)  # no checkpoint of the diverged state
    # BN statistics are those after the one finite step, not the 1e27 of the skipped forward passes
    running_var = max(float(b.abs().max()) for n, b in trainer.pipeline.model.named_buffers() if "running_var" in n)
    assert running_var < 1e3


def test_skipped_step_changes_neither_weights_nor_batchnorm_statistics(small_world, tmp_path, capsys):
    trainer = tiny_trainer(small_world, tmp_path)
    pipeline = trainer.pipeline
    real = pipeline.get_train_loss_dict

    def nan_loss(step):
        outputs, loss_dict, metrics = real(step)
        return outputs, {**loss_dict, "reprojection_loss": loss_dict["reprojection_loss"] * float("nan")}, metrics

    params = {n: p.detach().clone() for n, p in pipeline.model.named_parameters()}
    buffers = batchnorm_buffers(pipeline.model)
    pipeline.get_train_loss_dict = nan_loss
    _, _, metrics = trainer.train_iteration(0)
    assert metrics["skipped_steps"] == 1.0 and trainer.consecutive_skipped_steps == 1
    assert "step 0 skipped" in capsys.readouterr().out
    for name, value in params.items():
        assert torch.equal(value, pipeline.model.get_parameter(name)), name
    after = batchnorm_buffers(pipeline.model)
    assert buffers and all(torch.equal(buffers[n], after[n]) for n in buffers)
    pipeline.get_train_loss_dict = real
    trainer.train_iteration(1)  # a finite step updates BN and resets the run of skips
    assert trainer.consecutive_skipped_steps == 0 and trainer.skipped_steps == 1
    assert any(not torch.equal(buffers[n], b) for n, b in batchnorm_buffers(pipeline.model).items())


def test_skip_counts_survive_a_resume(small_world, tmp_path):
    trainer = tiny_trainer(small_world, tmp_path)
    trainer.skipped_steps, trainer.consecutive_skipped_steps = 7, 2
    trainer.save_checkpoint(4)
    resumed = tiny_trainer(small_world, tmp_path / "resumed", load_dir=trainer.checkpoint_dir)
    assert resumed._start_step == 5
    assert (resumed.skipped_steps, resumed.consecutive_skipped_steps) == (7, 2)


def test_kill_during_save_leaves_no_checkpoint_file_and_the_previous_intact(small_world, tmp_path, monkeypatch):
    trainer = tiny_trainer(small_world, tmp_path)
    trainer.save_checkpoint(2)
    good = checkpoint_path(trainer.checkpoint_dir, 2).read_bytes()
    real_save = torch.save

    def killed_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies while writing

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(3)
    monkeypatch.setattr(torch, "save", real_save)
    assert [s for s, _ in list_checkpoints(trainer.checkpoint_dir)] == [2]
    assert not partial_path(trainer.checkpoint_dir, 3).exists()
    assert checkpoint_path(trainer.checkpoint_dir, 2).read_bytes() == good
    # a partial file left by a SIGKILL (no clean-up ran) is removed by the next save and never loaded
    partial_path(trainer.checkpoint_dir, 4).write_bytes(b"")
    trainer.save_checkpoint(5)
    assert not partial_path(trainer.checkpoint_dir, 4).exists()
    assert list_checkpoints(trainer.checkpoint_dir)[0][0] == 5  # (older ones go with save_only_latest_checkpoint)


def test_resume_skips_a_corrupt_latest_checkpoint(small_world, tmp_path, capsys):
    trainer = tiny_trainer(small_world, tmp_path)
    trainer.save_checkpoint(2)
    empty = checkpoint_path(trainer.checkpoint_dir, 3)
    empty.write_bytes(b"")  # what a non-atomic save killed half-way leaves
    truncated = checkpoint_path(trainer.checkpoint_dir, 4)
    truncated.write_bytes(checkpoint_path(trainer.checkpoint_dir, 2).read_bytes()[:5000])
    resumed = tiny_trainer(small_world, tmp_path / "resumed", load_dir=trainer.checkpoint_dir)
    assert resumed._start_step == 3
    out = capsys.readouterr().out
    assert f"skipping checkpoint {truncated} is unreadable" in out and f"skipping checkpoint {empty} is unreadable (0 bytes)" in out
    assert f"using the newest valid checkpoint instead: {checkpoint_path(trainer.checkpoint_dir, 2)}" in out
    # an explicit step that is corrupt, or no valid checkpoint at all, fails naming the file
    with pytest.raises(CheckpointError, match=empty.name):
        load_newest_valid(trainer.checkpoint_dir, step=3)
    checkpoint_path(trainer.checkpoint_dir, 2).write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        load_newest_valid(trainer.checkpoint_dir)


@pytest.mark.slow
def test_ns_eval_and_selfocc_eval_skip_a_corrupt_latest_checkpoint(tiny_run, tmp_path):
    from conftest import TINY_RUN_STEPS

    config = copy_run(tiny_run, tmp_path)
    checkpoints = config.parent / "nerfstudio_models"
    corrupt = checkpoint_path(checkpoints, TINY_RUN_STEPS + 10)
    corrupt.write_bytes(b"")
    out = tmp_path / "ns_eval.json"
    result = run_command(["ns-eval", "--load-config", str(config), "--output-path", str(out)], cwd=training_dir(config))
    newest_valid = checkpoint_path(checkpoints, TINY_RUN_STEPS - 1)
    assert f"skipping checkpoint {corrupt} is unreadable (0 bytes)" in result.stdout
    assert f"using the newest valid checkpoint instead: {newest_valid}" in result.stdout
    import json

    assert json.loads(out.read_text())["checkpoint"] == str(newest_valid)
    report = tmp_path / "selfocc_eval.json"
    run_command(["selfocc-eval", "--load-config", str(config), "--max-samples", "1", "--lattice-fraction", "0.25",
                 "--output-path", str(report)], cwd=training_dir(config))
    assert json.loads(report.read_text())["checkpoint"] == str(newest_valid)


def keyframe_only_labels(world):
    """Delete the 2D labels of every sweep image (precomputed label sets often cover keyframes only)."""
    keyframe_images = {p.stem for p in (world / "samples").rglob("*.jpg")}
    removed = [png for png in (world / "semantics").rglob("*.png") if png.stem not in keyframe_images]
    for png in removed:
        png.unlink()
    assert removed


def test_keyframe_only_labels_train_with_labelled_anchors_and_one_warning(world_copy, tmp_path, capsys):
    import math

    keyframe_only_labels(world_copy)
    trainer = tiny_trainer(world_copy, tmp_path, **{"pipeline.datamanager.sampling.cur_prob": 0.0})
    out = capsys.readouterr().out
    assert out.count("4 of 4 keyframes and 0 of 3 sweep frames have 2D labels for every camera") == 1
    unlabelled = 0
    for step in range(3):  # anchors are never the input keyframe: sweeps are drawn
        _, loss_dict, metrics = trainer.train_iteration(step)
        assert math.isfinite(float(loss_dict["semantic_loss"]))
        unlabelled += metrics.get("data/semantics: unlabelled anchor images", 0)
    assert trainer.skipped_steps == 0 and unlabelled > 0 and unlabelled % 6 == 0


def test_keyframe_only_labels_refused_in_strict_mode(world_copy, tmp_path):
    from selfocc_ns.data.validate import DataValidationError

    keyframe_only_labels(world_copy)
    with pytest.raises(DataValidationError, match="0 of 3 sweep frames have 2D labels.*unlabelled-anchors refuse"):
        tiny_trainer(world_copy, tmp_path, **{"pipeline.datamanager.unlabelled_anchors": "refuse"})


def test_a_file_failing_mid_training_keeps_the_finished_steps(small_world, tmp_path, capsys):
    """A file unreadable only when its batch is drawn (step 2): the checkpoint of step 1 is saved, the error kept."""
    trainer = tiny_trainer(small_world, tmp_path, max_num_iterations=10)
    dm = trainer.pipeline.datamanager
    real_next = dm.next_train

    def next_train(step):
        if step == 2:
            raise OSError("Unreadable image /data/sweeps/CAM_BACK/x.jpg (scene scene-0061, sample -): truncated")
        return real_next(step)

    dm.next_train = next_train
    with pytest.raises(OSError, match="Unreadable image /data/sweeps/CAM_BACK/x.jpg"):
        trainer.train()
    assert [s for s, _ in list_checkpoints(trainer.checkpoint_dir)] == [1]
    assert "the run failed after step 1 (OSError" in capsys.readouterr().out
    resumed = tiny_trainer(small_world, tmp_path / "resumed", load_dir=trainer.checkpoint_dir)
    assert resumed._start_step == 2


def test_an_eval_failing_during_training_keeps_the_step_it_followed(small_world, tmp_path):
    trainer = tiny_trainer(small_world, tmp_path, max_num_iterations=10, steps_per_eval_all_images=2)

    def broken_eval(**kwargs):
        raise ValueError("Occ3D ground truth unreadable: /data/gts/scene-0103/x/labels.npz")

    trainer.pipeline.get_average_eval_image_metrics = broken_eval
    with pytest.raises(ValueError, match="labels.npz"):
        trainer.train()
    assert [s for s, _ in list_checkpoints(trainer.checkpoint_dir)] == [2]  # the eval ran after step 2's update
