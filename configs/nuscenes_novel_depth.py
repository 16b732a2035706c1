"""Official `config/nuscenes/nuscenes_novel_depth.py`: the depth preset's box, RGB head, novel-depth eval.

In the LIDAR_TOP frame of the input keyframe, with the official data pipeline and eval protocol.
"""

from __future__ import annotations

from selfocc_ns.configs.common import official_conventions, official_datamanager, trainer
from selfocc_ns.configs.nuscenes_depth import DEPTH_RANGE_M
from selfocc_ns.data.sampling import FrameSamplingConfig
from selfocc_ns.model.field import SelfOccFieldConfig
from selfocc_ns.model.renderer import SelfOccRendererConfig
from selfocc_ns.model.selfocc import SelfOccModelConfig
from selfocc_ns.trainer import SelfOccTrainerConfig


def trainer_config() -> SelfOccTrainerConfig:
    model = official_conventions(SelfOccModelConfig(
        range_m=DEPTH_RANGE_M,
        grid_xyz=(257, 257, 31),
        field=SelfOccFieldConfig(use_rgb=True, num_semantic_classes=0),
        # official eval_novel_depth.py renders its 6 x 96 x 200 lattice in one call (--batch 0): one global clip
        renderer=SelfOccRendererConfig(eval_chunk_rays=6 * 96 * 200),
        semantic_loss_weight=0.0,
    ))
    datamanager = official_datamanager(
        sampling=FrameSamplingConfig(max_dist_m=10.0, source_max_dist_m=10.0), reference_frame="lidar"
    )
    return trainer("selfocc-novel-depth", model, datamanager, epochs=24, eval_tasks=("novel-depth",))
