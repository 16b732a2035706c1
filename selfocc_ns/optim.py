"""Optimiser and learning-rate schedule of the official SelfOcc configs: AdamW; linear warm-up, then a step decay."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Type

import torch
from nerfstudio.engine.optimizers import OptimizerConfig
from nerfstudio.engine.schedulers import Scheduler, SchedulerConfig
from torch.optim import Optimizer, lr_scheduler


@dataclass
class AdamWOptimizerConfig(OptimizerConfig):
    """AdamW (official SelfOcc: lr 1e-4, weight decay 0.01); nerfstudio 1.1.5 ships Adam and RAdam only."""

    _target: Type = torch.optim.AdamW
    lr: float = 1e-4
    """The learning rate."""
    weight_decay: float = 0.01
    """Decoupled weight decay (official 0.01)."""


@dataclass
class WarmupStepDecaySchedulerConfig(SchedulerConfig):
    """Linear warm-up from `lr_pre_warmup` over `warmup_steps`, then x`gamma` at `decay_fraction` of the run."""

    _target: Type = field(default_factory=lambda: WarmupStepDecayScheduler)
    lr_pre_warmup: float = 1e-6
    """Learning rate at step 0 (official 1e-6)."""
    warmup_steps: int = 1000
    """Length of the linear warm-up (official 1000 iterations)."""
    decay_fraction: float = 0.75
    """The decay happens at this fraction of `max_steps` (official: epoch 9 of 12, 18 of 24)."""
    gamma: float = 0.1
    """Decay factor (official 0.1)."""
    max_steps: Optional[int] = None
    """Run length; None = the trainer's --max-num-iterations."""


class WarmupStepDecayScheduler(Scheduler):
    config: WarmupStepDecaySchedulerConfig

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        cfg = self.config
        if cfg.max_steps is None:
            raise ValueError("WarmupStepDecayScheduler needs max_steps (the SelfOcc trainer fills it in)")
        decay_step = int(cfg.decay_fraction * cfg.max_steps)
        start = min(1.0, cfg.lr_pre_warmup / lr_init)

        def factor(step: int) -> float:
            warm = start + (1.0 - start) * min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
            return warm * (cfg.gamma if step >= decay_step else 1.0)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
