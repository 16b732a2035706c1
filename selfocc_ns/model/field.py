"""The SelfOcc field: TPV/BEV planes -> a decoded grid of SDF, colour and semantic logits (docs/architecture.md).

The encoder's planes are broadcast-summed into a dense feature volume and a small per-voxel MLP
(Softplus -> Linear(C, hidden) -> Softplus -> Linear(hidden, 1 + 3 + S)) turns every grid point into
channel 0 = SDF in metres, 1..3 = raw R, G, B (activated after sampling, as the official SH-degree-0 head
does; `rgb_activation="sh0"` is that head's relu(C0 f + 0.5), in RGB order where the official head is BGR:
`model/official.py` reorders the rows), then the S semantic logits. Reading points, gradients and Hessians
of that grid is in `field_grid.py` (re-exported here).

Geometric prior (`sdf_prior`): an analytic SDF evaluated at the grid points is *added* to the decoded SDF
channel and the last layer's SDF row starts at zero, so the untrained field is exactly the prior and the
network learns a residual (a reparametrisation: any SDF is still reachable). `sdf_output_scale_m` > 1 lets
short runs move surfaces by metres (Adam's steps are scale-free in the output). 'free' (not official) is
the constant `free_sdf_m`: the untrained field is empty and every surface has to be asked for by a loss. The
'ground_shell' wall only catches rays that reach it before leaving through the top of the box: with the occ
range (z_max 5.4 m) a nuScenes camera (1.6 m high, 19.6 deg half vertical FOV) needs a radius <= ~10 m for its
top rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field, FieldConfig
from selfocc_ns.data.occ3d import NUM_SEMANTIC_CHANNELS
from selfocc_ns.model.field_grid import (  # noqa: F401  (re-exported: the field's public API)
    FdBoundary,
    FieldGrid,
    FieldSamples,
    RgbActivation,
    SdfPrior,
    grid_gradient,
    grid_spacing_m,
    ground_sdf,
    ground_shell_sdf,
    prior_sdf_grid,
    query_field,
    sample_grid,
    sdf_gradient_grid,
    sdf_hessian_grid,
    sdf_to_density,
)
from selfocc_ns.model.planes import SceneGrid, TPVPlanes


# ----------------------------------------------------------------------------------------------
# The nerfstudio Field
# ----------------------------------------------------------------------------------------------


@dataclass
class SelfOccFieldConfig(FieldConfig):
    """Decoder from TPV/BEV planes to the SDF / colour / semantics grid."""

    _target: Type = field(default_factory=lambda: SelfOccField)
    hidden_dim: int = 96
    """Width of the hidden layer of the per-voxel MLP."""
    use_rgb: bool = True
    """Decode 3 colour channels (off for the depth preset)."""
    num_semantic_classes: int = NUM_SEMANTIC_CHANNELS
    """Semantic logits per voxel (18 = Occ3D 0..16 + sky); 0 disables the semantic head."""
    rgb_activation: RgbActivation = "relu"
    """Activation of sampled colour: relu(f), sigmoid(f), or official SH degree 0 relu(0.2821 f + 0.5) ('sh0')."""
    fd_boundary: FdBoundary = "one_sided"
    """Grid derivatives on the box faces: exact one-sided, or official replicate-padded (half) central differences."""
    sdf_output_scale_m: float = 1.0
    """Metres of SDF per unit of the decoder's SDF output (official 1)."""
    prior_zero_init: bool = True
    """With a prior: zero the SDF output row so the untrained field is exactly the prior."""
    sdf_prior: SdfPrior = "none"
    """Analytic SDF added to the decoded SDF: none, ground plane, ground + cylinder wall, or (not official) 'free'."""
    free_sdf_m: float = 1.0
    """SDF of the 'free' prior everywhere (metres, positive = free): a free-everywhere start with no geometry."""
    ground_z_m: float = 0.0
    """Height of the prior's ground plane in the ego frame (nuScenes ego origin is on the ground)."""
    shell_radius_m: float = 30.0
    """Radius of the 'ground_shell' prior's cylinder wall around the ego z axis."""
    decode_chunk_x: int = 32
    """Decode this many x slices at a time (the full feature volume is never materialised)."""
    checkpoint_decoder: bool = False
    """Recompute each decode chunk in backward (activation checkpointing) to save memory."""


class SelfOccField(Field):
    """nerfstudio Field over a decoded SelfOcc grid.

    Fast path (used by the model): `decode(planes) -> FieldGrid`, then `query_field` / the renderer.
    nerfstudio path: `set_grid(grid, sample_index)` then `get_density` / `get_outputs` / `forward` with
    `RaySamples` whose positions are metric points in that sample's ego frame.
    """

    config: SelfOccFieldConfig

    def __init__(self, config: SelfOccFieldConfig, scene: SceneGrid, feature_dim: int, bev: bool = False) -> None:
        super().__init__()
        self.config = config
        self.scene = scene
        self.bev = bev
        """Planes are BEV only (xy): a learnable per-height embedding [C, Z] lifts them to a volume."""
        num_rgb = 3 if config.use_rgb else 0
        out_dim = 1 + num_rgb + config.num_semantic_classes
        self.decoder = nn.Sequential(
            nn.Softplus(),
            nn.Linear(feature_dim, config.hidden_dim),
            nn.Softplus(),
            nn.Linear(config.hidden_dim, out_dim),
        )
        if config.sdf_prior != "none" and config.prior_zero_init:
            # The untrained field IS the prior: the SDF row starts at zero (its gradient is not zero,
            # because the hidden features are not), so training learns a residual on top of the prior.
            with torch.no_grad():
                self.decoder[-1].weight[0].zero_()
                self.decoder[-1].bias[0].zero_()
        self.register_buffer(
            "prior_sdf",
            prior_sdf_grid(
                config.sdf_prior, scene.range_m, scene.grid_xyz, config.ground_z_m, config.shell_radius_m,
                config.free_sdf_m,
            ),
            persistent=False,
        )
        if bev:
            # BEV has no z plane: a learnable per-height feature [C, Z] tells heights apart.
            self.z_embedding = nn.Parameter(0.1 * torch.randn(feature_dim, scene.grid_xyz[2]))
        else:
            self.register_parameter("z_embedding", None)
        self._current_grid: Optional[FieldGrid] = None
        self._current_inv_s: float = float(torch.exp(torch.tensor(1.0)))

    # -- fast path -----------------------------------------------------------------------------

    @property
    def rgb_channels(self) -> int:
        return 3 if self.config.use_rgb else 0

    def _decode_slab(self, *planes: Optional[Tensor]) -> Float[Tensor, "B K x Y Z"]:
        slab = TPVPlanes(planes[0], planes[1], planes[2]).volume(self.z_embedding)  # B C x Y Z
        decoded = self.decoder(slab.permute(0, 2, 3, 4, 1))  # B x Y Z K
        return decoded.permute(0, 4, 1, 2, 3)

    def decode(self, planes: TPVPlanes) -> FieldGrid:
        """Decode planes into the field grid (B, 1 + rgb + semantic, X, Y, Z), prior added to the SDF.

        Decoded `decode_chunk_x` x-slices at a time: each slab's feature volume exists only inside the
        chunk (and, with `checkpoint_decoder`, is recomputed in backward instead of being stored).
        """
        nx, ny, nz = self.scene.grid_xyz
        if planes.xy.shape[-2:] != (nx, ny) or (not planes.is_bev and planes.xz.shape[-1] != nz):  # type: ignore[union-attr]
            raise ValueError(f"planes do not match grid_xyz {self.scene.grid_xyz}: xy {tuple(planes.xy.shape)}")
        if planes.is_bev != self.bev:
            raise ValueError(f"field built with bev={self.bev} but got bev={planes.is_bev} planes")
        chunks = []
        step = max(1, self.config.decode_chunk_x)
        for x0 in range(0, nx, step):
            xs = slice(x0, min(nx, x0 + step))
            slab_planes = (
                planes.xy[:, :, xs],
                None if planes.xz is None else planes.xz[:, :, xs],
                planes.yz,
            )
            if self.config.checkpoint_decoder and torch.is_grad_enabled():
                chunks.append(checkpoint(self._decode_slab, *slab_planes, use_reentrant=False))
            else:
                chunks.append(self._decode_slab(*slab_planes))
        values = torch.cat(chunks, dim=2)
        prior = self.prior_sdf.to(values.dtype)
        values = torch.cat([values[:, :1] * self.config.sdf_output_scale_m + prior, values[:, 1:]], dim=1)
        return FieldGrid(
            values=values,
            range_m=self.scene.range_m,
            rgb_channels=self.rgb_channels,
            semantic_channels=self.config.num_semantic_classes,
            rgb_activation=self.config.rgb_activation,
            fd_boundary=self.config.fd_boundary,
        )

    # -- nerfstudio path ---------------------------------------------------------------------------

    def set_grid(self, grid: FieldGrid, sample_index: int = 0, inv_s: Optional[float] = None) -> None:
        """Choose the decoded sample that `get_density` / `get_outputs` answer for.

        `inv_s` (NeuS sharpness, e.g. `NeuSAlpha.inv_s()`) shapes the density of `get_density`.
        """
        self._current_grid = grid.select(sample_index)
        if inv_s is not None:
            self._current_inv_s = float(inv_s)

    def _query_ray_samples(self, ray_samples: RaySamples, with_gradient: bool) -> Tuple[FieldSamples, torch.Size]:
        if self._current_grid is None:
            raise RuntimeError("SelfOccField has no decoded grid: call set_grid(field.decode(planes)) first")
        positions = ray_samples.frustums.get_positions()
        batch_shape = positions.shape[:-1]
        samples = query_field(self._current_grid, positions.reshape(1, -1, 3), with_gradient)
        return samples, batch_shape

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        """Logistic density from the SDF (see `sdf_to_density`) and the SDF as the 'embedding'."""
        samples, batch_shape = self._query_ray_samples(ray_samples, with_gradient=False)
        sdf = samples.sdf.reshape(*batch_shape, 1)
        return sdf_to_density(sdf, self._current_inv_s), sdf

    def forward(self, ray_samples: RaySamples, compute_normals: bool = False) -> Dict[FieldHeadNames, Tensor]:
        """nerfstudio's Field.forward; normals always come from the finite-difference gradient (never autograd)."""
        del compute_normals
        return super().forward(ray_samples, compute_normals=False)

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        """SDF, gradient, normals, colour and semantic logits at the samples' positions."""
        samples, batch_shape = self._query_ray_samples(ray_samples, with_gradient=True)
        assert samples.sdf_gradient is not None
        gradient = samples.sdf_gradient.reshape(*batch_shape, 3)
        outputs: Dict[FieldHeadNames, Tensor] = {
            FieldHeadNames.SDF: samples.sdf.reshape(*batch_shape, 1),
            FieldHeadNames.GRADIENT: gradient,
            FieldHeadNames.NORMALS: F.normalize(gradient, dim=-1),
        }
        if samples.rgb is not None:
            outputs[FieldHeadNames.RGB] = samples.rgb.reshape(*batch_shape, 3)
        if samples.semantic_logits is not None:
            outputs[FieldHeadNames.SEMANTICS] = samples.semantic_logits.reshape(*batch_shape, -1)
        return outputs
