"""Shared, expensive fixtures: one small synthetic world, one tiny checkpoint and its loaded pipeline per session."""

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


TINY_RUN_STEPS = 6
"""Steps of the session's tiny training run (enough for a checkpoint, a resume point and finite losses)."""


def ns_train_command(world: Path, output_dir: Path, *extra: str, method: str = "selfocc-tiny") -> list:
    """The `ns-train` command line the README documents, at test scale (CPU, tensorboard, few steps)."""
    return [
        "ns-train", method,
        "--output-dir", str(output_dir),
        "--machine.device-type", "cpu",
        "--vis", "tensorboard",
        "--steps-per-eval-image", "1000000",
        "--logging.steps-per-log", "1",
        "--pipeline.datamanager.num-workers", "0",
        *extra,
        "nuscenes-data", "--data-dir", str(world),
    ]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server or a process group the test starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_command(cmd: list, cwd: Path, timeout_s: float = 900) -> "subprocess.CompletedProcess":
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def tiny_run(small_world, tmp_path_factory) -> Path:
    """config.yml of one short `ns-train selfocc-tiny` run on the session world (checkpoints kept)."""
    out = tmp_path_factory.mktemp("tiny_run")
    run_command(
        ns_train_command(
            small_world, out / "outputs", "--max-num-iterations", str(TINY_RUN_STEPS), "--steps-per-save", "3",
            "--save-only-latest-checkpoint", "False",
        ),
        cwd=out,
    )
    configs = sorted((out / "outputs").rglob("config.yml"))
    assert len(configs) == 1, configs
    return configs[0]


def training_dir(config: Path) -> Path:
    """The folder ns-train ran in (config is <dir>/outputs/<experiment>/<method>/<timestamp>/config.yml)."""
    return config.parents[4]


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_run):
    """The session checkpoint loaded as `ns-eval` loads it (eval mode, test split, viewer attached).

    Shared by the eval, export and viewer tests: a test that changes its config or hooks restores them.
    """
    from selfocc_ns.scripts.eval import load_pipeline

    _, pipeline, _, _ = load_pipeline(tiny_run, max_workers=0)
    return pipeline


@pytest.fixture
def world_copy(small_world, tmp_path) -> Path:
    """A private copy of the session world, for a test that corrupts it (fault injection)."""
    import shutil

    root = tmp_path / "world"
    shutil.copytree(small_world, root)
    return root


def copy_run(config: Path, dest: Path) -> Path:
    """A copy of a training run (config.yml and checkpoints) under `dest`, its config pointing at the copy."""
    import shutil

    import yaml

    run_dir = config.parent
    new_run = dest / run_dir.relative_to(training_dir(config))
    shutil.copytree(run_dir, new_run)
    trainer_config = yaml.load(config.read_text(), Loader=yaml.Loader)
    output_dir = Path(trainer_config.output_dir)
    trainer_config.output_dir = dest / (output_dir.relative_to(training_dir(config)) if output_dir.is_absolute() else output_dir)
    (new_run / "config.yml").write_text(yaml.dump(trainer_config), "utf8")
    return new_run / "config.yml"
