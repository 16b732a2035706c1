"""`selfocc-eval`: SelfOcc's metrics on an existing checkpoint, with the flags `ns-eval` cannot take.

    selfocc-eval --load-config outputs/.../config.yml --task depth occupancy --protocol selfocc \
        --split val --output-path eval.json

Loads the run like `ns-eval` (nerfstudio's `eval_setup`, latest checkpoint), evaluates the chosen tasks
on the chosen split with a progress bar, prints a summary table (model beside the trivial baselines) and
writes a JSON report that names the protocol.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Tuple

import tyro

Task = Literal["depth", "novel-depth", "occupancy"]


@dataclass
class SelfOccEval:
    """Evaluate a SelfOcc checkpoint (depth, novel depth, occupancy) on a split of its dataset."""

    load_config: Path
    """config.yml of the training run (as for ns-eval); run from the training directory if paths are relative."""
    task: Tuple[Task, ...] = ("depth",)
    """What to evaluate."""
    protocol: Literal["selfocc", "occ3d"] = "selfocc"
    """Occupancy protocol: official SelfOcc (linspace points, crops, mIoU over 1..16) or clean Occ3D."""
    threshold: float = 0.0
    """Occupied where SDF <= threshold."""
    split: Literal["val", "train"] = "val"
    """Which split of the run's dataset to evaluate (val = the official val scenes, what ns-eval uses)."""
    flip: bool = False
    """Horizontal-flip test-time augmentation for depth (official --flip)."""
    max_samples: Optional[int] = None
    """Evaluate at most this many keyframes (evenly spaced)."""
    lattice_fraction: Optional[float] = None
    """Depth lattice as a fraction of the ray crop (default: the run's, 0.5 = official 450x800)."""
    data_dir: Optional[Path] = None
    """Evaluate on another nuScenes root than the one the run trained on."""
    output_path: Optional[Path] = None
    """Write the JSON report here."""
    render_output_path: Optional[Path] = None
    """Write colour-mapped depth PNGs here."""

    def main(self) -> dict:
        from nerfstudio.utils.eval_utils import eval_setup

        from selfocc_ns.metrics import format_table

        def update(config):
            if self.data_dir is not None:
                config.pipeline.datamanager.dataparser.data_dir = self.data_dir
            if "novel-depth" in self.task:
                config.pipeline.datamanager.eval_novel_views = True
            config.pipeline.datamanager.num_workers = min(config.pipeline.datamanager.num_workers, 2)
            return config

        config, pipeline, checkpoint, step = eval_setup(self.load_config, test_mode="test", update_config_callback=update)
        if self.split == "train":
            dm = pipeline.datamanager
            dm.eval_dataparser_outputs = dm.train_dataparser_outputs
        options = pipeline.eval_options(
            tasks=tuple(self.task),
            occupancy_protocol=self.protocol,
            occupancy_threshold=self.threshold,
            flip=self.flip,
            lattice_fraction=self.lattice_fraction,
        )
        start = time.perf_counter()
        results = pipeline.evaluate(
            options, indices=pipeline.eval_indices(self.max_samples), output_path=self.render_output_path, progress=True
        )
        seconds = time.perf_counter() - start
        report = {
            "experiment_name": config.experiment_name,
            "method_name": config.method_name,
            "checkpoint": str(checkpoint),
            "step": int(step),
            "split": pipeline.datamanager.eval_index.split,
            "tasks": list(self.task),
            "protocol": {"occupancy": self.protocol, "threshold": self.threshold, "depth_flip": self.flip},
            "seconds": seconds,
            "results": results,
        }
        print(format_table(results, title=f"{config.method_name} @ step {step} on {report['split']}"))
        if self.output_path is not None:
            self.output_path.parent.mkdir(parents=True, exist_ok=True)
            self.output_path.write_text(json.dumps(report, indent=2), "utf8")
            print(f"wrote {self.output_path}")
        return report


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(SelfOccEval).main()


if __name__ == "__main__":
    entrypoint()
