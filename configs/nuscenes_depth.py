"""Official `config/nuscenes/nuscenes_depth.py`: TPV 257x257x31 over [-51.2,51.2]^2 x [-4,5] m, no colour head.

In the LIDAR_TOP frame of the input keyframe (the official config is not ego-centric), with the official data
pipeline and eval protocol.
"""

from __future__ import annotations

from selfocc_ns.configs.common import official_conventions, official_datamanager, trainer
from selfocc_ns.data.dataset import ImageGeometryConfig
from selfocc_ns.data.sampling import FrameSamplingConfig
from selfocc_ns.model.field import SelfOccFieldConfig
from selfocc_ns.model.renderer import SelfOccRendererConfig
from selfocc_ns.model.selfocc import SelfOccModelConfig
from selfocc_ns.trainer import SelfOccTrainerConfig

DEPTH_RANGE_M = (-51.2, -51.2, -4.0, 51.2, 51.2, 5.0)


def trainer_config() -> SelfOccTrainerConfig:
    model = official_conventions(SelfOccModelConfig(
        range_m=DEPTH_RANGE_M,
        grid_xyz=(257, 257, 31),
        field=SelfOccFieldConfig(use_rgb=False, num_semantic_classes=0),
        # official eval_depth.py --batch 90000: the depth clip is global over each chunk of rays
        renderer=SelfOccRendererConfig(eval_chunk_rays=90000),
        rgb_loss_weight=0.0,
        hessian_loss_weight=0.0,
        smoothness_loss_weight=0.01,
        semantic_loss_weight=0.0,
    ))
    datamanager = official_datamanager(
        geometry=ImageGeometryConfig(input_crop_fraction=896 / 900, ray_crop_fraction=1.0),
        sampling=FrameSamplingConfig(cur_prob=1.0, max_dist_m=6.0, source_max_dist_m=6.0),
        reference_frame="lidar",
    )
    return trainer("selfocc-depth", model, datamanager, epochs=24, eval_tasks=("depth",))
