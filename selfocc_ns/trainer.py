"""Trainer subclass: global gradient clipping, non-finite step skipping, schedules tied to the run length.

nerfstudio 1.1.5 clips gradients per parameter group (`max_norm` of each optimizer); the official SelfOcc
clips the norm over ALL parameters at 35. A step whose gradient norm is not finite is skipped (no optimizer
step, counted in `skipped_steps`), so one bad batch cannot poison the weights. Under DDP the gradients are
already all-reduced when the norm is taken, so every rank takes the same decision.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Type

import torch
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from selfocc_ns.optim import WarmupStepDecaySchedulerConfig


@dataclass
class SelfOccTrainerConfig(TrainerConfig):
    """TrainerConfig with SelfOcc's global gradient clipping."""

    _target: Type = field(default_factory=lambda: SelfOccTrainer)
    grad_clip_max_norm: Optional[float] = 35.0
    """Clip the gradient norm over all parameters to this (official 35); None disables clipping."""
    max_train_minutes: Optional[float] = None
    """Stop (and save a checkpoint) after this much wall-clock training time, even before max-num-iterations."""
    run_dir: Optional[Path] = None
    """The run's folder (config.yml, nerfstudio_models/, logs) instead of output-dir/experiment/method/timestamp."""

    def get_base_dir(self) -> Path:
        """nerfstudio's run folder, or `run_dir` when set (runs written by `selfocc-import-official`)."""
        if self.run_dir is not None:
            return Path(self.run_dir)
        return super().get_base_dir()


class SelfOccTrainer(Trainer):
    """nerfstudio's Trainer with SelfOcc's clipping, step skipping and run-length semantics.

    `--max-num-iterations` is the length of the whole run: a run resumed from step k trains steps
    k+1 .. max-1 (nerfstudio would train max more steps), so the warm-up / decay schedule and the data order
    of a resumed run are those of the uninterrupted run.
    """

    config: SelfOccTrainerConfig

    def train(self) -> None:
        total = self.config.max_num_iterations
        remaining = total - self._start_step
        if remaining <= 0:
            CONSOLE.print(f"selfocc: the checkpoint is at step {self._start_step - 1}, the run ends at {total}: nothing to do")
            return
        self.config.max_num_iterations = remaining  # nerfstudio's loop runs start .. start + this
        try:
            super().train()
        finally:
            self.config.max_num_iterations = total

    def setup_optimizers(self) -> Optimizers:
        # Schedules given as fractions of the run learn the run length here, so --max-num-iterations just works.
        for group in self.config.optimizers.values():
            scheduler = group.get("scheduler")
            if isinstance(scheduler, WarmupStepDecaySchedulerConfig) and scheduler.max_steps is None:
                scheduler.max_steps = self.config.max_num_iterations
        self.skipped_steps = 0
        self._train_started_s: Optional[float] = None
        return super().setup_optimizers()

    def _check_time_budget(self) -> None:
        """Ask nerfstudio's loop to stop after this step once the wall-clock budget is used up."""
        if self._train_started_s is None:
            self._train_started_s = time.perf_counter()
        budget = self.config.max_train_minutes
        if budget is not None and time.perf_counter() - self._train_started_s >= 60.0 * budget:
            self.stop_training = True  # the loop breaks before the next step, then saves a checkpoint

    def train_iteration(self, step: int):
        self._check_time_budget()
        if any(n != 1 for n in self.gradient_accumulation_steps.values()):
            raise ValueError("selfocc's trainer does not support gradient accumulation; raise the batch size instead")
        self.optimizers.zero_grad_all()
        device_type = "cpu" if self.device.split(":")[0] in ("cpu", "mps") else "cuda"
        with torch.autocast(device_type=device_type, enabled=self.mixed_precision):
            _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
            loss = functools.reduce(torch.add, loss_dict.values())
        self.grad_scaler.scale(loss).backward()

        for optimizer in self.optimizers.optimizers.values():
            self.grad_scaler.unscale_(optimizer)
        params = [p for group in self.optimizers.parameters.values() for p in group if p.grad is not None]
        max_norm = self.config.grad_clip_max_norm
        if max_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
        finite = bool(torch.isfinite(grad_norm)) and bool(torch.isfinite(loss.detach()))
        if finite:
            for optimizer in self.optimizers.optimizers.values():
                if any(p.grad is not None for g in optimizer.param_groups for p in g["params"]):
                    self.grad_scaler.step(optimizer)
        else:
            self.skipped_steps += 1
            self.optimizers.zero_grad_all()
        metrics_dict["grad_norm"] = grad_norm.detach()
        metrics_dict["skipped_steps"] = float(self.skipped_steps)

        scale = self.grad_scaler.get_scale()
        self.grad_scaler.update()
        if scale <= self.grad_scaler.get_scale():
            self.optimizers.scheduler_step_all(step)
        return loss, loss_dict, metrics_dict
