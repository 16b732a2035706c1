"""Empty-space skipping: the faithful renderer's eval numbers from a fraction of its field reads (docs/rendering.md).

The faithful renderer (`SelfOccRenderer.render_rays`) reads the field at all S samples of every ray. Here, the
decoded grid of a sample is known before any ray is cast, so:

1. **Bounds per cell** (`build_skip_grid`). The grid's cells are split into sub-cells of at most `fast_cell_m`
   (the trilinear field restricted to a sub-box is trilinear, so its values at the sub-box corners are exact
   bounds: the smallest SDF `s_min` and the largest gradient norm `C` over the sub-cell). NeuS alpha (ratio 1,
   as at eval) is decreasing in the SDF and increasing in the half section h = c delta / 2 (c = relu(-d . grad)
   <= C), and never below its floor a_0 = eps / (1 + eps) (eps = `NEUS_ALPHA_EPS`). `max_half_section_m` solves
   alpha(s_min, h) = a_0 + `fast_alpha_excess` for h in closed form (a quadratic in e^(k h)); the sub-cell
   stores the largest interval length 2 h / C for which every sample read inside it is within that excess of
   the floor.
2. **Skipped samples** (`skippable_samples`) are those whose read point lies in a sub-cell allowing their
   ray's interval length. They are not read; each is given the floor alpha a_0 exactly (true alpha lies in
   [a_0, a_0 + excess]), so a run of n of them multiplies the transmittance by q^n (q = 1 - a_0 + eps_T, the
   official eps_T counted for every skipped sample) and adds closed-form geometric sums to the accumulation and
   the expected distance (`SkipRunTables`). Skipped samples add nothing to colour and semantics (they weigh at
   most S a_0 (1 + eps_T)^S in total: 0.06 % at 64 samples, 0.26 % at 256).
3. **Kept samples** are read at the faithful renderer's positions (same edges, midpoints, read points, same
   NeuS alpha code), in waves of `WAVE_SAMPLES` per ray; after each wave a ray whose transmittance is below
   `fast_stop_transmittance` stops (what follows weighs less than that times (1 + eps_T)^S).
4. **Compositing** of a wave is an exclusive product of per-sample factors within each ray
   (`segment_exclusive_prod`: nerfacc's packed scan on CUDA, a dense scatter + cumprod in torch elsewhere).

The depth clip ("per_ray" or the official "global" over each `eval_chunk_rays` chunk) only needs the rays' box
entry and exit, so it is computed for the faithful chunks exactly. Shapes: R rays of one batch item, S samples
per ray, P packed (ray, sample) pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from selfocc_ns.model.field_grid import FieldGrid, query_field
from selfocc_ns.model.rays import intersect_aabb, lattice_rays
from selfocc_ns.model.renderer import (
    NEUS_ALPHA_EPS,
    Background,
    RenderOutputs,
    SelfOccRenderer,
    background_colour,
    expected_distance,
)

WAVE_SAMPLES = 16
"""Kept samples read per ray and wave (a ray usually stops within its first wave)."""
MAX_SKIP_CELLS = 2**24
"""Cap on sub-cells of a skip grid (64 MB of float32)."""
MASK_SAMPLES = 2**21
"""Samples tested per block of rays (bounds the memory of the skip test)."""


def alpha_floor(eps: float = NEUS_ALPHA_EPS) -> float:
    """The smallest NeuS alpha, eps / (1 + eps) (reached far outside every surface)."""
    return eps / (1.0 + eps)


# ----------------------------------------------------------------------------------------------
# Bounds
# ----------------------------------------------------------------------------------------------


def neus_alpha_bound_torch(sdf_m: Tensor, half_section_m: Tensor, inv_s: float, eps: float = NEUS_ALPHA_EPS) -> Tensor:
    """Reference: NeuS alpha of a sample with SDF s and half section h = c delta / 2 (ratio 1), any dtype."""
    prev_cdf = torch.sigmoid((sdf_m + half_section_m) * inv_s)
    next_cdf = torch.sigmoid((sdf_m - half_section_m) * inv_s)
    return ((prev_cdf - next_cdf + eps) / (prev_cdf + eps)).clip(0.0, 1.0)


def max_half_section_m(
    sdf_min_m: Float[Tensor, "*cells"], inv_s: float, alpha_excess: float, eps: float = NEUS_ALPHA_EPS
) -> Float[Tensor, "*cells"]:
    """Largest h >= 0 with alpha(s, h) <= alpha_floor + alpha_excess for every s >= sdf_min_m; -1 where none.

    With y = e^(k h), z = e^(-k s), c = 1 - alpha_floor - excess, the condition n / (p + eps) >= c is the
    quadratic a2 y^2 + a1 y - a0 <= 0 (divided by z) with a2 = c (1 + eps), a1 = c eps z - excess (1 + eps) / z,
    a0 = 1 - c eps: y <= y+, its positive root, taken in the form without cancellation for each sign of a1 (in
    logs where a1 < 0, as k s can be large there).
    """
    floor = alpha_floor(eps)
    c = 1.0 - floor - alpha_excess
    a2, a0 = c * (1.0 + eps), 1.0 - c * eps  # a0: minus the constant term
    ratio = c * eps / (alpha_excess * (1.0 + eps))  # a1 < 0  <=>  ratio e^(-2 k s) < 1
    ks = sdf_min_m * inv_s
    # clamps keep exp() out of float32 subnormals (slow on CPUs): beyond them the terms are below 1e-34
    arg = -ratio * torch.exp(-2.0 * ks.clamp(-30.0, 40.0))
    negative = arg > -1.0
    # a1 < 0 (far outside): y+ = (-a1) (1 + sqrt(1 + 4 a2 a0 / a1^2)) / (2 a2), in logs
    log_minus_a1 = ks + math.log(alpha_excess * (1.0 + eps)) + torch.log1p(arg.clamp_min(-1.0 + 1e-7))
    r = 4.0 * a2 * a0 * torch.exp(-2.0 * log_minus_a1.clamp(-30.0, 40.0))
    log_y_far = log_minus_a1 - math.log(2.0 * a2) + torch.log1p(torch.sqrt(1.0 + r))
    # a1 >= 0 (near or inside a surface, k s below ln(ratio) / 2): y+ = 2 a0 / (a1 + sqrt(a1^2 + 4 a2 a0))
    z = torch.exp(-ks.clamp(-30.0, 0.5 * math.log(ratio) + 1.0))
    a1 = c * eps * z - alpha_excess * (1.0 + eps) / z
    log_y_near = math.log(2.0 * a0) - torch.log(a1 + torch.sqrt(a1 * a1 + 4.0 * a2 * a0))
    log_y = torch.where(negative, log_y_far, log_y_near)
    half = log_y / inv_s
    return torch.where(log_y >= 0.0, half, torch.full_like(half, -1.0))


def skip_subdivision(spacing_m, cells_xyz, cell_m: float, max_cells: int = MAX_SKIP_CELLS) -> Tuple[int, int, int]:
    """Sub-cells per grid cell along x, y, z: sides <= cell_m, halving the finest axis while over `max_cells`."""
    factors = [max(1, math.ceil(s / cell_m - 1e-9)) for s in spacing_m]
    while math.prod(n * f for n, f in zip(cells_xyz, factors)) > max_cells and max(factors) > 1:
        axis = max(range(3), key=lambda i: factors[i])
        factors[axis] = max(1, factors[axis] // 2)
    return tuple(factors)  # type: ignore[return-value]


@dataclass
class SkipGrid:
    """Per sub-cell, the largest interval length (metres) whose samples read inside it may be skipped."""

    max_delta_m: Float[Tensor, "1 1 Xc Yc Zc"]
    centre_lo_m: Tuple[float, float, float]
    """Centre of the first sub-cell (x, y, z)."""
    centre_hi_m: Tuple[float, float, float]
    """Centre of the last sub-cell."""

    @property
    def cells_xyz(self) -> Tuple[int, int, int]:
        return tuple(self.max_delta_m.shape[2:])  # type: ignore[return-value]


def corner_min(values: Float[Tensor, "X Y Z"]) -> Float[Tensor, "X-1 Y-1 Z-1"]:
    """Min over the 8 corners of every cell (shifted minima: much faster than max_pool3d on CPU)."""
    values = torch.minimum(values[1:], values[:-1])
    values = torch.minimum(values[:, 1:], values[:, :-1])
    return torch.minimum(values[:, :, 1:], values[:, :, :-1])


def min_filter(values: Float[Tensor, "X Y Z"], radius: int, axis: int) -> Float[Tensor, "X Y Z"]:
    """Min over [i - radius, i + radius] along `axis` (clipped at the ends), by shifted minima."""
    out = values.clone()
    size = values.shape[axis]
    for shift in range(1, min(radius, size - 1) + 1):
        lo, hi = out.narrow(axis, 0, size - shift), out.narrow(axis, shift, size - shift)
        torch.minimum(lo, values.narrow(axis, shift, size - shift), out=lo)
        torch.minimum(hi, values.narrow(axis, 0, size - shift), out=hi)
    return out


def build_skip_grid(
    grid: FieldGrid, inv_s: float, alpha_excess: float, cell_m: float, eps: float = NEUS_ALPHA_EPS
) -> SkipGrid:
    """The `SkipGrid` of a B = 1 field grid: the SDF upsampled (trilinear, exact) to the sub-cell corners and its
    min over each sub-cell's 8 corners; the gradient norm's max over the 8 corners of the grid cell (|grad| of a
    convex combination is at most the largest corner's); `max_half_section_m` -> 2 h / C."""
    if grid.batch_size != 1:
        raise ValueError(f"build_skip_grid takes one sample (B = 1), got B = {grid.batch_size}")
    sdf = grid.sdf.detach()
    nx, ny, nz = grid.grid_xyz
    cells = (nx - 1, ny - 1, nz - 1)
    fx, fy, fz = skip_subdivision(grid.spacing_m, cells, cell_m)
    if (fx, fy, fz) != (1, 1, 1):
        sdf = F.interpolate(sdf, size=(cells[0] * fx + 1, cells[1] * fy + 1, cells[2] * fz + 1), mode="trilinear",
                            align_corners=True)
    sdf_min = corner_min(sdf[0, 0])  # Xc Yc Zc
    gradient = grid.sdf_gradient().detach()[0]
    norm = torch.sqrt(gradient[0] ** 2 + gradient[1] ** 2 + gradient[2] ** 2)
    grad_max = -corner_min(-norm)  # X-1 Y-1 Z-1
    half = max_half_section_m(sdf_min, inv_s, alpha_excess, eps).view(cells[0], fx, cells[1], fy, cells[2], fz)
    grad_max = grad_max[:, None, :, None, :, None]
    max_delta = torch.where(half >= 0.0, 2.0 * half / grad_max, torch.zeros_like(half))
    max_delta = torch.nan_to_num(max_delta, nan=math.inf).reshape(1, 1, *sdf_min.shape)  # 0 / 0: flat, at the bound
    sub = [s / f for s, f in zip(grid.spacing_m, (fx, fy, fz))]
    lo = tuple(grid.range_m[i] + 0.5 * sub[i] for i in range(3))
    hi = tuple(grid.range_m[i + 3] - 0.5 * sub[i] for i in range(3))
    return SkipGrid(max_delta, lo, hi)  # type: ignore[arg-type]


def dilate_skip_grid(skip: SkipGrid, radius_cells: Tuple[int, int, int]) -> SkipGrid:
    """The smallest allowed interval length within `radius_cells` sub-cells (per axis) of each sub-cell: a
    separable min-pool, so a test at one point also holds for every point that far around it."""
    values = skip.max_delta_m[0, 0]
    for axis, radius in enumerate(radius_cells):
        if radius > 0:
            values = min_filter(values, radius, axis)
    return SkipGrid(values[None, None], skip.centre_lo_m, skip.centre_hi_m)


def skippable_blocks(
    skip: SkipGrid, origins: Float[Tensor, "R 3"], directions: Float[Tensor, "R 3"], near_m: Float[Tensor, "R"],
    far_m: Float[Tensor, "R"], num_samples: int, block: int, read_offset: float,
) -> Bool[Tensor, "R nB"]:
    """Blocks of `block` consecutive samples (uniform interval k read at k + read_offset: 0 = start, 0.5 = midpoint)
    that may be skipped whole: a nearest read, at the centre of the block's read points, of the sub-cell-centre
    lattice of `skip` (the nearest centre is the containing sub-cell; border padding keeps points on the box faces
    in the face cells). `skip` must be dilated to cover half a block (`block_radius_cells`); block = 1 tests
    single samples on the undilated grid."""
    lo = torch.tensor(skip.centre_lo_m, dtype=origins.dtype, device=origins.device)
    hi = torch.tensor(skip.centre_hi_m, dtype=origins.dtype, device=origins.device)
    width = hi - lo
    scale = torch.where(width > 0, 2.0 / width.clamp_min(1e-12), torch.zeros_like(width))
    delta = (far_m - near_m) / num_samples
    start = ((origins - lo) * scale - 1.0 + directions * scale * near_m[:, None]).flip(-1)  # R 3, (z, y, x)
    step = (directions * scale * delta[:, None]).flip(-1)
    centres = torch.arange(0, num_samples, block, dtype=origins.dtype, device=origins.device)
    centres = centres + 0.5 * (block - 1) + read_offset
    coords = torch.addcmul(start[:, None, :], step[:, None, :], centres[None, :, None])  # R nB 3
    allowed = F.grid_sample(skip.max_delta_m, coords.view(1, -1, 1, 1, 3), mode="nearest", padding_mode="border",
                            align_corners=True).view(origins.shape[0], centres.numel())
    return allowed >= delta[:, None]


def block_radius_cells(skip: SkipGrid, grid: FieldGrid, directions: Float[Tensor, "R 3"], delta_m: Float[Tensor, "R"],
                       block: int) -> Tuple[int, int, int]:
    """Sub-cells per axis that half a block (the farthest read point from the block centre) can reach, over rays."""
    reach = (0.5 * (block - 1) * delta_m[:, None] * directions.abs()).amax(dim=0).tolist() if delta_m.numel() else [0.0] * 3
    sub = [(grid.range_m[i + 3] - grid.range_m[i]) / skip.cells_xyz[i] for i in range(3)]
    return tuple(math.ceil(reach[i] / sub[i] - 1e-6) for i in range(3))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------------


@dataclass
class SkipRunTables:
    """Closed forms for runs of n skipped samples (alpha = a_0 each), n = 0 .. S, float64 then cast.

    With q = 1 - a_0 + eps_T: transmittance factor q^n, weight sum a_0 sum_{i<n} q^i, and the weighted sum of
    the run's distances a_0 sum_{i<n} q^i (t_first + i delta) = a_0 (t_first G0 + delta G1)."""

    power: Float[Tensor, "S+1"]
    g0: Float[Tensor, "S+1"]
    g1: Float[Tensor, "S+1"]
    alpha: float

    @classmethod
    def build(cls, num_samples: int, transmittance_eps: float, dtype, device) -> "SkipRunTables":
        floor = alpha_floor()
        q = 1.0 - floor + transmittance_eps
        n = torch.arange(num_samples + 1, dtype=torch.float64)
        powers = q ** n
        g0 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(powers[:-1], 0)])
        g1 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(n[:-1] * powers[:-1], 0)])
        return cls(powers.to(dtype=dtype, device=device), g0.to(dtype=dtype, device=device),
                   g1.to(dtype=dtype, device=device), floor)

    def run(self, count: Tensor, transmittance: Tensor, first_t_m: Tensor, delta_m: Tensor) -> Tuple[Tensor, Tensor]:
        """(weight sum, weighted distance sum) of runs of `count` skipped samples starting at `transmittance`."""
        weight = self.alpha * transmittance
        return weight * self.g0[count], weight * (first_t_m * self.g0[count] + delta_m * self.g1[count])


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


@dataclass
class RayBox:
    """The rays of one batch item and their box interval, as the faithful renderer computes them."""

    origins: Float[Tensor, "R 3"]
    directions: Float[Tensor, "R 3"]
    near_m: Float[Tensor, "R"]
    far_m: Float[Tensor, "R"]
    hit: Bool[Tensor, "R"]

    def select(self, rows: Tensor) -> "RayBox":
        return RayBox(self.origins[rows], self.directions[rows], self.near_m[rows], self.far_m[rows], self.hit[rows])


def window_samples(
    renderer: SelfOccRenderer, grid: FieldGrid, rays: RayBox, first: Int[Tensor, "R"], width: int,
) -> Tuple[Float[Tensor, "R W"], Float[Tensor, "R W"], Bool[Tensor, "R W"], Tensor]:
    """Samples first .. first + width - 1 of each ray, exactly as the faithful eval render computes them (same edges,
    midpoints, read points and NeuS alpha code): (alpha, midpoints t, sample exists (< S), field samples)."""
    cfg = renderer.config
    num_samples = cfg.num_samples
    unit_edges = torch.linspace(0.0, 1.0, num_samples + 1, device=first.device, dtype=rays.near_m.dtype)
    index = first[:, None] + torch.arange(width + 1, device=first.device)
    inside = index[:, 1:] <= num_samples
    edges_m = rays.near_m[:, None] + (rays.far_m - rays.near_m)[:, None] * unit_edges[index.clamp_max(num_samples)]
    t_m, deltas_m = 0.5 * (edges_m[:, 1:] + edges_m[:, :-1]), edges_m[:, 1:] - edges_m[:, :-1]
    read_t = edges_m[:, :-1] if cfg.sdf_read_at == "start" else t_m
    read_m = rays.origins[:, None, :] + rays.directions[:, None, :] * read_t[..., None]
    samples = query_field(grid, read_m.reshape(1, -1, 3), with_gradient=True)
    sdf = samples.sdf.reshape(t_m.shape)
    gradient = samples.sdf_gradient.reshape(*t_m.shape, 3)  # type: ignore[union-attr]
    alpha = renderer.neus_alpha(sdf, gradient, rays.directions, deltas_m, 1.0) * inside
    return alpha, t_m, inside, samples


def render_rays_skipping(
    renderer: SelfOccRenderer, grid: FieldGrid, skip: SkipGrid, rays: RayBox, block: int = 4, window_blocks: int = 2,
) -> Dict[str, Tensor]:
    """Per-ray sums of one batch item's rays (B = 1 grid): accumulation, sum(w t), colour and semantics (when the
    grid has them), samples read. The faithful renderer's eval render of the same rays, less the skipped samples'
    reads (module docstring): blocks of `block` samples are tested; from each ray's first kept block on, windows of
    `window_blocks` blocks are read and composited, until the ray stops or has no kept block left."""
    cfg = renderer.config
    if cfg.sdf_read_at not in ("start", "midpoint"):
        raise ValueError(f"unknown sdf_read_at {cfg.sdf_read_at!r}; expected 'midpoint' or 'start'")
    num_samples, device, dtype = cfg.num_samples, rays.origins.device, rays.origins.dtype
    num_rays, width = rays.origins.shape[0], block * window_blocks
    delta_m = (rays.far_m - rays.near_m) / num_samples
    read_offset = 0.0 if cfg.sdf_read_at == "start" else 0.5
    dilated = dilate_skip_grid(skip, block_radius_cells(skip, grid, rays.directions[rays.hit], delta_m[rays.hit], block))
    keep = torch.cat([torch.zeros(0, math.ceil(num_samples / block), dtype=torch.bool, device=device)] + [
        ~skippable_blocks(dilated, rays.origins[part], rays.directions[part], rays.near_m[part], rays.far_m[part],
                          num_samples, block, read_offset)
        for part in _blocks(num_rays, max(1, MASK_SAMPLES * block // num_samples))
    ]) & rays.hit[:, None]  # R nB
    block_index = torch.arange(keep.shape[1], device=device)

    tables = SkipRunTables.build(num_samples, cfg.transmittance_eps, dtype, device)
    sums = {"accumulation": torch.zeros(num_rays, 1, dtype=dtype, device=device),
            "distance": torch.zeros(num_rays, 1, dtype=dtype, device=device),
            "samples": torch.zeros(num_rays, 1, dtype=dtype, device=device)}
    if grid.rgb_channels:
        sums["rgb"] = torch.zeros(num_rays, 3, dtype=dtype, device=device)
    if grid.semantic_channels:
        sums["semantics"] = torch.zeros(num_rays, grid.semantic_channels, dtype=dtype, device=device)
    transmittance = torch.ones(num_rays, dtype=dtype, device=device)
    next_sample = torch.zeros(num_rays, dtype=torch.long, device=device)  # first sample not yet accounted for
    active = rays.hit.nonzero()[:, 0]  # rays that may still have kept blocks
    while active.numel():
        later = keep[active] & (block_index[None, :] * block >= next_sample[active, None])
        has_block = later.any(dim=1)
        active = active[has_block]
        if active.numel() == 0:
            break
        first = later[has_block].int().argmax(dim=1) * block  # first sample of the first kept block
        sub = rays.select(active)
        # the skipped run before the window, then the window's samples
        skipped = first - next_sample[active]
        run_weight, run_distance = tables.run(skipped, transmittance[active], rays.near_m[active]
                                              + (next_sample[active] + 0.5) * delta_m[active], delta_m[active])
        before = transmittance[active] * tables.power[skipped]
        alpha, t_m, inside, samples = window_samples(renderer, grid, sub, first, width)
        factors = torch.where(inside, 1.0 - (alpha - cfg.transmittance_eps), torch.ones_like(alpha))
        weights = alpha * before[:, None] * exclusive_prod(factors)
        sums["accumulation"].index_add_(0, active, run_weight[:, None] + weights.sum(1, keepdim=True))
        sums["distance"].index_add_(0, active, run_distance[:, None] + (weights * t_m).sum(1, keepdim=True))
        sums["samples"].index_add_(0, active, inside.sum(1, keepdim=True).to(dtype))
        if "rgb" in sums:
            sums["rgb"].index_add_(0, active, (weights[..., None] * samples.rgb.reshape(*weights.shape, 3)).sum(1))  # type: ignore[union-attr]
        if "semantics" in sums:
            probabilities = torch.softmax(samples.semantic_logits.reshape(*weights.shape, -1), dim=-1)  # type: ignore[union-attr]
            sums["semantics"].index_add_(0, active, (weights[..., None] * probabilities).sum(1))
        transmittance[active] = before * factors.prod(dim=1)
        next_sample[active] = (first + width).clamp_max(num_samples)
        stopped = transmittance[active] < cfg.fast_stop_transmittance
        next_sample[active[stopped]] = num_samples  # nothing after a stop is added
        active = active[~stopped & (next_sample[active] < num_samples)]

    # the run after each ray's last window (all S samples for hit rays that keep no block)
    trailing = torch.where(rays.hit, num_samples - next_sample, torch.zeros_like(next_sample))
    run_weight, run_distance = tables.run(trailing, transmittance * rays.hit,
                                          rays.near_m + (next_sample + 0.5) * delta_m, delta_m)
    sums["accumulation"] += run_weight[:, None]
    sums["distance"] += run_distance[:, None]
    return sums


def exclusive_prod(factors: Float[Tensor, "R W"]) -> Float[Tensor, "R W"]:
    """prod_{j<i} factors_j along the last dim (nerfacc's dense exclusive product)."""
    import nerfacc

    return nerfacc.exclusive_prod(factors)


def _blocks(total: int, size: int):
    return [slice(start, min(total, start + size)) for start in range(0, total, size)]


def clip_bounds_m(
    renderer: SelfOccRenderer, near_m: Float[Tensor, "R"], far_m: Float[Tensor, "R"], chunk_rays: int
) -> Tuple[Float[Tensor, "R"], Float[Tensor, "R"]]:
    """The faithful renderer's depth clip per ray: its first and last midpoint ("per_ray"), or the smallest first and
    largest last midpoint of its `chunk_rays` chunk ("global"); midpoints are monotone along a ray."""
    s = renderer.config.num_samples
    unit = torch.linspace(0.0, 1.0, s + 1, device=near_m.device, dtype=near_m.dtype)[[0, 1, s - 1, s]]
    edges = near_m[:, None] + (far_m - near_m)[:, None] * unit
    first, last = 0.5 * (edges[:, 1] + edges[:, 0]), 0.5 * (edges[:, 3] + edges[:, 2])
    mode = renderer.config.depth_clip
    if mode == "per_ray":
        return first, last
    if mode != "global":
        raise ValueError(f"unknown depth_clip {mode!r}; expected 'per_ray' or 'global'")
    lowest, highest = torch.empty_like(first), torch.empty_like(last)
    for part in _blocks(first.numel(), chunk_rays):
        lowest[part], highest[part] = first[part].min(), last[part].max()
    return lowest, highest


def scatter_rays(sums: Dict[str, Tensor], rows: Int[Tensor, "r"], num_rays: int) -> Dict[str, Tensor]:
    """Per-ray sums of the rays `rows` placed among `num_rays` rays: NaN for the others (0 samples read)."""
    out = {}
    for key, value in sums.items():
        full = value.new_full((num_rays, *value.shape[1:]), 0.0 if key == "samples" else math.nan)
        full[rows] = value
        out[key] = full
    return out


@torch.no_grad()
def render_cameras_skipping(
    renderer: SelfOccRenderer, grid: FieldGrid, lattice_px: Float[Tensor, "B N h w 2"],
    intrinsics: Float[Tensor, "B N 3 3"], cam2ego: Float[Tensor, "B N 4 4"], chunk_rays: int,
    background: Optional[Background] = None, generator: Optional[torch.Generator] = None,
    read_mask: Optional[Bool[Tensor, "B N h w"]] = None,
) -> RenderOutputs:
    """`SelfOccRenderer.render_cameras_chunked` with empty-space skipping: the same per-ray outputs (depth,
    ray_distance, accumulation, rgb, semantics, hit) plus `samples_evaluated`. Leading dims [B, N, h, w].
    With `read_mask`, only its rays are rendered (the others are NaN, `samples_evaluated` 0, `hit` as ever);
    the depth clip and background draws still see every ray, so the rendered ones are as without the mask.

    Needs the eval setting of the NeuS alpha (cos_anneal_ratio 1, no jitter): renderers in training refuse."""
    if renderer.training:
        raise ValueError("empty-space skipping renders at eval only (training needs every sample's gradient)")
    cfg = renderer.config
    if read_mask is not None and tuple(read_mask.shape) != tuple(lattice_px.shape[:4]):
        raise ValueError(f"read_mask {tuple(read_mask.shape)} does not match the lattice {tuple(lattice_px.shape[:4])}")
    origins, directions, z_per_distance = lattice_rays(lattice_px, intrinsics, cam2ego)
    batch, num_rays = origins.shape[:2]
    inv_s = float(renderer.neus_alpha.inv_s())
    if background is None:
        background = cfg.eval_background
    outputs: Dict[str, list] = {}
    for b in range(batch):
        item = grid.select(b)
        skip = build_skip_grid(item, inv_s, cfg.fast_alpha_excess, cfg.fast_cell_m)
        near, far, hit = intersect_aabb(origins[b], directions[b], grid.range_m, cfg.near_m)
        lowest, highest = clip_bounds_m(renderer, near, far, chunk_rays)
        # the faithful renderer draws a background per chunk of rays: same draws, same order
        bg = None
        if item.rgb_channels:
            bg = torch.cat([background_colour(background, (1, part.stop - part.start), generator, origins.device)[0]
                            for part in _blocks(num_rays, chunk_rays)])
        rays = RayBox(origins[b], directions[b], near, far, hit)
        rows = (torch.arange(num_rays, device=origins.device) if read_mask is None
                else read_mask[b].reshape(-1).to(origins.device).nonzero()[:, 0])
        # `chunk_rays` rays at a time: memory is bounded by the chunk, as the faithful render's
        parts = [render_rays_skipping(renderer, item, skip, rays.select(rows[part]))
                 for part in _blocks(rows.numel(), chunk_rays)]
        sums = scatter_rays({key: torch.cat([part[key] for part in parts]) for key in parts[0]} if parts else
                            render_rays_skipping(renderer, item, skip, rays.select(rows)), rows, num_rays)
        distance = torch.minimum(torch.maximum(expected_distance(sums["distance"], sums["accumulation"]),
                                               lowest[:, None]), highest[:, None])
        per_ray = {"depth": distance * z_per_distance[b], "ray_distance": distance,
                   "accumulation": sums["accumulation"], "hit": hit, "samples_evaluated": sums["samples"]}
        if "rgb" in sums:
            per_ray["rgb"] = sums["rgb"] + (1.0 - sums["accumulation"]) * bg
        if "semantics" in sums:
            per_ray["semantics"] = sums["semantics"]
        for key, value in per_ray.items():
            outputs.setdefault(key, []).append(value)
    merged = RenderOutputs(**{key: torch.stack(values) for key, values in outputs.items()})
    return merged.reshape_rays(lattice_px.shape[:4])
