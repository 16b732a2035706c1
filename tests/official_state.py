"""Official state dicts for tests: the manifests (every key, shape and dtype of the official SelfOcc state dict
of each config) and random state dicts built from them, and the presets' models with the official label space."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import Tensor

MANIFESTS = Path(__file__).parent / "official_manifests"
PRESETS = {"occ": "occ", "depth": "depth", "novel-depth": "novel_depth"}
"""`selfocc-import-official --preset` name -> manifest file stem."""
OFFICIAL_SEMANTIC_CLASSES = 21
"""The official occ head's semantic logits (the OpenSeeD prompts, sky included)."""


def manifest_keys(preset: str) -> List[Tuple[str, Tuple[int, ...], str]]:
    """(name, shape, dtype) of every key of the official state dict of a preset, in the official order."""
    manifest = json.loads((MANIFESTS / f"{PRESETS[preset]}.json").read_text())
    return [(name, tuple(shape), dtype) for name, shape, dtype in manifest["keys"]]


def random_official_state_dict(preset: str, range_m, seed: int = 0) -> Dict[str, Tensor]:
    """A random official state dict of the manifest's keys, shapes and dtypes; the frozen entries hold what the
    official code puts there (aabb = the scene box, background 1, empty device indicator)."""
    generator = torch.Generator().manual_seed(seed)
    state: Dict[str, Tensor] = {}
    for name, shape, dtype in manifest_keys(preset):
        if dtype == "int64":
            state[name] = torch.randint(0, 10_000, shape, generator=generator)
        elif name == "head.model.field.aabb":
            state[name] = torch.tensor([list(range_m[:3]), list(range_m[3:])], dtype=torch.float32)
        elif name == "head.model.field_background":
            state[name] = torch.ones(shape)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        else:
            state[name] = 0.05 * torch.randn(shape, generator=generator)
    return state


def preset_model_config(preset: str):
    """The preset's model config, no backbone download, and the official label space's 21 logits for occ
    (the official head's channel count, whatever the preset's own label space is)."""
    from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
    from selfocc_ns.scripts.import_official import preset_config

    model = preset_config(preset, SelfOccNuScenesDataParserConfig()).pipeline.model  # type: ignore[arg-type]
    if preset == "occ":
        model.field.num_semantic_classes = OFFICIAL_SEMANTIC_CLASSES
    return model
