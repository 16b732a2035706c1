"""Shared, expensive fixtures: one small synthetic world per session (and, later, one tiny checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests run on the CPU, deterministic, without network.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMALL_WORLD = dict(scenes=2, keyframes=4, sweeps_per_gap=1, width=160, height=90, seed=0)
"""The session world: scene-0061 (mini_train) and scene-0103 (mini_val), 4 keyframes each, 1 sweep per gap."""


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> Path:
    """Data root of a small synthetic world in nuScenes format (v1.0-mini), generated once per session."""
    from selfocc_ns.data.synthetic import WorldConfig, generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, WorldConfig(**SMALL_WORLD), progress=False)
    return root
