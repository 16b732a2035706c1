"""`selfocc-demo`: the README's main job on the embedded default, with the real commands.

1. `selfocc-synth <workdir>/world` (skipped when the world is already there),
2. `ns-train selfocc-tiny ... --machine.device-type cpu nuscenes-data --data-dir <workdir>/world`,
3. `selfocc-eval --load-config <run>/config.yml --tasks depth occupancy` on the val scene,
then prints the checkpoint, occupancy and depth beside the trivial baselines (flat ground, constant median
depth) with a one-line verdict each (`summary_lines`), and the next commands to try.
Each step is the command line a user would type, run as a subprocess and echoed first.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import tyro


def _run(cmd: List[str], cwd: Path) -> None:
    print(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    result = subprocess.run(cmd, cwd=cwd)
    if result.returncode != 0:
        sys.exit(f"selfocc-demo: the command above failed with exit code {result.returncode}")


def _verdict(task: str, model: float, baseline: float, baseline_name: str, unit: str, higher_is_better: bool) -> str:
    """'<task> beats <baseline> by +x <unit>' or '<task> is below <baseline> by -x <unit>' (sign = better / worse)."""
    gain = (model - baseline) if higher_is_better else (baseline - model)
    verb = "beats" if gain > 0 else "is below"
    return f"{task} {verb} {baseline_name} by {gain:+.{1 if unit == 'IoU' else 3}f} {unit}"


def summary_lines(results: Dict[str, float]) -> List[str]:
    """The demo's table of the model beside the trivial baselines, and a verdict per task, from eval.json results."""
    lines = []
    if "occ/iou" in results:
        pct = {k: 100.0 * results[k] for k in ("occ/iou", "occ/precision", "occ/recall", "occ/miou")}
        flat_iou = 100.0 * results["occ/baseline/flat_ground/iou"]
        flat_miou = 100.0 * results["occ/baseline/flat_ground/miou"]
        lines += [
            f"  occupancy ({results.get('occ/protocol', '')} protocol, %):  model IoU {pct['occ/iou']:.1f} "
            f"(precision {pct['occ/precision']:.1f}, recall {pct['occ/recall']:.1f}), mIoU {pct['occ/miou']:.1f}"
            f"  |  flat ground IoU {flat_iou:.1f}, mIoU {flat_miou:.1f}",
            "  verdict: " + _verdict("occupancy", pct["occ/iou"], flat_iou, "flat ground", "IoU", True),
        ]
    if "depth/raw/abs_rel" in results:
        model, const = results["depth/raw/abs_rel"], results["depth/baseline/raw/abs_rel"]
        lines += [
            f"  depth (raw):  model abs_rel {model:.3f}, a1 {results['depth/raw/a1']:.3f}  |  constant median depth "
            f"abs_rel {const:.3f}, a1 {results['depth/baseline/raw/a1']:.3f}",
            "  verdict: " + _verdict("depth", model, const, "constant depth", "abs_rel", False),
        ]
    return lines


@dataclass
class SelfOccDemo:
    """Generate the synthetic world, train selfocc-tiny on the CPU, evaluate it on the val scene."""

    workdir: Path = Path("selfocc-demo")
    """Everything goes here: world/, outputs/, eval.json."""
    max_minutes: float = 30.0
    """Wall-clock training budget (the run also stops at --steps)."""
    steps: int = 1000
    """Training steps at most (the preset's 1000 take about 26 min on 2 CPU cores)."""
    device: str = "cpu"
    """cpu or cuda."""
    threads: Optional[int] = None
    """OMP/torch threads for training (default: all cores)."""
    seed: int = 42
    """Seed of the training run (nerfstudio's machine seed, the model's ray lattices, the frame draws): judge a
    change over several."""

    def main(self) -> None:
        start = time.perf_counter()
        workdir = self.workdir.absolute()
        workdir.mkdir(parents=True, exist_ok=True)
        world = workdir / "world"
        if (world / "v1.0-mini" / "scene.json").is_file():
            print(f"selfocc-demo: using the existing world in {world}")
        else:
            _run(["selfocc-synth", str(world)], workdir)

        outputs = workdir / "outputs"
        before = set(outputs.rglob("config.yml")) if outputs.exists() else set()
        if self.threads:
            os.environ["OMP_NUM_THREADS"] = str(self.threads)
        _run(
            [
                "ns-train", "selfocc-tiny",
                "--output-dir", str(outputs),
                "--max-num-iterations", str(self.steps),
                "--max-train-minutes", str(self.max_minutes),
                "--machine.device-type", self.device,
                "--vis", "tensorboard",
                "--machine.seed", str(self.seed),
                "--pipeline.model.seed", str(self.seed),
                "--pipeline.datamanager.seed", str(self.seed),
                "nuscenes-data", "--data-dir", str(world),
            ],
            workdir,
        )
        new = sorted(set(outputs.rglob("config.yml")) - before)
        if not new:
            sys.exit("selfocc-demo: training finished but wrote no config.yml")
        config = new[-1]
        report = workdir / "eval.json"
        _run(
            ["selfocc-eval", "--load-config", str(config), "--tasks", "depth", "occupancy", "--output-path", str(report)],
            workdir,
        )
        data = json.loads(report.read_text("utf8"))
        print(f"\nselfocc-demo done in {(time.perf_counter() - start) / 60:.1f} min")
        print(f"  checkpoint: {data['checkpoint']} (step {data['step']})")
        print(f"  config:     {config}")
        print(f"  metrics:    {report}")
        print("\n".join(summary_lines(data["results"])))
        print("next:")
        print(f"  ns-viewer --load-config {config}")
        print(f"  ns-eval --load-config {config} --output-path {workdir / 'ns_eval.json'}")
        print(f"  selfocc-export --load-config {config} --output-dir {workdir / 'export'}")


def entrypoint() -> None:
    tyro.cli(SelfOccDemo).main()


if __name__ == "__main__":
    entrypoint()
