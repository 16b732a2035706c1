"""The SelfOcc pipeline: nerfstudio's VanillaPipeline with SelfOcc's evaluation and CPU-capable DDP.

- `get_average_eval_image_metrics` (what `ns-eval` calls) runs the eval tasks configured at training time
  (`evaluation.tasks`: depth by default) over the eval split and returns one flat dict of floats, baselines
  included; with `output_path` it writes colour-mapped depth PNGs there.
- DDP: nerfstudio wraps the model with `device_ids=[local_rank]`, which only works on CUDA; here CPU
  modules are wrapped without device ids (gloo), so the distributed path also runs on the CPU.
- SyncBN (`sync_batchnorm`, official): with more than one process on CUDA the model's BatchNorms become
  `SyncBatchNorm` before the DDP wrap, so the backbone's statistics are taken over every GPU's six cameras (the
  frozen stem BN stays frozen, `ImageEncoder.frozen_modules`). torch implements SyncBatchNorm for CUDA only:
  on the CPU (gloo) the model keeps its BatchNorms and the pipeline says so once.
"""

from __future__ import annotations

import dataclasses
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Literal, Optional, Type

import torch
import torch.distributed as dist
from nerfstudio.models.base_model import Model
from nerfstudio.pipelines.base_pipeline import Pipeline, VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch.cuda.amp.grad_scaler import GradScaler
from torch.nn.parallel import DistributedDataParallel as DDP

from selfocc_ns.checkpoints import install_eval_fallback
from selfocc_ns.data.datamanager import SelfOccDataManagerConfig
from selfocc_ns.eval.options import EvalOptions
from selfocc_ns.eval.outputs import json_safe
from selfocc_ns.eval.runner import Evaluator, evaluate_batches, median_lidar_depth, numeric_results
from selfocc_ns.model.selfocc import SelfOccModelConfig


class EvaluationFailed(RuntimeError):
    """An evaluation that stopped part-way (a file that only fails when read); carries what was scored so far."""

    def __init__(self, message: str, partial_results: Dict[str, Any], samples_done: int, samples_total: int):
        super().__init__(message)
        self.partial_results = partial_results
        self.samples_done = samples_done
        self.samples_total = samples_total


@dataclass
class SelfOccPipelineConfig(VanillaPipelineConfig):
    """Pipeline of the SelfOcc methods."""

    _target: Type = field(default_factory=lambda: SelfOccPipeline)
    datamanager: SelfOccDataManagerConfig = field(default_factory=SelfOccDataManagerConfig)
    """Surround-view temporal samples."""
    model: SelfOccModelConfig = field(default_factory=SelfOccModelConfig)
    """The SelfOcc model."""
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    """What `ns-eval` and the evals during training report, and by which protocol."""
    eval_max_samples: Optional[int] = None
    """Evals during training: at most this many eval keyframes (evenly spaced); None = all. (`ns-eval` and
    `selfocc-eval` evaluate the whole split.)"""
    sync_batchnorm: bool = False
    """With several CUDA processes, BatchNorm -> SyncBatchNorm before DDP (official); unsupported on CPU / gloo."""


def sync_batchnorm(model: torch.nn.Module, on_cuda: bool) -> torch.nn.Module:
    """`model` with its BatchNorms as SyncBatchNorm (CUDA); unchanged, with one notice, elsewhere."""
    if not on_cuda:
        CONSOLE.print("[yellow]selfocc: sync_batchnorm is on, but torch's SyncBatchNorm needs CUDA; training on the "
                      "CPU (gloo) keeps per-process BatchNorm statistics[/yellow]")
        return model
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    converted.train(model.training)  # re-applies the frozen stem's eval mode to the converted BN
    return converted


class SelfOccPipeline(VanillaPipeline):
    config: SelfOccPipelineConfig

    def __init__(
        self,
        config: SelfOccPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ):
        Pipeline.__init__(self)
        install_eval_fallback()  # eval_setup (ns-eval, ns-viewer, ns-render) loads the newest VALID checkpoint
        self.config = config
        self.test_mode = test_mode
        self.datamanager = config.datamanager.setup(
            device=device, test_mode=test_mode, world_size=world_size, local_rank=local_rank
        )
        self.datamanager.to(device)
        self._model = config.model.setup(
            scene_box=self.datamanager.train_dataset.scene_box,
            num_train_data=len(self.datamanager.train_dataset),
            metadata=self.datamanager.train_dataset.metadata,
            device=device,
            grad_scaler=grad_scaler,
        )
        self.model.to(device)
        self.datamanager.set_use_semantics(self.model.uses_semantics)
        self.datamanager.set_semantic_label_space(self.model.semantic_label_space)
        lattice_h, lattice_w = config.model.renderer.train_lattice_hw
        self.datamanager.train_rays_per_batch = (
            config.datamanager.batch_size * len(self.datamanager.train_index.cameras) * lattice_h * lattice_w
        )
        from selfocc_ns.viewer import attach_viewer

        attach_viewer(self)  # `self.selfocc`: viewer controls and layers (no parameters; see selfocc_ns/viewer/)
        self.world_size = world_size
        if world_size > 1:
            on_cuda = torch.device(device).type == "cuda"
            if config.sync_batchnorm:
                self._model = typing.cast(Model, sync_batchnorm(self._model, on_cuda))
            self._model = typing.cast(
                Model,
                DDP(self._model, device_ids=[local_rank] if on_cuda else None, find_unused_parameters=True),
            )
            dist.barrier()
        self._baseline_depth_m: Optional[float] = None

    def get_train_loss_dict(self, step: int):
        batch, extra = self.datamanager.next_train(step)
        outputs = self._model(batch)
        metrics_dict = self.model.get_metrics_dict(outputs, batch)
        metrics_dict["data_wait_s"] = extra["data_wait_s"]
        for key, count in batch.info.get("counters", {}).items():
            metrics_dict[f"data/{key}"] = float(count)
        loss_dict = self.model.get_loss_dict(outputs, batch, metrics_dict)
        return outputs, loss_dict, metrics_dict

    # -- evaluation ----------------------------------------------------------------------------------
    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Eval mode for the block, then back to the mode the pipeline was in (also on errors)."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def get_eval_loss_dict(self, step: int):
        """nerfstudio's 'Eval Loss' (every `steps_per_eval_batch`): the training losses on an eval-split keyframe
        with training-style anchor/source draws, in eval mode and without gradients."""
        with self._eval_mode():
            batch, _ = self.datamanager.next_eval(step)
            outputs = self.model(batch)
            metrics_dict = self.model.get_metrics_dict(outputs, batch)
            loss_dict = self.model.get_loss_dict(outputs, batch, metrics_dict)
        return outputs, loss_dict, metrics_dict

    def eval_options(self, **overrides) -> EvalOptions:
        """The configured eval options with some replaced (`dataclasses.replace`)."""
        return dataclasses.replace(self.config.evaluation, **overrides)

    def baseline_depth_m(self) -> float:
        """Median LiDAR depth over training keyframes (the constant-depth baseline), computed once."""
        if self._baseline_depth_m is None:
            self._baseline_depth_m = median_lidar_depth(self.datamanager.train_index)
        return self._baseline_depth_m

    def eval_indices(self, max_samples: Optional[int] = None) -> list:
        """This rank's eval keyframes (evenly spaced when limited)."""
        total = len(self.datamanager.eval_index.samples)
        limit = max_samples if max_samples is not None else self.config.eval_max_samples
        indices = list(range(total))
        if limit is not None and limit < total:
            step = total / limit
            indices = sorted({int(i * step) for i in range(limit)})
        rank, world = self.datamanager.rank, self.datamanager.world_size
        return indices[rank::world]

    @torch.no_grad()
    def evaluate(
        self,
        options: Optional[EvalOptions] = None,
        indices: Optional[list] = None,
        output_path: Optional[Path] = None,
        progress: bool = False,
        baseline_depth_m: Optional[float] = None,
    ) -> Dict[str, Any]:
        """Run the eval tasks over the eval split; all ranks must call it (metrics are all-reduced).

        `baseline_depth_m` fixes the constant-depth baseline (default: the median training LiDAR depth).
        """
        from selfocc_ns.eval.images import write_eval_images

        options = options or self.config.evaluation
        indices = self.eval_indices() if indices is None else indices
        if options.needs_depth_baseline and baseline_depth_m is None:
            baseline_depth_m = self.baseline_depth_m()
        with self._eval_mode():
            evaluator = Evaluator(self.model, options, self.datamanager.eval_index.cameras, baseline_depth_m)
            batches = self.datamanager.iter_eval_batches(indices, novel_views="novel-depth" in options.tasks)
            try:
                for n, (batch, outputs) in enumerate(evaluate_batches(evaluator, batches, progress, len(indices))):
                    if output_path is not None:
                        write_eval_images(output_path, batch, outputs, indices[n])
            except Exception as err:
                if self.world_size > 1:
                    raise  # the other ranks could not all-reduce a partial result
                raise EvaluationFailed(
                    f"evaluation stopped after {evaluator.samples} of {len(indices)} keyframes: {err}",
                    evaluator.results(), evaluator.samples, len(indices),
                ) from err
            results = evaluator.results()
        return results

    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, float]:
        """What `ns-eval` and eval during training call: the configured tasks, a flat dict of floats only
        (string values such as `occ/protocol: selfocc` become `occ/protocol/selfocc: 1.0`).

        During training (`step` given) at most `eval_max_samples` keyframes; `ns-eval` (no step) evaluates the
        whole split, as the official protocol does.
        """
        indices = None if step is not None else self.eval_indices(len(self.datamanager.eval_index.samples))
        results = self.evaluate(indices=indices, output_path=output_path)
        CONSOLE.print(f"selfocc eval on {int(results.get('eval/num_samples', 0))} keyframes done")
        numeric = numeric_results(results)
        if not get_std:
            numeric = {k: v for k, v in numeric.items() if not k.endswith("_std")}
        if step is None:  # ns-eval json.dumps this: NaN would be written as the non-standard `NaN`
            numeric, non_finite = json_safe(numeric)
            if non_finite:
                CONSOLE.print(f"[bold yellow]selfocc warning:[/bold yellow] non-finite metric(s) reported as null: "
                              f"{', '.join(non_finite)}", soft_wrap=True)
        return numeric

    @torch.no_grad()
    def get_eval_image_metrics_and_images(self, step: int):
        """One eval keyframe: its depth metrics and the rendered depth images (for tensorboard)."""
        from nerfstudio.utils import colormaps

        with self._eval_mode():
            batch, _ = self.datamanager.next_eval_image(step)
            options = self.eval_options(tasks=("depth",))
            baseline_m = self.baseline_depth_m() if options.needs_depth_baseline else None
            evaluator = Evaluator(self.model, options, self.datamanager.eval_index.cameras, baseline_m)
            outputs = evaluator.add(batch)
            results = evaluator.depth.compute()
        metrics = {k: v for k, v in results.items() if "/CAM_" not in k and not k.endswith("_std")}
        depth = outputs["depth"][0]  # N h w
        metrics["num_rays"] = float(depth.numel())  # nerfstudio's eval loop reports rays per second from it
        row = torch.cat(list(depth), dim=-1)[..., None]
        images = {"depth": colormaps.apply_depth_colormap(row, near_plane=1.0, far_plane=60.0)}
        return metrics, images
