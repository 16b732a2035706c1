"""`selfocc-eval`: SelfOcc's metrics on an existing checkpoint, with the flags `ns-eval` cannot take.

    selfocc-eval --load-config outputs/.../config.yml --tasks depth occupancy --occupancy-protocol selfocc \
        --split val --output-path eval.json

Loads the run like `ns-eval` (nerfstudio's `eval_setup`, latest checkpoint), evaluates the chosen tasks
on the chosen split with a progress bar, prints a summary table (model beside the trivial baselines) and
writes a JSON report that names the protocol (layout: docs/evaluation.md).

The evaluation flags start from the run's own `pipeline.evaluation` (so a run of an official preset is scored
with the official protocol unless a flag says otherwise); `--help` with `--load-config` shows those defaults.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence

import tyro
from typing_extensions import Annotated

from selfocc_ns.eval.options import EvalOptions

Split = Literal["val", "train"]


def load_pipeline(
    load_config: Path,
    split: Split = "val",
    data_dir: Optional[Path] = None,
    gts_dir: Optional[Path] = None,
    max_workers: int = 2,
    load_step: Optional[int] = None,
):
    """(config, pipeline, checkpoint path, step) of a training run, set up like `ns-eval` does.

    `split` 'val' is what ns-eval evaluates (nerfstudio's "test" split, mapped to the official val scenes);
    'train' evaluates the training keyframes instead. `data_dir` / `gts_dir` point the dataparser at
    another nuScenes root / Occ3D gts folder; `load_step` picks the checkpoint of that step instead of the latest.
    """
    from nerfstudio.utils.eval_utils import eval_setup

    def update(config):
        dataparser = config.pipeline.datamanager.dataparser
        if data_dir is not None:
            dataparser.data_dir = Path(data_dir)
        if gts_dir is not None:
            dataparser.gts_dir = Path(gts_dir)
        config.pipeline.datamanager.num_workers = min(config.pipeline.datamanager.num_workers, max_workers)
        if load_step is not None:
            checkpoint = config.get_checkpoint_dir() / f"step-{load_step:09d}.ckpt"
            if not checkpoint.is_file():
                found = sorted(p.name for p in config.get_checkpoint_dir().glob("step-*.ckpt"))
                raise FileNotFoundError(f"no checkpoint of step {load_step}: {checkpoint} (found: {', '.join(found)})")
            config.load_step = load_step
        return config

    config, pipeline, checkpoint, step = eval_setup(Path(load_config), test_mode="test",
                                                    update_config_callback=update)
    if split == "train":
        dm = pipeline.datamanager
        dm.eval_dataparser_outputs = dm.train_dataparser_outputs
    return config, pipeline, checkpoint, step


@dataclass
class SelfOccEval:
    """Evaluate a SelfOcc checkpoint (depth, novel depth, occupancy) on a split of its dataset."""

    load_config: Path
    """config.yml of the training run (as for ns-eval); run from the training directory if paths are relative."""
    evaluation: Annotated[EvalOptions, tyro.conf.OmitArgPrefixes] = field(default_factory=EvalOptions)
    """Tasks and protocol (the pipeline's `evaluation` options, as flags here)."""
    split: Split = "val"
    """Which split of the run's dataset to evaluate (val = the official val scenes, what ns-eval uses)."""
    max_samples: Optional[int] = None
    """Evaluate at most this many keyframes (evenly spaced); default: every keyframe of the split."""
    all_samples: bool = False
    """Evaluate every keyframe of the split (the default; overrides --max-samples)."""
    data_dir: Optional[Path] = None
    """Evaluate on another nuScenes root than the one the run trained on."""
    gts_dir: Optional[Path] = None
    """Score occupancy against another Occ3D gts folder (<gts-dir>/<scene>/<sample_token>/labels.npz)."""
    load_step: Optional[int] = None
    """Evaluate the checkpoint of this step (default: the latest)."""
    output_path: Optional[Path] = None
    """Write the JSON report here."""
    render_output_path: Optional[Path] = None
    """Write colour-mapped depth PNGs (and occupancy bird's-eye views) here."""

    def main(self) -> Dict[str, Any]:
        from selfocc_ns.eval.outputs import check_output_dir, check_output_file
        from selfocc_ns.eval.runner import write_results_json
        from selfocc_ns.metrics import format_table
        from selfocc_ns.pipeline import EvaluationFailed

        if self.output_path is not None:  # before any work: a long eval must not end by losing its report
            check_output_file(self.output_path, "--output-path")
        if self.render_output_path is not None:
            check_output_dir(self.render_output_path, "--render-output-path")
        config, pipeline, checkpoint, step = load_pipeline(
            self.load_config, self.split, self.data_dir, self.gts_dir, load_step=self.load_step
        )
        options = self.evaluation
        total = len(pipeline.datamanager.eval_index.samples)
        max_samples = total if self.all_samples or self.max_samples is None else self.max_samples
        indices = pipeline.eval_indices(max_samples)
        start = time.perf_counter()
        failure: Optional[EvaluationFailed] = None
        try:
            results = pipeline.evaluate(options, indices=indices, output_path=self.render_output_path, progress=True)
        except EvaluationFailed as err:
            failure, results = err, err.partial_results
        seconds = time.perf_counter() - start
        report = {
            "experiment_name": config.experiment_name,
            "method_name": config.method_name,
            "checkpoint": str(checkpoint),
            "step": int(step),
            "split": pipeline.datamanager.eval_index.split,
            "num_samples": len(indices),
            "tasks": list(options.tasks),
            "protocol": {
                "occupancy": options.occupancy_protocol,
                "threshold_m": options.occupancy_threshold,
                "occupancy_mask": options.occupancy_mask,
                "depth_flip": options.flip,
                "lattice_fraction": results.get("eval/lattice_fraction"),
            },
            "baselines": {
                "depth": "constant median LiDAR depth of the training keyframes (depth_m)",
                "occupancy": "flat ground: everything below z = 0 is driveable_surface",
            } if options.baseline else {},
            "seconds": seconds,
            "complete": failure is None,
            "results": results,
        }
        if failure is not None:
            report.update(error=str(failure), num_samples_done=failure.samples_done)
        title = (f"{config.method_name} @ step {step} on {report['split']} ({len(indices)} keyframes; "
                 f"occupancy protocol {options.occupancy_protocol}, threshold {options.occupancy_threshold}, "
                 f"mask {options.occupancy_mask}, "
                 f"flip {options.flip})")
        if failure is not None:
            title = f"PARTIAL ({failure.samples_done} of {len(indices)} keyframes): " + title
        print(format_table(results, title=title))
        print(f"evaluated {report['num_samples'] if failure is None else failure.samples_done} keyframes in {seconds:.1f} s")
        if self.output_path is not None:
            write_results_json(self.output_path, report)
            print(f"wrote {self.output_path}" + (" (partial report)" if failure is not None else ""))
        if failure is not None:
            raise SystemExit(f"selfocc-eval: {failure}")
        return report


def load_config_argument(argv: Sequence[str]) -> Optional[Path]:
    """The value of `--load-config` (`--load-config X` or `--load-config=X`, also `--load_config`) in argv."""
    for i, arg in enumerate(argv):
        for name in ("--load-config", "--load_config"):
            if arg == name and i + 1 < len(argv):
                return Path(argv[i + 1])
            if arg.startswith(name + "="):
                return Path(arg.split("=", 1)[1])
    return None


def run_evaluation_options(load_config: Path) -> Optional[EvalOptions]:
    """The `pipeline.evaluation` of a run's config.yml; None when it cannot be read (main() reports why)."""
    import yaml

    try:
        config = yaml.load(Path(load_config).read_text(), Loader=yaml.Loader)
    except Exception:  # noqa: BLE001 -- unreadable or foreign config: eval_setup gives the real error later
        return None
    options = getattr(getattr(config, "pipeline", None), "evaluation", None)
    return options if isinstance(options, EvalOptions) else None


def cli(argv: Optional[List[str]] = None) -> SelfOccEval:
    """Parse selfocc-eval's flags; the evaluation options default to the run's own (`--load-config`)."""
    argv = sys.argv[1:] if argv is None else argv
    load_config = load_config_argument(argv)
    run_options = run_evaluation_options(load_config) if load_config is not None else None
    if run_options is None:
        return tyro.cli(SelfOccEval, args=argv)
    return tyro.cli(SelfOccEval, args=argv, default=SelfOccEval(load_config=load_config, evaluation=run_options))


def entrypoint() -> None:
    tyro.extras.set_accent_color("bright_yellow")
    cli().main()


if __name__ == "__main__":
    entrypoint()
