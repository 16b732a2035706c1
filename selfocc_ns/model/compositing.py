"""Compositing along rays with nerfacc: dense references and packed (`ray_indices`) fast paths.

Every ray here has the same S samples, so the packed layout (nerfacc's flattened samples with the index
of their ray, what its own samplers produce) is a reshape of the dense one. The dense functions run on
any device (nerfacc's torch cumprod / sum); the packed weights need CUDA (nerfacc's packed scan kernel
raises on CPU). `composite_weights` / `accumulate` dispatch on the `packed` flag the renderer chooses.

Shapes: `*rays` any leading dims, S samples per ray, D value channels.

`transmittance_eps` (official 1e-4): T_i = prod_{j<i} (1 - alpha_j + eps), as sdfstudio's
`get_weights_and_transmittance_from_alphas`; the weights can then sum to more than 1 (up to (1 + eps)^(S-1)
through empty space). nerfacc computes it as its exact transmittance of alpha - eps, and `weights_torch` is the
plain cumulative-product reference of that formula.
"""

from __future__ import annotations

from typing import Optional, Tuple

import nerfacc
import torch
from jaxtyping import Float, Int
from torch import Tensor


def packed_ray_indices(
    num_rays: int, num_samples: int, device: torch.device | str
) -> Int[Tensor, "num_rays*num_samples"]:
    """Ray index of every sample when `num_rays` rays of `num_samples` samples are flattened: 0 0 .. 1 1 .."""
    return torch.arange(num_rays, device=device).repeat_interleave(num_samples)


def _packed_layout(samples: Float[Tensor, "*rays S"]) -> Tuple[int, Int[Tensor, "N"]]:
    """(number of rays, ray index of every flattened sample) of a dense [*rays, S] tensor."""
    num_samples = samples.shape[-1]
    num_rays = samples.numel() // num_samples
    return num_rays, packed_ray_indices(num_rays, num_samples, samples.device)


def weights_torch(alphas: Float[Tensor, "*rays S"], transmittance_eps: float = 0.0) -> Float[Tensor, "*rays S"]:
    """Reference formula: w_i = alpha_i prod_{j<i} (1 - alpha_j + eps), an exclusive cumulative product."""
    factors = 1.0 - alphas + transmittance_eps
    transmittance = torch.cumprod(torch.cat([torch.ones_like(factors[..., :1]), factors[..., :-1]], dim=-1), dim=-1)
    return alphas * transmittance


def composite_weights_dense(
    alphas: Float[Tensor, "*rays S"], transmittance_eps: float = 0.0
) -> Float[Tensor, "*rays S"]:
    """w_i = alpha_i prod_{j<i} (1 - alpha_j + eps) by nerfacc's dense `render_weight_from_alpha` (eps = 0) or
    `render_transmittance_from_alpha` of alpha - eps."""
    if transmittance_eps == 0.0:
        return nerfacc.render_weight_from_alpha(alphas)[0]
    return alphas * nerfacc.render_transmittance_from_alpha(alphas - transmittance_eps)


def composite_weights_packed(
    alphas: Float[Tensor, "*rays S"], transmittance_eps: float = 0.0
) -> Float[Tensor, "*rays S"]:
    """`composite_weights_dense` through nerfacc's packed scan (CUDA only)."""
    num_rays, ray_indices = _packed_layout(alphas)
    flat = alphas.reshape(-1)
    if transmittance_eps == 0.0:
        weights, _ = nerfacc.render_weight_from_alpha(flat, ray_indices=ray_indices, n_rays=num_rays)
    else:
        transmittance = nerfacc.render_transmittance_from_alpha(
            flat - transmittance_eps, ray_indices=ray_indices, n_rays=num_rays
        )
        weights = flat * transmittance
    return weights.reshape(alphas.shape)


def accumulate_dense(
    weights: Float[Tensor, "*rays S"], values: Optional[Float[Tensor, "*rays S D"]] = None
) -> Float[Tensor, "*rays D"]:
    """Reference: sum_i w_i v_i along rays by nerfacc's dense `accumulate_along_rays` (D = 1 when values is None)."""
    return nerfacc.accumulate_along_rays(weights, values)


def accumulate_packed(
    weights: Float[Tensor, "*rays S"], values: Optional[Float[Tensor, "*rays S D"]] = None
) -> Float[Tensor, "*rays D"]:
    """`accumulate_dense` through nerfacc's packed `accumulate_along_rays` (a scatter-add by ray index)."""
    num_rays, ray_indices = _packed_layout(weights)
    flat_values = None if values is None else values.reshape(weights.numel(), -1)
    out = nerfacc.accumulate_along_rays(weights.reshape(-1), flat_values, ray_indices=ray_indices, n_rays=num_rays)
    return out.reshape(*weights.shape[:-1], out.shape[-1])


def composite_weights(
    alphas: Float[Tensor, "*rays S"], packed: bool = False, transmittance_eps: float = 0.0
) -> Float[Tensor, "*rays S"]:
    """Rendering weights w_i = alpha_i prod_{j<i} (1 - alpha_j + eps): the packed fast path or the dense one."""
    if packed:
        return composite_weights_packed(alphas, transmittance_eps)
    return composite_weights_dense(alphas, transmittance_eps)


def accumulate(
    weights: Float[Tensor, "*rays S"], values: Optional[Float[Tensor, "*rays S D"]] = None, packed: bool = False
) -> Float[Tensor, "*rays D"]:
    """sum_i w_i v_i along rays (accumulation when values is None): the packed fast path or the dense reference."""
    return accumulate_packed(weights, values) if packed else accumulate_dense(weights, values)
