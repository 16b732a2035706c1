"""Trainer subclass: global gradient clipping, non-finite step skipping, schedules tied to the run length.

nerfstudio 1.1.5 clips gradients per parameter group (`max_norm` of each optimizer); the official SelfOcc
clips the norm over ALL parameters at 35. A step whose loss or gradient norm is not finite is skipped (no
optimizer step, and the BatchNorm running statistics its forward pass updated are put back), so one bad batch
cannot poison the weights. Every skipped step is printed with the running count; after
`max_consecutive_skipped_steps` skipped steps in a row the run stops with `TrainingDiverged` (non-zero exit,
no checkpoint of the diverged state). The counts are saved in the checkpoint, so they survive a resume.
Under DDP the gradients are already all-reduced when the norm is taken, so every rank takes the same decision.

Checkpoints are written atomically and a resume skips a corrupt newest checkpoint (`selfocc_ns/checkpoints.py`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Type

import torch
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from selfocc_ns.checkpoints import load_newest_valid, read_checkpoint, save_atomic
from selfocc_ns.optim import WarmupStepDecaySchedulerConfig


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps: the run stops instead of saving an untrained or broken model."""


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
    max_consecutive_skipped_steps: int = 5
    """Stop with an error after this many non-finite (skipped) steps in a row; 0 never stops."""


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
        except TrainingDiverged:
            raise
        except Exception as err:
            self._save_before_failure(err)
            raise
        finally:
            self.config.max_num_iterations = total

    def _save_before_failure(self, err: Exception) -> None:
        """The run failed (a file unreadable when its batch is drawn, an eval during training, ...): keep the
        steps it finished by saving the checkpoint of the last completed one."""
        done = self._last_completed_step
        if done is None:
            return
        self.save_checkpoint(done)
        CONSOLE.print(f"[bold red]selfocc:[/bold red] the run failed after step {done} ({type(err).__name__}: {err});"
                      f" saved the checkpoint of step {done}, the last completed one: fix the cause and run again "
                      "with --load-dir to resume", soft_wrap=True, highlight=False)

    def setup_optimizers(self) -> Optimizers:
        # Schedules given as fractions of the run learn the run length here, so --max-num-iterations just works.
        for group in self.config.optimizers.values():
            scheduler = group.get("scheduler")
            if isinstance(scheduler, WarmupStepDecaySchedulerConfig) and scheduler.max_steps is None:
                scheduler.max_steps = self.config.max_num_iterations
        self.skipped_steps = 0
        self.consecutive_skipped_steps = 0
        self._last_completed_step: Optional[int] = None
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
        bn_state = batchnorm_state(self.pipeline.model)
        device_type = "cpu" if self.device.split(":")[0] in ("cpu", "mps") else "cuda"
        try:
            with torch.autocast(device_type=device_type, enabled=self.mixed_precision):
                _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
                loss = functools.reduce(torch.add, loss_dict.values())
        except Exception:
            restore_batchnorm_state(bn_state)  # nothing of this step is applied
            raise
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
            self.consecutive_skipped_steps = 0
        else:
            self.optimizers.zero_grad_all()
            restore_batchnorm_state(bn_state)
            # fp16 loss-scale overflow (finite loss, infinite gradient) is routine: the scaler lowers its scale
            overflow = self.mixed_precision and bool(torch.isfinite(loss.detach()))
            self._count_skipped_step(step, loss, grad_norm, counts_towards_limit=not overflow)
        metrics_dict["grad_norm"] = grad_norm.detach()
        metrics_dict["skipped_steps"] = float(self.skipped_steps)

        scale = self.grad_scaler.get_scale()
        self.grad_scaler.update()
        if scale <= self.grad_scaler.get_scale():
            self.optimizers.scheduler_step_all(step)
        self._last_completed_step = step
        return loss, loss_dict, metrics_dict

    def _count_skipped_step(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor,
                            counts_towards_limit: bool = True) -> None:
        """Print the skipped step with the running counts; raise `TrainingDiverged` after too many in a row."""
        self.skipped_steps += 1
        self.consecutive_skipped_steps += int(counts_towards_limit)
        limit = self.config.max_consecutive_skipped_steps
        CONSOLE.print(
            f"[bold yellow]selfocc:[/bold yellow] step {step} skipped: loss {float(loss.detach()):.4g}, gradient norm "
            f"{float(grad_norm):.4g} (not finite); {self.skipped_steps} skipped so far, "
            f"{self.consecutive_skipped_steps} in a row" + (f" (the run stops at {limit})" if limit > 0 else "")
        )
        if 0 < limit <= self.consecutive_skipped_steps:
            raise TrainingDiverged(
                f"{self.consecutive_skipped_steps} consecutive training steps (up to step {step}) had a non-finite "
                f"loss or gradient and were skipped ({self.skipped_steps} in all): the run diverged (learning rate "
                "too high?) or its data is broken. No checkpoint of this state is saved; the last checkpoint is "
                "the last good state. Limit: --max-consecutive-skipped-steps."
            )

    # -- checkpoints ---------------------------------------------------------------------------------
    def _checkpoint_state(self, step: int) -> dict:
        """nerfstudio's checkpoint dict plus the skipped-step counts."""
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline
        return {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
            "selfocc_trainer": {
                "skipped_steps": self.skipped_steps,
                "consecutive_skipped_steps": self.consecutive_skipped_steps,
            },
        }

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's save, written atomically (`checkpoints.save_atomic`)."""
        path = save_atomic(self._checkpoint_state(step), self.checkpoint_dir, step)
        if self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != path:
                    old.unlink()

    def _load_checkpoint(self) -> None:
        """nerfstudio's resume, skipping a corrupt newest checkpoint, restoring the skipped-step counts."""
        if self.config.load_dir is not None:
            path, state = load_newest_valid(self.config.load_dir, self.config.load_step)
        elif self.config.load_checkpoint is not None:
            path, state = Path(self.config.load_checkpoint), read_checkpoint(self.config.load_checkpoint)
        else:
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        self._start_step = state["step"] + 1
        self.pipeline.load_pipeline(state["pipeline"], state["step"])
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and self.config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        counts = state.get("selfocc_trainer", {})
        self.skipped_steps = int(counts.get("skipped_steps", 0))
        self.consecutive_skipped_steps = int(counts.get("consecutive_skipped_steps", 0))
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {path} ({self.skipped_steps} skipped steps so far)")


BatchNormState = List[Tuple[torch.nn.modules.batchnorm._BatchNorm, Dict[str, torch.Tensor]]]


def batchnorm_state(module: torch.nn.Module) -> BatchNormState:
    """Copies of the running statistics of every BatchNorm layer that tracks them (restored after a skipped step)."""
    out: BatchNormState = []
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training:
            saved = {name: buf.detach().clone() for name, buf in m.named_buffers(recurse=False) if buf is not None}
            out.append((m, saved))
    return out


def restore_batchnorm_state(state: BatchNormState) -> None:
    with torch.no_grad():
        for m, saved in state:
            for name, value in saved.items():
                getattr(m, name).copy_(value)
