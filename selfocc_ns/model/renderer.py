"""SDF volume rendering: NeuS alpha, nerfacc compositing, camera rendering in bounded chunks (docs/architecture.md).

Per ray: entry/exit of the scene box (near >= 0), `num_samples` stratified intervals (jittered in
training, not at eval), the field read at the interval midpoints, NeuS alpha from the SDF and its
finite-difference gradient, weights and sums along the ray by nerfacc (`compositing`: the dense
reference, or the packed `ray_indices` fast path on CUDA).

Depth is the expected distance sum(w t) / sum(w) (nerfstudio's 'expected' DepthRenderer and the
official code normalise by the accumulation), clipped to the sampled interval, then converted to
camera z-depth (what LiDAR projections measure). `accumulation` is returned beside it.

Official conventions (flags of `SelfOccRendererConfig`, on in the presets named after official configs):
the field is read at the interval *start* (`sdf_read_at`); training jitter is one draw per ray moving every
edge (`jitter`); T_i = prod (1 - alpha_j + 1e-4) (`transmittance_eps`); the expected depth is clipped to the
smallest and largest midpoint of the whole render call (`depth_clip`, so the official value depends on its
chunk size); NeuS' cos_anneal_ratio grows as min(1, step / 5000) in training (`cos_anneal_steps`); one
training lattice is shared by all cameras at u_k = e + k s (`train_lattice`).

Shapes: B batch items (input keyframes), R rays per item, S samples per ray; camera renders reshape R
to N x h x w.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, fields
from typing import Dict, Literal, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn

from nerfstudio.configs.base_config import InstantiateConfig
from selfocc_ns.model.compositing import accumulate, composite_weights
from selfocc_ns.model.field import FieldGrid, query_field
from selfocc_ns.model.rays import (
    Jitter,
    cellular_lattice_px,
    interval_edges,
    intersect_aabb,
    lattice_rays,
    midpoints_and_deltas,
    uniform_noise,
)

Background = Union[Literal["random", "black", "white"], Tensor]
NEUS_ALPHA_EPS = 1e-5
"""The +1e-5 of NeuS alpha's numerator and denominator: alpha is never below eps / (1 + eps), and ~1 inside solid."""


class NeuSAlpha(nn.Module):
    """NeuS opacity from SDF samples with a learnable sharpness inv_s = exp(10 * variance).

    As sdfstudio's NeuS: with cos_anneal_ratio r, iter_cos = -(relu(0.5 - 0.5 cos) (1 - r) + relu(-cos) r)
    (r = 1: -relu(-d . grad)), section SDFs sdf -+ iter_cos * delta / 2, alpha = clip((sig(prev s) -
    sig(next s) + 1e-5) / (sig(prev s) + 1e-5), 0, 1). The official code grows r from 0 to 1 over the first
    5000 training steps (`SelfOccRendererConfig.cos_anneal_steps`) and uses 1 at eval. By default the SDF is
    read at the interval *midpoint* (original NeuS) instead of sdfstudio's interval start, so the section
    [start, end] is centred on the sample and the expected depth of a plane is unbiased (sdfstudio's choice,
    `sdf_read_at="start"`, shifts it by delta/2).
    """

    def __init__(self, variance_init: float = 0.1, with_floor: bool = False) -> None:
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(variance_init)))
        if with_floor:  # saved with the model only when used: the official state dicts keep their keys
            self.register_buffer("inv_s_floor", torch.tensor(0.0))

    @staticmethod
    def sharpness(variance: Tensor) -> Tensor:
        """inv_s = exp(10 v) of a variance v, clipped to [1e-6, 1e6] as sdfstudio does (official v0 0.1: 2.718)."""
        return torch.exp(10.0 * variance).clip(1e-6, 1e6)

    def inv_s(self) -> Tensor:
        """Current sharpness s (`sharpness` of the learned variance); at least the floor of the sharpness schedule
        when there is one (`SelfOccRendererConfig.inv_s_floor_end`)."""
        inv_s = self.sharpness(self.variance)
        floor = getattr(self, "inv_s_floor", None)
        return inv_s if floor is None else torch.maximum(inv_s, floor)

    def forward(
        self,
        sdf: Float[Tensor, "*rays S"],
        sdf_gradient: Float[Tensor, "*rays S 3"],
        directions: Float[Tensor, "*rays 3"],
        deltas_m: Float[Tensor, "*rays S"],
        cos_anneal_ratio: float = 1.0,
    ) -> Float[Tensor, "*rays S"]:
        inv_s = self.inv_s()
        true_cos = (directions[..., None, :] * sdf_gradient).sum(-1)
        iter_cos = -F.relu(-true_cos)  # always <= 0: only surfaces the ray enters contribute
        if cos_anneal_ratio != 1.0:
            iter_cos = -(F.relu(0.5 - 0.5 * true_cos) * (1.0 - cos_anneal_ratio) + F.relu(-true_cos) * cos_anneal_ratio)
        prev_cdf = torch.sigmoid((sdf - iter_cos * deltas_m * 0.5) * inv_s)
        next_cdf = torch.sigmoid((sdf + iter_cos * deltas_m * 0.5) * inv_s)
        return ((prev_cdf - next_cdf + NEUS_ALPHA_EPS) / (prev_cdf + NEUS_ALPHA_EPS)).clip(0.0, 1.0)


@dataclass
class RenderOutputs:
    """What a render returns. Leading dims `*rays` are [B, R] from `render_rays`, [B, N, h, w] from cameras."""

    depth: Float[Tensor, "*rays 1"]
    """Expected camera z-depth (metres)."""
    ray_distance: Float[Tensor, "*rays 1"]
    """Expected distance along the ray, sum(w t) / sum(w), clipped to the sampled interval."""
    accumulation: Float[Tensor, "*rays 1"]
    rgb: Optional[Float[Tensor, "*rays 3"]] = None
    """Composited colour over the background colour (None without a colour head)."""
    semantics: Optional[Float[Tensor, "*rays C"]] = None
    """Volume-rendered class probabilities sum(w softmax(logits)); they sum to the accumulation."""
    weights: Optional[Float[Tensor, "*rays S"]] = None
    t_m: Optional[Float[Tensor, "*rays S"]] = None
    """Sample distances along the ray (interval midpoints)."""
    deltas_m: Optional[Float[Tensor, "*rays S"]] = None
    points_m: Optional[Float[Tensor, "*rays S 3"]] = None
    """Sample positions in the ego frame (for the reprojection loss)."""
    sdf: Optional[Float[Tensor, "*rays S"]] = None
    sdf_gradient: Optional[Float[Tensor, "*rays S 3"]] = None
    """Per-sample SDF gradient (for the eikonal loss)."""
    hit: Optional[Bool[Tensor, "*rays"]] = None
    """The ray crosses the scene box."""
    samples_evaluated: Optional[Float[Tensor, "*rays 1"]] = None
    """Samples whose field was read (the empty-space-skipping renderer; the faithful one reads all S)."""

    @property
    def weights_normalised(self) -> Float[Tensor, "*rays S"]:
        """w / sum(w) per ray (zero rays stay zero)."""
        assert self.weights is not None
        return self.weights / self.weights.sum(-1, keepdim=True).clamp_min(torch.finfo(self.weights.dtype).eps)

    def reshape_rays(self, rays_shape: Sequence[int]) -> "RenderOutputs":
        """Replace the leading [B, R] by `rays_shape` (e.g. [B, N, h, w]) in every tensor."""

        def reshape(value: Optional[Tensor]) -> Optional[Tensor]:
            if value is None:
                return None
            return value.reshape(*rays_shape, *value.shape[2:])

        return RenderOutputs(**{f.name: reshape(getattr(self, f.name)) for f in fields(self)})


def background_colour(
    background: Background, shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device
) -> Float[Tensor, "*shape 3"]:
    """Per-ray background colour: random (uniform per ray), black, white, or a given RGB tensor."""
    if isinstance(background, Tensor):
        return background.to(device).expand(*shape, 3)
    if background == "random":
        return uniform_noise((*shape, 3), generator, device)
    if background in ("black", "white"):
        return torch.full((*shape, 3), 0.0 if background == "black" else 1.0, device=device)
    raise ValueError(f"unknown background {background!r}")


def expected_distance(weighted_distance_m: Tensor, accumulation: Tensor) -> Tensor:
    """sum(w t) / sum(w) (0 for rays with no weight: the clip then moves them to the nearest midpoint)."""
    return weighted_distance_m / (accumulation + 1e-10)


def clip_ray_distance(
    ray_distance: Float[Tensor, "B R 1"], t_m: Float[Tensor, "B R S"], mode: Literal["per_ray", "global"]
) -> Float[Tensor, "B R 1"]:
    """Clip expected distances to the sampled midpoints: each ray's own [t_0, t_S-1] ("per_ray"), or the smallest
    and largest midpoint of all rays of the batch item ("global": the official clip over a render call)."""
    if mode == "global":
        lowest, highest = t_m.amin(dim=(1, 2))[:, None, None], t_m.amax(dim=(1, 2))[:, None, None]
    elif mode == "per_ray":
        lowest, highest = t_m[..., :1], t_m[..., -1:]
    else:
        raise ValueError(f"unknown depth_clip {mode!r}; expected 'per_ray' or 'global'")
    return torch.minimum(torch.maximum(ray_distance, lowest), highest)


@dataclass
class SelfOccRendererConfig(InstantiateConfig):
    """Ray lattices, sampling and NeuS compositing."""

    _target: Type = field(default_factory=lambda: SelfOccRenderer)
    num_samples: int = 256
    """Stratified samples per ray between the entry and exit of the scene box (official 256)."""
    near_m: float = 0.0
    """Samples start no closer than this to the camera."""
    train_lattice_hw: Tuple[int, int] = (48, 100)
    """Rays per camera per training step, as an h x w lattice with random stride and offset."""
    snap_lattice_to_pixels: bool = False
    """Integer stride/offset so training rays sit on pixel centres (official: continuous)."""
    eval_lattice_fraction: float = 0.5
    """Eval lattice size as a fraction of the image (450x800 on 900x1600)."""
    variance_init: float = 0.1
    """Initial NeuS variance v; inv_s = exp(10 v) (official 0.1)."""
    inv_s_floor_end: float = 0.0
    """Not official (0: off): a sharpness schedule. In training, inv_s is at least a floor rising log-linearly from
    exp(10 variance_init) to this over `inv_s_floor_steps` steps (the learned value rules where it is higher), so a
    soft field cannot stay a fog whose negative regions rays see through; the floor reached is saved with the
    model and used at eval."""
    inv_s_floor_steps: int = 1000
    """Training steps over which the sharpness floor rises to `inv_s_floor_end`."""
    train_background: Literal["random", "black", "white"] = "random"
    """Background colour behind rendered RGB in training (official: random per ray)."""
    eval_background: Literal["random", "black", "white"] = "black"
    """Background colour at eval / in the viewer."""
    eval_chunk_rays: int = 8192
    """Rays per chunk in `render_cameras_chunked` (memory is flat in the lattice size)."""
    compositing: Literal["auto", "dense", "packed"] = "auto"
    """nerfacc path: dense on CPU, packed (ray_indices) on CUDA when 'auto'. Packed weights need CUDA."""
    sdf_read_at: Literal["midpoint", "start"] = "midpoint"
    """Where SDF, gradient, colour and semantics are read in each interval (official: its start)."""
    jitter: Jitter = "per_edge"
    """Training jitter: each inner edge within its half bins, ends fixed; or official one draw per ray ('per_ray')."""
    transmittance_eps: float = 0.0
    """T_i = prod_{j<i} (1 - alpha_j + eps) (official 1e-4; 0 is the exact transmittance)."""
    depth_clip: Literal["per_ray", "global"] = "per_ray"
    """Clip the expected depth to its ray's sampled interval, or (official) to all midpoints of the render call."""
    cos_anneal_steps: int = 0
    """NeuS cos_anneal_ratio = min(1, step / this) in training, 1 at eval; 0 keeps it at 1 (official 5000)."""
    train_lattice: Literal["per_camera", "official_shared"] = "per_camera"
    """Training rays: a lattice per camera at cell centres, or (official) one shared by all cameras at e + k s."""
    fast_eval: bool = True
    """Eval / export / viewer renders skip empty space and stop opaque rays (model/fast_render.py); False: faithful."""
    fast_alpha_excess: float = 1e-7
    """Skip a sample when its NeuS alpha provably exceeds its floor eps / (1 + eps) by at most this."""
    fast_stop_transmittance: float = 1e-6
    """Stop a ray once its transmittance is below this (what follows weighs less)."""
    fast_cell_m: float = 0.5
    """Cell size of the skipping bounds: grid cells are split until no side is longer (within a memory cap)."""


class SelfOccRenderer(nn.Module):
    """Renders a `FieldGrid` along rays or camera lattices; owns the NeuS sharpness parameter."""

    config: SelfOccRendererConfig

    def __init__(self, config: SelfOccRendererConfig) -> None:
        super().__init__()
        self.config = config
        if config.inv_s_floor_end < 0 or config.inv_s_floor_steps <= 0:
            raise ValueError(f"inv_s_floor_end must be >= 0 and inv_s_floor_steps > 0, got {config.inv_s_floor_end} "
                             f"and {config.inv_s_floor_steps}")
        self.neus_alpha = NeuSAlpha(config.variance_init, with_floor=config.inv_s_floor_end > 0)

    # -- lattices -----------------------------------------------------------------------------

    def train_lattice_px(
        self, image_hw: Tuple[int, int], generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu"
    ) -> Float[Tensor, "h w 2"]:
        return cellular_lattice_px(
            image_hw, self.config.train_lattice_hw, generator, self.config.snap_lattice_to_pixels, device,
            cell_centres=self.config.train_lattice == "per_camera",
        )

    def train_lattices(
        self, batch: int, cameras: int, image_hw: Tuple[int, int], generator: Optional[torch.Generator] = None,
        device: torch.device | str = "cpu",
    ) -> Float[Tensor, "B N h w 2"]:
        """The training lattices of a batch: one per camera ("per_camera") or one per batch item shared by its
        cameras ("official_shared")."""
        if self.config.train_lattice == "official_shared":
            shared = [self.train_lattice_px(image_hw, generator, device) for _ in range(batch)]
            return torch.stack([lattice.expand(cameras, *lattice.shape) for lattice in shared])
        if self.config.train_lattice != "per_camera":
            raise ValueError(f"unknown train_lattice {self.config.train_lattice!r}")
        return torch.stack([
            torch.stack([self.train_lattice_px(image_hw, generator, device) for _ in range(cameras)])
            for _ in range(batch)
        ])

    def cos_anneal_ratio(self, step: Optional[int]) -> float:
        """NeuS cos_anneal_ratio of a render: min(1, step / cos_anneal_steps) in training (1 when no step or
        steps are given), 1 at eval (as a freshly loaded official model)."""
        steps = self.config.cos_anneal_steps
        if steps <= 0 or step is None or not self.training:
            return 1.0
        return min(1.0, step / steps)

    def inv_s_floor(self, step: int) -> float:
        """The sharpness schedule's floor at a training step: exp(10 variance_init) to `inv_s_floor_end`,
        log-linearly over `inv_s_floor_steps` steps, then constant."""
        start = math.log(float(NeuSAlpha.sharpness(torch.tensor(float(self.config.variance_init)))))
        end = math.log(self.config.inv_s_floor_end)
        return math.exp(start + (end - start) * min(1.0, step / self.config.inv_s_floor_steps))

    def _packed(self, device: torch.device) -> bool:
        if self.config.compositing == "auto":
            return device.type == "cuda"
        return self.config.compositing == "packed"

    # -- rendering -----------------------------------------------------------------------------

    def render_rays(
        self,
        grid: FieldGrid,
        origins: Float[Tensor, "B R 3"],
        directions: Float[Tensor, "B R 3"],
        z_per_distance: Optional[Float[Tensor, "B R 1"]] = None,
        generator: Optional[torch.Generator] = None,
        background: Optional[Background] = None,
        per_sample_outputs: bool = True,
        step: Optional[int] = None,
    ) -> RenderOutputs:
        """Render unit-direction rays of each batch item through that item's grid.

        Jitter and the background follow `self.training` (train: jittered, random background from
        `generator`; eval: fixed samples, `eval_background`) unless `background` is given.
        `z_per_distance` converts distance to camera depth (1 when None: depth = distance). `step` (the
        training step) sets the NeuS cos_anneal_ratio (`cos_anneal_ratio`).
        """
        cfg = self.config
        batch, num_rays = origins.shape[:2]
        device = origins.device
        if cfg.inv_s_floor_end > 0 and self.training and step is not None:
            self.neus_alpha.inv_s_floor.fill_(self.inv_s_floor(step))
        near, far, hit = intersect_aabb(origins.reshape(-1, 3), directions.reshape(-1, 3), grid.range_m, cfg.near_m)
        near, far, hit = near.view(batch, num_rays), far.view(batch, num_rays), hit.view(batch, num_rays)
        edges_m = interval_edges(near, far, cfg.num_samples, generator, jitter=self.training, jitter_mode=cfg.jitter)
        t_m, deltas_m = midpoints_and_deltas(edges_m)
        points_m = origins[:, :, None, :] + directions[:, :, None, :] * t_m[..., None]  # B R S 3
        if cfg.sdf_read_at == "start":
            read_m = origins[:, :, None, :] + directions[:, :, None, :] * edges_m[..., :-1, None]
        elif cfg.sdf_read_at == "midpoint":
            read_m = points_m
        else:
            raise ValueError(f"unknown sdf_read_at {cfg.sdf_read_at!r}; expected 'midpoint' or 'start'")

        samples = query_field(grid, read_m.reshape(batch, -1, 3), with_gradient=True)
        per_sample = (batch, num_rays, cfg.num_samples)
        sdf = samples.sdf.reshape(per_sample)
        sdf_gradient = samples.sdf_gradient.reshape(*per_sample, 3)  # type: ignore[union-attr]

        # Missed rays have zero-length intervals whose alpha would be 1 inside solid: switch them off.
        alphas = self.neus_alpha(sdf, sdf_gradient, directions, deltas_m, self.cos_anneal_ratio(step)) * hit[..., None]
        packed = self._packed(device)
        weights = composite_weights(alphas, packed, cfg.transmittance_eps)
        accumulation = accumulate(weights, None, packed)
        ray_distance = expected_distance(accumulate(weights, t_m[..., None], packed), accumulation)
        ray_distance = clip_ray_distance(ray_distance, t_m, cfg.depth_clip)
        depth = ray_distance if z_per_distance is None else ray_distance * z_per_distance

        rgb = None
        if samples.rgb is not None:
            if background is None:
                background = self.config.train_background if self.training else self.config.eval_background
            bg = background_colour(background, (batch, num_rays), generator, device)
            rgb = accumulate(weights, samples.rgb.reshape(*per_sample, 3), packed) + (1.0 - accumulation) * bg
        semantics = None
        if samples.semantic_logits is not None:
            probabilities = torch.softmax(samples.semantic_logits.reshape(*per_sample, -1), dim=-1)
            semantics = accumulate(weights, probabilities, packed)

        outputs = RenderOutputs(depth=depth, ray_distance=ray_distance, accumulation=accumulation, rgb=rgb,
                                semantics=semantics, hit=hit)
        if per_sample_outputs:
            outputs.weights, outputs.t_m, outputs.deltas_m = weights, t_m, deltas_m
            outputs.points_m, outputs.sdf, outputs.sdf_gradient = points_m, sdf, sdf_gradient
        return outputs

    def render_cameras(
        self,
        grid: FieldGrid,
        lattice_px: Float[Tensor, "B N h w 2"],
        intrinsics: Float[Tensor, "B N 3 3"],
        cam2ego: Float[Tensor, "B N 4 4"],
        generator: Optional[torch.Generator] = None,
        background: Optional[Background] = None,
        per_sample_outputs: bool = True,
        step: Optional[int] = None,
    ) -> RenderOutputs:
        """Render every camera's lattice in one go (training path: autograd through everything).

        Outputs have leading dims [B, N, h, w].
        """
        origins, directions, z_per_distance = lattice_rays(lattice_px, intrinsics, cam2ego)
        outputs = self.render_rays(grid, origins, directions, z_per_distance, generator, background,
                                   per_sample_outputs, step)
        return outputs.reshape_rays(lattice_px.shape[:4])

    @torch.no_grad()
    def render_cameras_chunked(
        self,
        grid: FieldGrid,
        lattice_px: Float[Tensor, "B N h w 2"],
        intrinsics: Float[Tensor, "B N 3 3"],
        cam2ego: Float[Tensor, "B N 4 4"],
        chunk_rays: Optional[int] = None,
        background: Optional[Background] = None,
        generator: Optional[torch.Generator] = None,
        fast: Optional[bool] = None,
        read_mask: Optional[Bool[Tensor, "B N h w"]] = None,
    ) -> RenderOutputs:
        """Eval / viewer render of whole lattices under no_grad, `chunk_rays` rays per batch item at a time.

        Only per-ray outputs (depth, ray_distance, accumulation, rgb, semantics, hit) are kept, so memory
        is bounded by the chunk, not by the lattice size. Leading dims [B, N, h, w]. `fast` (default
        `fast_eval`, never in training) renders the same with empty-space skipping (`model/fast_render.py`);
        it also renders only the rays of `read_mask` (the ones the caller reads; NaN elsewhere), which the
        faithful render, a reference, ignores.
        """
        chunk = chunk_rays or self.config.eval_chunk_rays
        if (self.config.fast_eval if fast is None else fast) and not self.training:
            from selfocc_ns.model.fast_render import render_cameras_skipping

            return render_cameras_skipping(self, grid, lattice_px, intrinsics, cam2ego, chunk, background, generator,
                                           read_mask)
        origins, directions, z_per_distance = lattice_rays(lattice_px, intrinsics, cam2ego)
        pieces: Dict[str, list] = {}
        for start in range(0, origins.shape[1], chunk):
            part = slice(start, start + chunk)
            out = self.render_rays(grid, origins[:, part], directions[:, part], z_per_distance[:, part],
                                   generator, background, per_sample_outputs=False)
            for f in fields(out):
                value = getattr(out, f.name)
                if value is not None:
                    pieces.setdefault(f.name, []).append(value)
        merged = RenderOutputs(**{name: torch.cat(parts, dim=1) for name, parts in pieces.items()})
        return merged.reshape_rays(lattice_px.shape[:4])
