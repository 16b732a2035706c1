"""nerfstudio method registrations (entry points `nerfstudio.method_configs`).

Imported by every ns-* command at start-up: an exception here breaks all of them, so this module only
builds the configs (no data, no weights, no network).
"""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from selfocc_ns.configs import nuscenes_depth, nuscenes_novel_depth, nuscenes_occ, tiny

selfocc = MethodSpecification(
    config=nuscenes_occ.trainer_config(),
    description="SelfOcc 3D occupancy (official nuscenes_occ preset: TPV 257x257x25, RGB + 2D semantics).",
)
selfocc_depth = MethodSpecification(
    config=nuscenes_depth.trainer_config(),
    description="SelfOcc surround-view depth (official nuscenes_depth preset).",
)
selfocc_novel_depth = MethodSpecification(
    config=nuscenes_novel_depth.trainer_config(),
    description="SelfOcc novel-depth synthesis (official nuscenes_novel_depth preset).",
)
selfocc_tiny = MethodSpecification(
    config=tiny.trainer_config(),
    description="SelfOcc at CPU scale (ResNet-18, small TPV): minutes on a laptop, for demos and tests.",
)
