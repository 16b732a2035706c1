"""Official `config/nuscenes/nuscenes_occ.py`: TPV 257x257x25 over [-40,40]^2 x [-1,5.4] m, RGB + semantics."""

from __future__ import annotations

from selfocc_ns.configs.common import trainer
from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.model.backbone import ImageEncoderConfig
from selfocc_ns.model.field import SelfOccFieldConfig
from selfocc_ns.model.renderer import SelfOccRendererConfig
from selfocc_ns.model.selfocc import SelfOccModelConfig
from selfocc_ns.model.tpv import TPVEncoderConfig
from selfocc_ns.trainer import SelfOccTrainerConfig

OCC_RANGE_M = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)


def trainer_config() -> SelfOccTrainerConfig:
    model = SelfOccModelConfig(
        range_m=OCC_RANGE_M,
        grid_xyz=(257, 257, 25),
        image_encoder=ImageEncoderConfig(backbone="tv_resnet50", pretrained=True),
        encoder=TPVEncoderConfig(),
        field=SelfOccFieldConfig(use_rgb=True, num_semantic_classes=18),
        renderer=SelfOccRendererConfig(num_samples=256, train_lattice_hw=(48, 100)),
        reprojection_loss_weight=1.0,
        rgb_loss_weight=0.1,
        eikonal_loss_weight=0.1,
        hessian_loss_weight=0.01,
        semantic_loss_weight=0.1,
    )
    datamanager = SelfOccDataManagerConfig(
        input_crop_fraction=768 / 900, ray_crop_fraction=768 / 900, scale_rate=0.5, cur_prob=0.333, max_dist_m=30.0,
        source_max_dist_m=30.0,
    )
    return trainer("selfocc", model, datamanager, epochs=12, eval_tasks=("depth", "occupancy"))
