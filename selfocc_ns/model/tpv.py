"""TPV / BEV lifting (TPVFormer-style, as in the official SelfOcc encoder), pure torch.

Learnable queries per plane (+ a Fourier positional code of the cell coordinates) go through
``num_layers`` x [cross-plane self-attention -> LayerNorm -> image cross-attention -> LayerNorm ->
FFN -> LayerNorm] and come out as TPVPlanes (planes.py). The BEV variant keeps the xy plane only: its
self-attention is deformable attention on that plane, its image cross-attention the TPV xy one.

Sampling points: `num_points_cross` follows the official list's order ([48, 48, 8]: the xy plane samples 8
points along z, the side planes 48 along their horizontal axis); the official code uses one sampling point per
pillar anchor (anchors = points), TPVFormer used 4 along z and 32 along x/y. Checkpointing matters at the full
preset: the sampled features are heads x levels x points times larger than the queries, and a layer's
activations are ~0.7 GB.

Conventions (tpv_geometry.py has the formulas): by default the cross-plane reference points sit on the grid
points (align_corners=True), the positional code is [sin..., cos...] per coordinate, and anchors behind a
camera read zeros with inclusive image bounds. The official code uses i / n references read with
align_corners=False (half a cell before the grid point), sin/cos interleaved per frequency, strict image
bounds and a projection divided by eps behind the camera: `self_attn_reference`, `pe_layout` and
`image_visibility` select them (on in the presets named after official configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Sequence, Tuple, Type

import torch
from jaxtyping import Bool, Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from selfocc_ns.model.planes import SceneGrid, TPVPlanes
from selfocc_ns.model.tpv_attention import CrossPlaneSelfAttention, DeformableImageAttention, xavier_linear
from selfocc_ns.model.tpv_geometry import (
    MISSING_AXIS,
    ImageVisibility,
    PeLayout,
    SelfAttnReference,
    cross_plane_reference_grid,
    fourier_features,
    official_plane_cells_unit,
    pillar_points_m,
    plane_cells_unit,
    plane_shape,
    project_to_images,
)


@dataclass
class TPVEncoderConfig(InstantiateConfig):
    """Configuration of the TPV / BEV lifting encoder (defaults: the official nuscenes_occ preset)."""

    _target: Type = field(default_factory=lambda: TPVEncoder)
    representation: Literal["tpv", "bev"] = "tpv"
    """"tpv": three planes xy, xz, yz; "bev": the xy plane only (the field adds a per-height embedding)."""
    num_layers: int = 4
    """Encoder layers."""
    num_heads: int = 6
    """Attention heads (dim must be divisible by it)."""
    ffn_dim: int = 192
    """Hidden width of the feed-forward block."""
    num_levels: int = 4
    """FPN levels attended by the image cross-attention."""
    num_cams: int = 6
    """Cameras (one learned embedding each)."""
    num_points_cross: Tuple[int, int, int] = (48, 48, 8)
    """Image sampling points per head and level, by the query plane's missing axis (x, y, z): yz, xz, xy planes."""
    points_in_pillar: Tuple[int, int, int] = (48, 48, 8)
    """Reference points along each query's missing axis (x, y, z order as above); must divide num_points_cross."""
    num_points_self: int = 12
    """Sampling points per head and plane in the cross-plane self-attention."""
    pe_num_freqs: int = 12
    """Fourier frequencies (pi * 2^k, k = -1 ..) of the plane cell coordinates normalised over the range."""
    dropout: float = 0.1
    """Dropout on the attention updates and in the FFN (official 0.1)."""
    query_chunk: int = 8192
    """Queries per chunk in the deformable attentions (bounds the sampled-feature memory)."""
    checkpoint: bool = True
    """Recompute each attention chunk in backward when training (activation checkpointing)."""
    checkpoint_layers: bool = True
    """Also recompute whole encoder layers in backward when training (keeps only each layer's input)."""
    self_attn_reference: SelfAttnReference = "grid_point"
    """Cross-plane reference points: on the grid points (index i), or official i / n (index i - 0.5)."""
    pe_layout: PeLayout = "blocked"
    """Positional-code columns: [sin.., cos..] per coordinate, or official sin/cos interleaved (official fp32 grid)."""
    image_visibility: ImageVisibility = "inclusive"
    """Pillar points seen by a camera: 0 <= u < w, zeros behind; or official strict 0 < u < w, xy / 1e-5 behind."""

    def planes(self) -> Tuple[str, ...]:
        return ("xy",) if self.representation == "bev" else ("xy", "xz", "yz")


class TPVEncoderLayer(nn.Module):
    """self-attention -> norm -> image cross-attention (one module per plane) -> norm -> FFN -> norm."""

    def __init__(self, config: TPVEncoderConfig, dim: int) -> None:
        super().__init__()
        planes = config.planes()
        self.self_attn = CrossPlaneSelfAttention(
            dim, config.num_heads, len(planes), config.num_points_self, config.dropout, config.self_attn_reference
        )
        self.cross_attn = nn.ModuleDict(
            {
                plane: DeformableImageAttention(
                    dim,
                    config.num_heads,
                    config.num_levels,
                    config.num_points_cross[MISSING_AXIS[plane]],
                    config.points_in_pillar[MISSING_AXIS[plane]],
                    config.dropout,
                )
                for plane in planes
            }
        )
        self.ffn = nn.Sequential(
            xavier_linear(nn.Linear(dim, config.ffn_dim)),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            xavier_linear(nn.Linear(config.ffn_dim, dim)),
            nn.Dropout(config.dropout),
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(
        self,
        queries: Float[Tensor, "B Qtot C"],
        query_pos: Float[Tensor, "Qtot C"],
        plane_shapes: Sequence[Tuple[int, int]],
        self_references: Float[Tensor, "Qtot L P 2"],
        feats: Sequence[Float[Tensor, "B N C hl wl"]],
        anchors: Sequence[Tuple[Float[Tensor, "B N Q D 2"], Bool[Tensor, "B N Q D"]]],
        query_chunk: int,
        use_checkpoint: bool,
    ) -> Float[Tensor, "B Qtot C"]:
        queries = self.self_attn(queries, query_pos, plane_shapes, self_references, query_chunk, use_checkpoint)
        queries = self.norms[0](queries)
        per_plane = queries.split([rows * cols for rows, cols in plane_shapes], dim=1)
        queries = torch.cat(
            [
                attention(plane_queries, feats, grid, visible, query_chunk, use_checkpoint)
                for attention, plane_queries, (grid, visible) in zip(self.cross_attn.values(), per_plane, anchors)
            ],
            dim=1,
        )
        queries = self.norms[1](queries)
        queries = self.norms[2](queries + self.ffn(queries))
        return queries


class TPVEncoder(nn.Module):
    """Multi-camera FPN features -> TPV planes (or the BEV plane) in the reference frame of the input keyframe.

    `scene` (box and grid points) and `dim` (the FPN width) come from the model, not from this config.
    """

    def __init__(self, config: TPVEncoderConfig, scene: SceneGrid, dim: int) -> None:
        super().__init__()
        self.config = config
        self.scene = scene
        self.dim = dim
        self.plane_names = config.planes()
        self.plane_shapes = [plane_shape(scene.grid_xyz, plane) for plane in self.plane_names]
        # Official init: queries ~ N(0, 1); camera and level embeddings ~ N(0, 1), added to the features.
        self.queries = nn.ParameterDict(
            {plane: nn.Parameter(torch.randn(rows * cols, dim)) for plane, (rows, cols) in
             zip(self.plane_names, self.plane_shapes)}
        )
        self.pos_proj = nn.ModuleDict(
            {plane: xavier_linear(nn.Linear(4 * config.pe_num_freqs, dim)) for plane in self.plane_names}
        )
        self.cams_embeds = nn.Parameter(torch.randn(config.num_cams, dim))
        self.level_embeds = nn.Parameter(torch.randn(config.num_levels, dim))
        cells_unit = official_plane_cells_unit if config.pe_layout == "interleaved" else plane_cells_unit
        for plane in self.plane_names:
            cells01 = cells_unit(scene.range_m, scene.grid_xyz, plane)
            self.register_buffer(
                f"fourier_{plane}", fourier_features(cells01, config.pe_num_freqs, config.pe_layout), persistent=False
            )
            anchors = config.points_in_pillar[MISSING_AXIS[plane]]
            self.register_buffer(
                f"pillars_{plane}", pillar_points_m(scene.range_m, scene.grid_xyz, plane, anchors), persistent=False
            )
        self.register_buffer(
            "self_references",
            cross_plane_reference_grid(
                scene.grid_xyz, self.plane_names, config.num_points_self, config.self_attn_reference
            ),
            persistent=False,
        )
        self.layers = nn.ModuleList([TPVEncoderLayer(config, dim) for _ in range(config.num_layers)])

    def query_positions(self) -> Float[Tensor, "Qtot C"]:
        return torch.cat([self.pos_proj[p](getattr(self, f"fourier_{p}")) for p in self.plane_names], dim=0)

    def embed_features(self, feats: Sequence[Float[Tensor, "B N C hl wl"]]) -> List[Float[Tensor, "B N C hl wl"]]:
        """Add the camera and level embeddings (shared by all layers, as the official encoder)."""
        if len(feats) != self.config.num_levels:
            raise ValueError(f"expected {self.config.num_levels} feature levels, got {len(feats)}")
        if feats[0].shape[1] > self.config.num_cams:
            raise ValueError(f"{feats[0].shape[1]} cameras but TPVEncoderConfig.num_cams is {self.config.num_cams}")
        return [
            f
            + self.cams_embeds[None, : f.shape[1], :, None, None]
            + self.level_embeds[level][None, None, :, None, None]
            for level, f in enumerate(feats)
        ]

    def forward(
        self, feats: List[Float[Tensor, "B N C hl wl"]], ego2img: Float[Tensor, "B N 4 4"], image_hw: Tuple[int, int]
    ) -> TPVPlanes:
        """``ego2img`` maps homogeneous ego points (metres) to homogeneous pixels of images of size ``image_hw``:
        u = p0 / p2, v = p1 / p2 (the network-input images, or any size the matrices refer to, e.g. the official
        full-resolution lidar2img with img_shape); which points are seen follows `image_visibility`."""
        batch = feats[0].shape[0]
        embedded = self.embed_features(feats)
        anchors = [
            project_to_images(
                getattr(self, f"pillars_{plane}"), ego2img.float(), image_hw, visibility=self.config.image_visibility
            )
            for plane in self.plane_names
        ]
        queries = torch.cat([self.queries[p] for p in self.plane_names], dim=0)[None].expand(batch, -1, -1)
        query_pos = self.query_positions()
        use_checkpoint = self.config.checkpoint and self.training
        checkpoint_layers = self.config.checkpoint_layers and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            args = (queries, query_pos, self.plane_shapes, self.self_references, embedded, anchors,
                    self.config.query_chunk, use_checkpoint)
            queries = checkpoint(layer, *args, use_reentrant=False) if checkpoint_layers else layer(*args)
        planes = [
            flat.transpose(1, 2).reshape(batch, self.dim, rows, cols)
            for flat, (rows, cols) in zip(queries.split([r * c for r, c in self.plane_shapes], dim=1),
                                          self.plane_shapes)
        ]
        return TPVPlanes(*planes)
