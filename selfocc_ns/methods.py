"""nerfstudio method registrations (entry points `nerfstudio.method_configs`).

Imported by every ns-* command at start-up: an exception here breaks all of them, so this module only
builds the configs (no data, no weights, no network).
"""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from selfocc_ns.configs import nuscenes_depth, nuscenes_novel_depth, nuscenes_occ, tiny


def _method(preset, description: str) -> MethodSpecification:
    return MethodSpecification(config=preset.trainer_config(), description=description)


selfocc = _method(nuscenes_occ, "SelfOcc 3D occupancy (official nuscenes_occ preset: TPV 257x257x25, RGB + 2D semantics).")
selfocc_depth = _method(nuscenes_depth, "SelfOcc surround-view depth (official nuscenes_depth preset).")
selfocc_novel_depth = _method(nuscenes_novel_depth, "SelfOcc novel-depth synthesis (official nuscenes_novel_depth preset).")
selfocc_tiny = _method(tiny, "SelfOcc at CPU scale (ResNet-18, small TPV): minutes on a laptop, for demos and tests.")
