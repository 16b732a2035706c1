"""The model learns: gradients reach every parameter group, and a short overfit on one keyframe improves
both the reprojection loss and the rendered depth against the world's ray-cast truth.

On a single keyframe, the reprojection loss and raw depth error against the truth are the signals that move in a
short CPU run (median-scaled metrics barely do).
"""

from __future__ import annotations

import dataclasses

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfocc_ns.configs import tiny
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.model.rays import eval_lattice_hw, fixed_lattice_px

OVERFIT_STEPS = 90


def with_value(config, path: str, value):
    """`config` with the (dotted) field `path` set to `value`; frozen sub-configs are replaced, not mutated."""
    head, _, rest = path.partition(".")
    new = with_value(getattr(config, head), rest, value) if rest else value
    if dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen:
        return dataclasses.replace(config, **{head: new})
    setattr(config, head, new)
    return config


def tiny_trainer(world: Path, output_dir: Path, world_size: int = 1, local_rank: int = 0, **overrides):
    """An in-process selfocc-tiny trainer on the world, set up (model, optimizers, data)."""
    config = tiny.trainer_config()
    config.pipeline.datamanager.dataparser = SelfOccNuScenesDataParserConfig(data_dir=world)
    config.pipeline.datamanager.num_workers = 0
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.output_dir = output_dir
    config.steps_per_eval_image = config.steps_per_eval_batch = config.steps_per_eval_all_images = 10**9
    config.steps_per_save = 10**9
    for path, value in overrides.items():
        config = with_value(config, path, value)
    config.set_timestamp()
    # seeded as `ns-train` seeds each process (machine.seed + rank), so the initial weights do not depend on
    # which tests ran before
    seed = config.machine.seed + local_rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    trainer = config.setup(local_rank=local_rank, world_size=world_size)
    trainer.setup()
    return trainer


def test_gradients_reach_every_parameter_group_and_module(small_world, tmp_path):
    trainer = tiny_trainer(small_world, tmp_path)
    model = trainer.pipeline.model
    # One optimizer step first: timm zero-initialises the last BN of each residual block and the attention
    # offset/weight layers start at zero, so some gradients are exactly zero before the first update.
    trainer.train_iteration(0)
    trainer.optimizers.zero_grad_all()
    _, loss_dict, _ = trainer.pipeline.get_train_loss_dict(step=1)
    sum(loss_dict.values()).backward()
    groups = model.get_param_groups()
    assert set(groups) == {"backbone", "model"} == set(trainer.optimizers.optimizers)
    for name, params in groups.items():
        with_grad = [p for p in params if p.grad is not None and p.grad.abs().sum() > 0]
        assert len(with_grad) >= 0.8 * len(params), f"{name}: {len(with_grad)} of {len(params)} parameters got a gradient"
    for module in ("image_encoder", "encoder", "field", "renderer"):
        grads = [p.grad for p in getattr(model, module).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), module
    assert model.renderer.neus_alpha.variance.grad is not None and model.renderer.neus_alpha.variance.grad != 0


def truth_depth_at_lattice(world: Path, image_path: Path, image_hw, lattice) -> torch.Tensor:
    png = world / "truth" / "depth" / image_path.parent.name / (image_path.stem + ".png")
    depth = torch.from_numpy(np.asarray(Image.open(png), dtype=np.float32) / 256.0)[: image_hw[0]]
    cols = lattice[..., 0].floor().long().clamp(0, image_hw[1] - 1)
    rows = lattice[..., 1].floor().long().clamp(0, image_hw[0] - 1)
    return depth[rows, cols]


def depth_abs_rel(trainer, world: Path, batch, frame) -> float:
    model = trainer.pipeline.model
    image_hw = tuple(batch.anchor_images.shape[-2:])
    lattice = fixed_lattice_px(image_hw, eval_lattice_hw(image_hw, 0.5))
    model.eval()
    with torch.no_grad():
        rendered = model.render_depth(model.encode(batch), batch.anchor_intrinsics, batch.anchor_cam2ego, image_hw)
    model.train()
    errors = []
    for c, channel in enumerate(trainer.pipeline.datamanager.train_index.cameras):
        truth = truth_depth_at_lattice(world, frame.cameras[channel].image_path, image_hw, lattice)
        valid = (truth > 1.0) & (truth < 80.0)
        pred = rendered.depth[0, c, ..., 0][valid].clamp(1e-3, 80.0)
        errors.append(((pred - truth[valid]).abs() / truth[valid]))
    return float(torch.cat(errors).mean())


@pytest.mark.slow
def test_overfit_one_keyframe_lowers_reprojection_and_depth_error(small_world, tmp_path):
    trainer = tiny_trainer(
        small_world,
        tmp_path,
        **{
            "pipeline.datamanager.sampling.cur_prob": 1.0,  # rays from the keyframe's own cameras: truth depth exists
            "pipeline.model.renderer.train_lattice_hw": (16, 32),
            "pipeline.model.renderer.num_samples": 48,
        },
    )
    pipeline = trainer.pipeline
    index = pipeline.datamanager.train_index
    index.samples = index.samples[1:2]  # one keyframe
    frame = index.sample_frame(0)
    fixed_batch, _ = pipeline.datamanager.next_train(0)

    def reprojection(batch) -> float:
        with torch.no_grad():
            outputs = pipeline.model(batch)
            return float(pipeline.model.get_loss_dict(outputs, batch, {})["reprojection_loss"])

    loss_before = reprojection(fixed_batch)
    abs_rel_before = depth_abs_rel(trainer, small_world, fixed_batch, frame)
    for step in range(OVERFIT_STEPS):
        trainer.train_iteration(step)
    loss_after = reprojection(fixed_batch)
    abs_rel_after = depth_abs_rel(trainer, small_world, fixed_batch, frame)
    print(f"reprojection {loss_before:.4f} -> {loss_after:.4f}; raw abs_rel {abs_rel_before:.3f} -> {abs_rel_after:.3f}")
    assert loss_after <= 0.7 * loss_before
    assert abs_rel_after <= 0.8 * abs_rel_before


def test_nerfstudio_eval_iteration_runs_every_eval_kind(small_world, tmp_path):
    """The trainer's periodic evals (eval loss, one eval image, all eval images), as `ns-train` runs them."""
    from nerfstudio.utils import writer

    trainer = tiny_trainer(
        small_world, tmp_path,
        steps_per_eval_batch=1, steps_per_eval_image=1, steps_per_eval_all_images=1,
        **{"pipeline.model.renderer.num_samples": 32, "pipeline.eval_max_samples": 1},
    )
    trainer.eval_iteration(1)
    pipeline = trainer.pipeline
    _, loss_dict, _ = pipeline.get_eval_loss_dict(1)
    assert {"reprojection_loss", "eikonal_loss", "semantic_loss"} <= set(loss_dict)
    assert all(torch.isfinite(v) and not v.requires_grad for v in loss_dict.values())
    metrics, images = pipeline.get_eval_image_metrics_and_images(1)
    assert metrics["num_rays"] > 0 and 0 < metrics["depth/raw/abs_rel"] < 10 and images["depth"].ndim == 3
    assert pipeline.training  # back in training mode
    # eval_max_samples caps the evals during training only; ns-eval (no step) scores every val keyframe
    assert pipeline.get_average_eval_image_metrics(step=1)["eval/num_samples"] == 1.0
    assert pipeline.get_average_eval_image_metrics()["eval/num_samples"] == len(pipeline.datamanager.eval_index.samples) == 4
    writer.EVENT_STORAGE.clear()


def test_camera_sdf_metric_reads_the_field_at_the_input_cameras(small_world, tmp_path):
    trainer = tiny_trainer(small_world, tmp_path, **{"pipeline.model.field.sdf_prior": "free",
                                                      "pipeline.model.field.free_sdf_m": 1.25})
    batch, _ = trainer.pipeline.datamanager.next_train(0)
    outputs = trainer.pipeline.model.get_outputs(batch)
    # the free prior's start is 1.25 m everywhere, the cameras included
    assert float(trainer.pipeline.model.get_metrics_dict(outputs, batch)["camera_sdf_m"]) == pytest.approx(1.25, abs=1e-5)
    grid = outputs["grid"]
    grid.values.data[:, 0] = -0.5  # matter everywhere: the cameras are wrapped in it
    assert float(trainer.pipeline.model.get_metrics_dict(outputs, batch)["camera_sdf_m"]) == pytest.approx(-0.5, abs=1e-5)


@pytest.mark.parametrize("flag, needs", [("sky_free_rgb", "sky_free_loss_weight"),
                                         ("semantic_given_hit", "semantic_loss_weight")])
def test_a_flag_that_modifies_a_loss_switched_off_is_refused(flag, needs):
    from nerfstudio.data.scene_box import SceneBox

    model_cfg = tiny.trainer_config().pipeline.model
    setattr(model_cfg, flag, True)
    setattr(model_cfg, needs, 0.0)
    with pytest.raises(ValueError, match=f"needs {needs} > 0"):
        model_cfg.setup(scene_box=SceneBox(torch.zeros(2, 3)), num_train_data=1, metadata={})


def test_semantic_ray_scores_are_logged_and_leave_out_the_sky_under_the_sky_free_space_loss(small_world, tmp_path):
    from selfocc_ns.data.label_maps import sky_label_id
    from selfocc_ns.model.rays import lattice_labels

    trainer = tiny_trainer(small_world, tmp_path, **{"pipeline.model.sky_free_loss_weight": 1.0})
    model = trainer.pipeline.model
    batch, _ = trainer.pipeline.datamanager.next_train(0)
    outputs = model.get_outputs(batch)
    metrics = model.get_metrics_dict(outputs, batch)
    assert 0.0 <= float(metrics["semantic_accuracy"]) <= 1.0 and 0.0 <= float(metrics["semantic_mean_recall"]) <= 1.0
    labels = lattice_labels(batch.semantics, outputs["lattice_px"])
    sky = labels == sky_label_id(model.semantic_label_space)
    assert sky.any() and (~sky).any()
    channels = outputs["render"].semantics.shape[-1]
    # every labelled ray rendered as its label, the sky rays as class 0: a perfect score, the sky left out
    rendered = torch.nn.functional.one_hot(torch.where(sky, 0, labels.long()).clamp_max(channels - 1), channels).float()
    outputs["render"] = dataclasses.replace(outputs["render"], semantics=rendered)
    metrics = model.get_metrics_dict(outputs, batch)
    assert float(metrics["semantic_accuracy"]) == 1.0 and float(metrics["semantic_mean_recall"]) == 1.0
    model.config.sky_free_loss_weight = 0.0  # now the sky is a class to render, and class 0 is wrong there
    assert float(model.get_metrics_dict(outputs, batch)["semantic_accuracy"]) < 1.0


def test_ego_ground_loss_reads_the_sdf_under_every_ego_pose_of_the_batch(small_world, tmp_path):
    from selfocc_ns.model import losses
    from selfocc_ns.model.planes import grid_points_m
    from selfocc_ns.model.selfocc import frame_ego2ref

    trainer = tiny_trainer(small_world, tmp_path, **{"pipeline.model.ego_ground_loss_weight": 1.0})
    model = trainer.pipeline.model
    batch, _ = trainer.pipeline.datamanager.next_train(0)
    ego2ref = frame_ego2ref(batch)  # t, anchor, previous and next source
    assert ego2ref.shape == (1, 4, 4, 4)
    assert torch.allclose(ego2ref[0, 0], batch.ego2ref_of(0), atol=1e-5)
    # every camera of a frame gives the same ego pose up to the cameras' own timestamps (mm here), and the
    # world's ground is z = 0 in t's frame
    rig = torch.linalg.inv(batch.cam2ego[0]) @ batch.ego2ref_of(0)
    assert torch.allclose(batch.anchor_cam2ego[0] @ rig, ego2ref[0, 1].expand(6, 4, 4), atol=0.01)
    assert ego2ref[0, :, 2, 3].abs().max() < 0.05
    assert (ego2ref[0, 1:, :2, 3] - ego2ref[0, :1, :2, 3]).norm(dim=-1).max() > 0.5  # the sources are elsewhere

    outputs = model.get_outputs(batch)
    grid = outputs["grid"]
    xs, ys, zs = grid_points_m(grid.range_m, grid.values.shape[2:])
    z = zs.view(1, 1, -1).expand(len(xs), len(ys), -1)
    for ground_z_m in (0.0, 0.5):  # known answers: the world's ground scores 0; a ground 0.5 m up scores 0.5
        grid.values.data[0, 0] = z - ground_z_m
        loss = model.get_loss_dict(outputs, batch)["ego_ground_loss"]
        assert float(loss) == pytest.approx(ground_z_m, abs=0.06)
    points, heights = losses.ego_ground_points(ego2ref, 0.0, (0.0, 0.5, 1.0))
    assert points.shape == (1, 12, 3) and heights.tolist() == [0.0, 0.5, 1.0] * 4


def test_flat_ground_loss_reads_the_sdf_under_the_ground_rays_of_the_batch(small_world, tmp_path):
    from selfocc_ns.model.planes import grid_points_m

    trainer = tiny_trainer(small_world, tmp_path, **{"pipeline.model.flat_ground_loss_weight": 1.0})
    model = trainer.pipeline.model
    batch, _ = trainer.pipeline.datamanager.next_train(0)
    outputs = model.get_outputs(batch)
    grid = outputs["grid"]
    xs, ys, zs = grid_points_m(grid.range_m, grid.values.shape[2:])
    z = zs.view(1, 1, -1).expand(len(xs), len(ys), -1)
    # known answers wherever the ground rays land: the world's ground (z = 0) scores 0, a ground 0.5 m up 0.5
    for ground_z_m in (0.0, 0.5):
        grid.values.data[0, 0] = z - ground_z_m
        loss = model.get_loss_dict(outputs, batch)["flat_ground_loss"]
        assert float(loss) == pytest.approx(ground_z_m, abs=0.02)
    loss.backward()  # it reaches the field's weights
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.field.parameters())
