"""Summing accumulator state over torch.distributed ranks.

Every accumulator in this package keeps only sums and counts, so summing them over ranks gives
exactly what one process that saw every sample would hold (integer counts exactly; float64
sums up to summation order, i.e. ~1e-16 relative).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed_world_size() -> int:
    """Number of ranks of the default process group, 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum `tensor` over all ranks; returns a new CPU tensor (the input is left untouched).

    A no-op copy when torch.distributed is not initialised. NCCL only reduces CUDA tensors, so
    the state travels through the current CUDA device for that backend and through the CPU
    otherwise (gloo, mpi).
    """
    out = tensor.detach().clone()
    if distributed_world_size() == 1:
        return out.cpu()
    if dist.get_backend() == "nccl":
        out = out.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        out = out.cpu()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()
