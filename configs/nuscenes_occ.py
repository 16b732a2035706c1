"""Official `config/nuscenes/nuscenes_occ.py`: TPV 257x257x25 over [-40,40]^2 x [-1,5.4] m, RGB + semantics.

The architecture is the config classes' defaults; the preset names the method, the eval tasks and the epochs,
and switches on the official conventions: the model-side ones (`common.official_conventions`), the 21-channel
OpenSeeD semantic head and label space, the official data pipeline (`official_datamanager`, in the ego frame)
and eval protocol, SyncBN.
"""

from __future__ import annotations

from selfocc_ns.configs.common import official_conventions, official_datamanager, trainer
from selfocc_ns.model.field import SelfOccFieldConfig
from selfocc_ns.model.selfocc import SelfOccModelConfig
from selfocc_ns.trainer import SelfOccTrainerConfig

OCC_RANGE_M = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)


def trainer_config() -> SelfOccTrainerConfig:
    model = official_conventions(SelfOccModelConfig(
        range_m=OCC_RANGE_M, grid_xyz=(257, 257, 25),
        field=SelfOccFieldConfig(num_semantic_classes=21), semantic_label_space="openseed",
    ))
    datamanager = official_datamanager(reference_frame="ego")
    return trainer("selfocc", model, datamanager, epochs=12, eval_tasks=("depth", "occupancy"))
