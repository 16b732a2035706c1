"""Official `config/nuscenes/nuscenes_occ.py`: TPV 257x257x25 over [-40,40]^2 x [-1,5.4] m, RGB + semantics.

The config classes' defaults with the official conventions (`common.official_conventions`); the preset names
the method, the eval tasks and the epochs.
"""

from __future__ import annotations

from selfocc_ns.configs.common import official_conventions, trainer
from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.model.selfocc import SelfOccModelConfig
from selfocc_ns.trainer import SelfOccTrainerConfig

OCC_RANGE_M = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)


def trainer_config() -> SelfOccTrainerConfig:
    model = official_conventions(SelfOccModelConfig(range_m=OCC_RANGE_M, grid_xyz=(257, 257, 25)))
    return trainer("selfocc", model, SelfOccDataManagerConfig(), epochs=12, eval_tasks=("depth", "occupancy"))
