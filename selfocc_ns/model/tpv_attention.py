"""Multi-scale deformable attention in pure torch (``F.grid_sample``): image cross-attention and cross-plane
self-attention of the TPV encoder (TPVFormer's TPVCrossAttention and CrossViewHybridAttention).

Both modules work on query chunks so memory is bounded by ``query_chunk``; in training, with
``use_checkpoint``, each chunk is recomputed in backward instead of keeping its sampled features (the
sampled tensors are heads x levels x points times larger than the queries).
"""

from __future__ import annotations

import math
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from selfocc_ns.model.tpv_geometry import SelfAttnReference


def sample_levels(
    level_values: Sequence[Float[Tensor, "G Ch hl wl"]],
    locations: Float[Tensor, "G Q L P 2"],
    weights: Float[Tensor, "G Q L P"],
    align_corners: bool,
) -> Float[Tensor, "G Ch Q"]:
    """Weighted sum of bilinear samples over levels and points (G groups = batch x heads).

    ``locations`` are grid_sample coordinates (x, y) in [-1, 1] for each level; outside reads zero.
    """
    out = None
    for level, values in enumerate(level_values):
        sampled = F.grid_sample(
            values, locations[:, :, level], mode="bilinear", padding_mode="zeros", align_corners=align_corners
        )  # G Ch Q P
        # vecdot over the points: measured 1.5x faster (forward + backward, CPU) than a broadcast
        # multiply-and-sum or an einsum (which goes through bmm on G x Q tiny matrices with permuted copies).
        level_sum = torch.linalg.vecdot(sampled, weights[:, None, :, level].expand_as(sampled))
        out = level_sum if out is None else out + level_sum
    assert out is not None
    return out


def head_directions(num_heads: int) -> Float[Tensor, "heads 2"]:
    """One unit direction per head, evenly spread, scaled so the larger component is 1 (mmcv's grid_init):
    at initialisation each head looks one cell away from the reference point in its own direction."""
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    directions = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
    return directions / directions.abs().max(dim=-1, keepdim=True).values


def init_deformable_heads(
    offsets: nn.Linear, weights: nn.Linear, num_heads: int, num_levels: int, num_points: int, grow: bool
) -> None:
    """Offsets start at the head directions (points p at distance p + 1 when ``grow``, as mmcv's
    MultiScaleDeformableAttention; all at 1 otherwise, as TPVFormer's image attention) and do not depend on
    the query; attention weights start uniform (zero logits)."""
    grid = head_directions(num_heads)[:, None, None, :].repeat(1, num_levels, num_points, 1)
    if grow:
        grid = grid * torch.arange(1, num_points + 1, dtype=torch.float32)[None, None, :, None]
    nn.init.zeros_(offsets.weight)
    with torch.no_grad():
        offsets.bias.copy_(grid.reshape(-1))
    nn.init.zeros_(weights.weight)
    nn.init.zeros_(weights.bias)


def xavier_linear(layer: nn.Linear) -> nn.Linear:
    """Xavier-uniform weight, zero bias (the official encoder's init for projections and FFN)."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def deformable_projections(
    dim: int, num_heads: int, num_levels: int, num_points: int, grow: bool
) -> Tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """value_proj, sampling_offsets, attention_weights and output_proj of a deformable attention, created in
    this order (seeded initialisations depend on it) and initialised as the official encoder: xavier
    projections, offsets and weights by `init_deformable_heads`."""
    value_proj = xavier_linear(nn.Linear(dim, dim))
    sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
    attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
    init_deformable_heads(sampling_offsets, attention_weights, num_heads, num_levels, num_points, grow)
    return value_proj, sampling_offsets, attention_weights, xavier_linear(nn.Linear(dim, dim))


def run_chunk(fn: Callable[..., Tensor], use_checkpoint: bool, *args: Tensor) -> Tensor:
    """Call fn, recomputing it in backward (activation checkpointing) when asked and grads are on."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class DeformableImageAttention(nn.Module):
    """Image cross-attention of one plane's queries (TPVFormer's BEVCrossAttention + BEVDeformableAttention).

    Each query has D anchors (its pillar) projected into the cameras. Per camera only the queries with at
    least one visible anchor attend (BEVFormer's rebatching): from the query, ``num_points`` offsets
    (point p belongs to anchor p mod D) and softmax weights over levels x points per head; features are
    sampled bilinearly on all levels. The outputs are averaged over the cameras that see the query,
    projected, and added to the query (dropout on the update).
    """

    def __init__(
        self, dim: int, num_heads: int, num_levels: int, num_points: int, num_anchors: int, dropout: float
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if num_points % num_anchors:
            raise ValueError(f"num_points {num_points} must be a multiple of the pillar anchors {num_anchors}")
        self.dim, self.num_heads, self.num_levels = dim, num_heads, num_levels
        self.num_points, self.num_anchors = num_points, num_anchors
        self.value_proj, self.sampling_offsets, self.attention_weights, self.output_proj = deformable_projections(
            dim, num_heads, num_levels, num_points, grow=False
        )
        self.dropout = nn.Dropout(dropout)

    def camera_values(self, cam_feats: Sequence[Float[Tensor, "C hl wl"]]) -> List[Float[Tensor, "heads Ch hl wl"]]:
        """value_proj (a 1x1 convolution) of one camera's levels, split into heads. Done per chunk, inside the
        checkpoint, so projected image features are not kept per module and layer (~0.2 GB each at the
        full preset); the recomputation is small next to the sampling."""
        heads = self.num_heads
        return [
            F.conv2d(f[None], self.value_proj.weight[:, :, None, None], self.value_proj.bias)[0].reshape(
                heads, self.dim // heads, f.shape[-2], f.shape[-1]
            )
            for f in cam_feats
        ]

    def attend_chunk(
        self, queries: Float[Tensor, "Qc C"], anchors: Float[Tensor, "Qc D 2"], *cam_feats: Tensor
    ) -> Float[Tensor, "Qc C"]:
        """Deformable attention of a chunk of queries to one camera; cam_feats are its levels (C, hl, wl)."""
        level_values = self.camera_values(cam_feats)
        num_queries = queries.shape[0]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(queries).view(num_queries, heads, levels, points, 2)
        logits = self.attention_weights(queries).view(num_queries, heads, levels * points)
        weights = logits.softmax(-1).view(num_queries, heads, levels, points)
        # offsets are in feature cells of each level: one cell is 2 / size in normalised coordinates.
        cells_to_norm = torch.tensor(
            [[2.0 / v.shape[-1], 2.0 / v.shape[-2]] for v in level_values], dtype=queries.dtype, device=queries.device
        )
        point_anchors = anchors.repeat(1, points // self.num_anchors, 1)  # point p -> anchor p mod D
        locations = point_anchors[:, None, None] + offsets * cells_to_norm[None, None, :, None, :]
        sampled = sample_levels(
            level_values, locations.transpose(0, 1), weights.transpose(0, 1), align_corners=False
        )  # heads Ch Qc
        return sampled.permute(2, 0, 1).reshape(num_queries, self.dim)

    def forward(
        self,
        queries: Float[Tensor, "B Q C"],
        feats: Sequence[Float[Tensor, "B N C hl wl"]],
        anchor_grid: Float[Tensor, "B N Q D 2"],
        anchor_visible: Bool[Tensor, "B N Q D"],
        query_chunk: int,
        use_checkpoint: bool = False,
    ) -> Float[Tensor, "B Q C"]:
        batch, num_queries, dim = queries.shape
        sees_camera = anchor_visible.any(dim=-1)  # B N Q
        slots = []
        for b in range(batch):
            chunk_outputs, chunk_indices = [], []
            for cam in range(sees_camera.shape[1]):
                cam_feats = [f[b, cam] for f in feats]
                seen = sees_camera[b, cam].nonzero().squeeze(1)
                for start in range(0, seen.numel(), query_chunk):
                    index = seen[start : start + query_chunk]
                    chunk_outputs.append(
                        run_chunk(
                            self.attend_chunk,
                            use_checkpoint,
                            queries[b].index_select(0, index),
                            anchor_grid[b, cam].index_select(0, index),
                            *cam_feats,
                        )
                    )
                    chunk_indices.append(index)
            slot = queries.new_zeros(num_queries, dim)
            if chunk_outputs:
                slot = slot.index_add(0, torch.cat(chunk_indices), torch.cat(chunk_outputs))
            slots.append(slot)
        num_cameras_seen = sees_camera.sum(dim=1).clamp(min=1).to(queries.dtype)  # B Q
        averaged = torch.stack(slots) / num_cameras_seen[..., None]
        return queries + self.dropout(self.output_proj(averaged))


class CrossPlaneSelfAttention(nn.Module):
    """Deformable self-attention of all plane queries over all planes (TPVFormer's CrossViewHybridAttention):
    the planes act as levels; a query's reference points on each plane come from its 3D pillar
    (tpv_geometry.cross_plane_reference_grid). The positional code is added to the query that predicts
    offsets and weights, not to the values; the update is projected and added to the query.

    ``reference`` is the convention of the references it is given: "grid_point" (normalised, grid points,
    align_corners=True, offsets in cells of 2 / (n - 1)) or "official" (i / n in [0, 1), sampled at
    2 (ref + offset / n) - 1 with align_corners=False, as mmcv's deformable attention)."""

    def __init__(
        self, dim: int, num_heads: int, num_planes: int, num_points: int, dropout: float,
        reference: SelfAttnReference = "grid_point",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if reference not in ("grid_point", "official"):
            raise ValueError(f"unknown self-attention reference convention {reference!r}")
        self.dim, self.num_heads, self.num_planes, self.num_points = dim, num_heads, num_planes, num_points
        self.reference = reference
        self.value_proj, self.sampling_offsets, self.attention_weights, self.output_proj = deformable_projections(
            dim, num_heads, num_planes, num_points, grow=True
        )
        self.dropout = nn.Dropout(dropout)

    def attend_chunk(
        self, queries: Float[Tensor, "B Qc C"], references: Float[Tensor, "Qc L P 2"], *plane_values: Tensor
    ) -> Float[Tensor, "B Qc C"]:
        """plane_values are (B * heads, Ch, rows, cols) per plane."""
        batch, num_queries, _ = queries.shape
        heads, levels, points = self.num_heads, self.num_planes, self.num_points
        offsets = self.sampling_offsets(queries).view(batch, num_queries, heads, levels, points, 2)
        logits = self.attention_weights(queries).view(batch, num_queries, heads, levels * points)
        weights = logits.softmax(-1).view(batch, num_queries, heads, levels, points)
        official = self.reference == "official"
        if official:  # mmcv: location = ref + offset / (cols, rows), grid = 2 location - 1
            sizes = torch.tensor([[v.shape[-1], v.shape[-2]] for v in plane_values], dtype=queries.dtype,
                                 device=queries.device)
            locations = 2.0 * (references[None, :, None] + offsets / sizes[None, None, None, :, None, :]) - 1.0
        else:  # offsets are in plane cells; planes hold grid points, so a cell is 2 / (n - 1) (align_corners=True)
            cells_to_norm = torch.tensor(
                [[2.0 / max(v.shape[-1] - 1, 1), 2.0 / max(v.shape[-2] - 1, 1)] for v in plane_values],
                dtype=queries.dtype, device=queries.device,
            )
            locations = references[None, :, None] + offsets * cells_to_norm[None, None, None, :, None, :]
        locations = locations.transpose(1, 2).reshape(batch * heads, num_queries, levels, points, 2)
        weights = weights.transpose(1, 2).reshape(batch * heads, num_queries, levels, points)
        sampled = sample_levels(plane_values, locations, weights, align_corners=not official)  # B*heads Ch Qc
        sampled = sampled.view(batch, heads, self.dim // heads, num_queries)
        return self.output_proj(sampled.permute(0, 3, 1, 2).reshape(batch, num_queries, self.dim))

    def forward(
        self,
        queries: Float[Tensor, "B Qtot C"],
        query_pos: Float[Tensor, "Qtot C"],
        plane_shapes: Sequence[Tuple[int, int]],
        references: Float[Tensor, "Qtot L P 2"],
        query_chunk: int,
        use_checkpoint: bool = False,
    ) -> Float[Tensor, "B Qtot C"]:
        batch, total, dim = queries.shape
        heads = self.num_heads
        values = self.value_proj(queries)
        plane_values = []
        for plane_flat, (rows, cols) in zip(values.split([r * c for r, c in plane_shapes], dim=1), plane_shapes):
            # (B, rows*cols, heads*Ch) -> (B*heads, Ch, rows, cols): one grid_sample image per batch x head.
            plane = plane_flat.view(batch, rows, cols, heads, dim // heads).permute(0, 3, 4, 1, 2)
            plane_values.append(plane.reshape(batch * heads, dim // heads, rows, cols))
        positioned = queries + query_pos[None]
        outputs = [
            run_chunk(
                self.attend_chunk,
                use_checkpoint,
                positioned[:, start : start + query_chunk],
                references[start : start + query_chunk],
                *plane_values,
            )
            for start in range(0, total, query_chunk)
        ]
        return queries + self.dropout(torch.cat(outputs, dim=1))
