"""What every preset shares: optimiser groups, schedule, trainer defaults (official optimizer.py / schedule.py)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from nerfstudio.configs.base_config import ViewerConfig

from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.data.dataset import ImageGeometryConfig
from selfocc_ns.data.sampling import FrameSamplingConfig
from selfocc_ns.eval.options import EvalOptions, EvalTask
from selfocc_ns.model.selfocc import SelfOccModelConfig
from selfocc_ns.optim import AdamWOptimizerConfig, WarmupStepDecaySchedulerConfig
from selfocc_ns.pipeline import SelfOccPipelineConfig
from selfocc_ns.trainer import SelfOccTrainerConfig

OFFICIAL_ITERS_PER_EPOCH = 3516
"""28130 nuScenes train keyframes / global batch 8 (8 GPUs x 1): optimizer steps per official epoch."""


def optimizers(lr: float = 1e-4, weight_decay: float = 0.01, backbone_lr_mult: float = 0.1, warmup_steps: int = 1000):
    """AdamW; the backbone at lr x0.1; warm-up from 1e-6, x0.1 at 75% of the run (official)."""

    def group(group_lr: float):
        return {
            "optimizer": AdamWOptimizerConfig(lr=group_lr, weight_decay=weight_decay),
            "scheduler": WarmupStepDecaySchedulerConfig(warmup_steps=warmup_steps),
        }

    return {"backbone": group(lr * backbone_lr_mult), "model": group(lr)}


def official_datamanager(**fields) -> SelfOccDataManagerConfig:
    """A datamanager computing what the official data pipeline computes: photometric augmentation, BGR/256 loss
    images, the official input resize and frame draws (`fields` override or add, e.g. geometry, reference_frame)."""
    geometry = fields.pop("geometry", ImageGeometryConfig())
    sampling = fields.pop("sampling", FrameSamplingConfig())
    return SelfOccDataManagerConfig(
        photometric_augmentation=True,
        loss_image_scale=1.0 / 256.0,
        geometry=dataclasses.replace(geometry, resize="official"),
        sampling=dataclasses.replace(sampling, frame_sampling="official"),
        **fields,
    )


def official_evaluation(tasks: Sequence[EvalTask], **fields) -> EvalOptions:
    """The official eval protocol: the official 450x800 / 96x200 lattices and read, the official novel-depth truth."""
    return EvalOptions(tasks=tuple(tasks), eval_lattice="official", novel_depth_gt="keyframe_lidar2img", **fields)


def official_conventions(model: SelfOccModelConfig) -> SelfOccModelConfig:
    """The model with every model-side convention flag at the official code's value (README: "Differences from
    the official code"); the presets named after official configs use it, `selfocc-tiny` keeps this project's."""
    encoder = dataclasses.replace(
        model.encoder, self_attn_reference="official", pe_layout="interleaved", image_visibility="official"
    )
    field = dataclasses.replace(model.field, rgb_activation="sh0", fd_boundary="replicate_half")
    renderer = dataclasses.replace(
        model.renderer, sdf_read_at="start", jitter="per_ray", transmittance_eps=1e-4, depth_clip="global",
        cos_anneal_steps=5000, train_lattice="official_shared",
    )
    return dataclasses.replace(
        model, encoder=encoder, field=field, renderer=renderer, image_read="official", smoothness_of="depth"
    )


def trainer(
    method_name: str,
    model: SelfOccModelConfig,
    datamanager: SelfOccDataManagerConfig,
    epochs: int,
    eval_tasks: Sequence[EvalTask] = ("depth",),
    official: bool = True,
    **overrides,
) -> SelfOccTrainerConfig:
    """A SelfOcc TrainerConfig; `epochs` are official epochs at global batch 8 (see README: scaling);
    `official` turns on what only matters for exactness (official eval protocol, SyncBN under DDP);
    `overrides` replace TrainerConfig fields."""
    config = SelfOccTrainerConfig(
        method_name=method_name,
        max_num_iterations=epochs * OFFICIAL_ITERS_PER_EPOCH,
        steps_per_save=1000,
        steps_per_eval_batch=500,
        steps_per_eval_image=1000,
        steps_per_eval_all_images=OFFICIAL_ITERS_PER_EPOCH,
        mixed_precision=False,
        save_only_latest_checkpoint=True,
        pipeline=SelfOccPipelineConfig(
            datamanager=datamanager, model=model, eval_max_samples=60, sync_batchnorm=official,
            evaluation=official_evaluation(eval_tasks) if official else EvalOptions(tasks=tuple(eval_tasks)),
        ),
        optimizers=optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=8192, quit_on_train_completion=True),
        vis="viewer+tensorboard",
        grad_clip_max_norm=35.0,
    )
    return dataclasses.replace(config, **overrides)
