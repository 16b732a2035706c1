"""TPV / BEV lifting: deformable sampling lands where the geometry says, shapes, gradients, chunking and
checkpointing do not change the numbers."""

from __future__ import annotations

import math
from typing import List, Tuple

import pytest
import torch
from torch import Tensor, nn

from selfocc_ns.model.planes import SceneGrid
from selfocc_ns.model.tpv import TPVEncoder, TPVEncoderConfig
from selfocc_ns.model.tpv_attention import CrossPlaneSelfAttention, DeformableImageAttention
from selfocc_ns.model.tpv_geometry import cross_plane_reference_grid, pillar_points_m, project_to_images

RANGE_M = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
IMAGE_HW = (64, 128)
STRIDES = (4, 8, 16, 32)
SCENE = SceneGrid(RANGE_M, (17, 13, 5))
DIM = 16


def camera_rig(yaws_deg: List[float], image_hw: Tuple[int, int], fov_deg: float = 86.0) -> Tensor:
    """ego2img (1, N, 4, 4) of pinhole cameras 1.5 m above the ego origin looking horizontally (OpenCV axes)."""
    height, width = image_hw
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    intrinsics = torch.tensor([[focal, 0, width / 2, 0], [0, focal, height / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    mats = []
    for yaw_deg in yaws_deg:
        yaw = math.radians(yaw_deg)
        forward = [math.cos(yaw), math.sin(yaw), 0.0]
        right = [math.sin(yaw), -math.cos(yaw), 0.0]
        rotation = torch.tensor([right, [0.0, 0.0, -1.0], forward])  # rows: camera axes in ego coordinates
        ego2cam = torch.eye(4)
        ego2cam[:3, :3] = rotation
        ego2cam[:3, 3] = -rotation @ torch.tensor([0.0, 0.0, 1.5])
        mats.append(intrinsics @ ego2cam)
    return torch.stack(mats)[None]


def tiny_config(**overrides) -> TPVEncoderConfig:
    values = dict(
        num_layers=2, num_heads=2, ffn_dim=32, num_cams=3,
        num_points_cross=(4, 4, 2), points_in_pillar=(4, 4, 2), num_points_self=3, pe_num_freqs=4,
        query_chunk=4096, dropout=0.0,
    )
    values.update(overrides)
    return TPVEncoderConfig(**values)


def random_inputs(config: TPVEncoderConfig, batch: int = 1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    feats = [
        torch.randn(batch, config.num_cams, DIM, IMAGE_HW[0] // s, IMAGE_HW[1] // s, generator=generator)
        for s in STRIDES
    ]
    ego2img = camera_rig([0.0, 120.0, 240.0][: config.num_cams], IMAGE_HW).expand(batch, -1, -1, -1)
    return feats, ego2img


def perturb_zero_inits(encoder: nn.Module, seed: int = 0) -> None:
    """Offsets/weights heads start query-independent (zero weight matrices), which hides gradient paths at
    step 0; give them small random weights as after a few training steps."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "sampling_offsets.weight" in name or "attention_weights.weight" in name:
                param.add_(0.02 * torch.randn(param.shape, generator=generator))


def test_pillars_and_cross_plane_references_follow_the_grid_point_convention() -> None:
    grid_xyz = (5, 3, 4)  # x: -40, -20, 0, 20, 40; y: -40, 0, 40; z: -1 + k * 6.4 / 3
    z_m = [-1.0 + k * 6.4 / 3 for k in range(4)]
    pillars = pillar_points_m(RANGE_M, grid_xyz, "xz", 3)  # xz cells (row x, col z), pillars along y
    assert pillars.shape == (5 * 4, 3, 3)
    expected = torch.tensor([[-20.0, y, z_m[2]] for y in (-40.0, 0.0, 40.0)])
    torch.testing.assert_close(pillars[1 * 4 + 2], expected)
    torch.testing.assert_close(pillar_points_m(RANGE_M, grid_xyz, "xy", 2)[3 * 3 + 0, :, 2], torch.tensor([-1.0, 5.4]))

    references = cross_plane_reference_grid(grid_xyz, ("xy", "xz", "yz"), 3)  # Qtot, planes, points, (col, row)
    assert references.shape == (15 + 20 + 12, 3, 3, 2)
    pillar = torch.tensor([-1.0, 0.0, 1.0])
    xy_query = references[1 * 3 + 2]  # x_norm -0.5, y_norm 1
    torch.testing.assert_close(xy_query[0], torch.tensor([[1.0, -0.5]] * 3))  # own cell on xy (col y, row x)
    torch.testing.assert_close(xy_query[1], torch.stack([pillar, torch.full((3,), -0.5)], -1))  # xz: z pillar
    torch.testing.assert_close(xy_query[2], torch.stack([pillar, torch.full((3,), 1.0)], -1))  # yz: z pillar
    yz_query = references[15 + 20 + 0 * 4 + 3]  # y_norm -1, z_norm 1
    torch.testing.assert_close(yz_query[0], torch.stack([torch.full((3,), -1.0), pillar], -1))  # xy: x pillar
    torch.testing.assert_close(yz_query[1], torch.stack([torch.full((3,), 1.0), pillar], -1))  # xz: x pillar


# ----------------------------------------------------------------------------------------------------------
# The image attention reads the pixels the reference points project to


def _identity_attention(dim: int, num_points: int, num_anchors: int) -> DeformableImageAttention:
    attention = DeformableImageAttention(dim, 2, len(STRIDES), num_points, num_anchors, dropout=0.0).eval()
    with torch.no_grad():
        for linear in (attention.value_proj, attention.output_proj):
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
        for linear in (attention.sampling_offsets, attention.attention_weights):  # zero offsets, uniform weights
            linear.weight.zero_()
            linear.bias.zero_()
    return attention


def _own_projection(points_m: Tensor, ego2img: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Pixel coordinates (u, v), in-front flags of (Q, D, 3) points in each camera: (N, Q, D) each."""
    homogeneous = torch.cat([points_m, torch.ones_like(points_m[..., :1])], dim=-1)
    projected = torch.einsum("nij,qdj->nqdi", ego2img[0].double(), homogeneous.double())
    in_front = projected[..., 2] > 1e-5
    depth = torch.where(in_front, projected[..., 2], torch.ones_like(projected[..., 2]))
    return projected[..., 0] / depth, projected[..., 1] / depth, in_front


@pytest.mark.parametrize("plane,num_anchors,points_per_anchor", [("xy", 6, 1), ("xz", 12, 2), ("yz", 12, 1)])
def test_planted_feature_reaches_exactly_the_cells_that_project_onto_it(
    plane: str, num_anchors: int, points_per_anchor: int
) -> None:
    grid_xyz, dim = (17, 17, 5), 4
    # Front and back camera, 86 deg each: no overlap, and no grid point falls exactly on an image border.
    ego2img = camera_rig([0.0, 180.0], IMAGE_HW)
    height, width = IMAGE_HW
    # A feature planted in the FRONT camera over the pixels [32, 96) x [0, 64) on every level (aligned to
    # the coarsest, stride-32 cells); the back camera and everything else is zero.
    u0, u1, v0, v1 = 32, 96, 0, 64
    feature = torch.arange(1.0, dim + 1.0)
    feats = []
    for stride in STRIDES:
        level = torch.zeros(1, 2, dim, height // stride, width // stride)
        level[0, 0, :, v0 // stride : v1 // stride, u0 // stride : u1 // stride] = feature[:, None, None]
        feats.append(level)

    points_m = pillar_points_m(RANGE_M, grid_xyz, plane, num_anchors)
    anchor_grid, anchor_visible = project_to_images(points_m, ego2img, IMAGE_HW)
    attention = _identity_attention(dim, num_anchors * points_per_anchor, num_anchors)
    with torch.no_grad():
        out = attention(torch.zeros(1, points_m.shape[0], dim), feats, anchor_grid, anchor_visible, 4096)[0]

    # Independent expectation from ego2img. Bilinear reads of a region aligned to cells of size s <= 32 px
    # are the full feature when the point is >= 16 px inside the region (image borders count as edges,
    # zero padding beyond), and exactly zero when it is >= 16 px outside; in between they are partial.
    u, v, in_front = _own_projection(points_m, ego2img)
    seen = in_front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    num_cameras_seen = seen.any(dim=-1).sum(dim=0)  # Q
    assert torch.equal(anchor_visible[0], seen), "visibility must follow p2 > eps, 0 <= u < w, 0 <= v < h"
    front_u, front_v, front_ok = u[0], v[0], in_front[0]
    core = front_ok & (front_u >= u0 + 16) & (front_u <= u1 - 16) & (front_v >= v0 + 16) & (front_v <= v1 - 16)
    near = front_ok & (front_u > u0 - 16) & (front_u < u1 + 16) & (front_v > v0 - 16) & (front_v < v1 + 16)
    denominator = num_cameras_seen.clamp(min=1).double()
    lower = core.double().mean(dim=-1) / denominator
    upper = near.double().mean(dim=-1) / denominator

    share = out / feature  # every channel carries the same share of the planted feature
    torch.testing.assert_close(share, share[:, :1].expand_as(share), atol=1e-6, rtol=1e-6)
    share = share[:, 0].double()
    assert (share >= lower - 1e-6).all() and (share <= upper + 1e-6).all()
    far = upper == 0
    assert (share[far] == 0).all()
    assert (far & (num_cameras_seen > 0)).any(), "some seen cells must project away from the feature"
    assert (lower > 0).any(), "some cells must project onto the feature"
    fully_inside = (lower == 1.0)
    if plane == "xy":  # vertical pillars 15+ m ahead fit entirely inside the planted block
        assert fully_inside.sum() >= 3
        torch.testing.assert_close(share[fully_inside], torch.ones_like(share[fully_inside]), atol=1e-5, rtol=0)


def test_cross_plane_self_attention_reads_along_each_query_pillar() -> None:
    """Plane values: xz = 1 + x_norm in every channel, xy = yz = 0. With zero offsets and uniform weights a
    query reads, averaged over the 3 planes, its pillar: xy cell (x, y) -> (1 + x) / 3 from xz; yz cells ->
    mean of (1 + x) over a pillar spanning x symmetrically = 1, so 1 / 3; xz cells -> their own value / 3."""
    grid_xyz, dim, points = (9, 7, 5), 4, 4
    planes = ("xy", "xz", "yz")
    shapes = [(9, 7), (9, 5), (7, 5)]
    attention = CrossPlaneSelfAttention(dim, 2, 3, points, dropout=0.0).eval()
    with torch.no_grad():
        for linear in (attention.value_proj, attention.output_proj):
            linear.weight.copy_(torch.eye(dim))
            linear.bias.zero_()
        for linear in (attention.sampling_offsets, attention.attention_weights):
            linear.weight.zero_()
            linear.bias.zero_()
    x_norm = torch.linspace(-1.0, 1.0, 9)
    xz_values = (1.0 + x_norm)[:, None].expand(9, 5).reshape(-1)
    queries = torch.cat([torch.zeros(63), xz_values, torch.zeros(35)])[None, :, None].expand(1, -1, dim)
    references = cross_plane_reference_grid(grid_xyz, planes, points)
    with torch.no_grad():
        out = attention(queries.contiguous(), torch.zeros(queries.shape[1], dim), shapes, references, 17)[0, :, 0]
    xy_out, xz_out, yz_out = out.split([63, 45, 35])
    torch.testing.assert_close(xy_out, ((1.0 + x_norm) / 3)[:, None].expand(9, 7).reshape(-1))
    torch.testing.assert_close(xz_out, xz_values * (1.0 + 1.0 / 3))
    torch.testing.assert_close(yz_out, torch.full_like(yz_out, 1.0 / 3))


# ----------------------------------------------------------------------------------------------------------
# The encoder


@pytest.mark.parametrize("representation", ["tpv", "bev"])
def test_encoder_output_shapes(representation: str) -> None:
    config = tiny_config(representation=representation)
    torch.manual_seed(0)
    encoder = TPVEncoder(config, SCENE, DIM).eval()
    feats, ego2img = random_inputs(config, batch=2)
    with torch.no_grad():
        planes = encoder(feats, ego2img, IMAGE_HW)
    assert planes.xy.shape == (2, 16, 17, 13)
    if representation == "tpv":
        assert planes.xz.shape == (2, 16, 17, 5) and planes.yz.shape == (2, 16, 13, 5)
        assert planes.volume().shape == (2, 16, 17, 13, 5)
    else:
        assert planes.is_bev and planes.yz is None
    assert torch.isfinite(planes.xy).all()
    # Each batch element depends on its own images only.
    with torch.no_grad():
        single = encoder([f[:1] for f in feats], ego2img[:1], IMAGE_HW)
    torch.testing.assert_close(single.xy, planes.xy[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("representation", ["tpv", "bev"])
def test_gradients_reach_every_encoder_parameter(representation: str) -> None:
    config = tiny_config(representation=representation, dropout=0.1)
    torch.manual_seed(0)
    encoder = TPVEncoder(config, SCENE, DIM).train()
    perturb_zero_inits(encoder)
    feats, ego2img = random_inputs(config)
    feats = [f.requires_grad_() for f in feats]
    planes = encoder(feats, ego2img, IMAGE_HW)
    weights = torch.Generator().manual_seed(1)
    loss = sum((p * torch.randn(p.shape, generator=weights)).sum() for p in (planes.xy, planes.xz, planes.yz)
               if p is not None)
    loss.backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None or not (p.grad.abs().sum() > 0)]
    assert no_grad == []
    assert all(f.grad.abs().sum() > 0 for f in feats)  # every FPN level feeds the planes


def test_chunked_cross_attention_matches_unchunked() -> None:
    config = tiny_config()
    torch.manual_seed(0)
    encoder = TPVEncoder(config, SCENE, DIM).eval()
    perturb_zero_inits(encoder)
    feats, ego2img = random_inputs(config)
    with torch.no_grad():
        whole = encoder(feats, ego2img, IMAGE_HW)
        encoder.config.query_chunk = 7  # does not divide any plane or camera set
        chunked = encoder(feats, ego2img, IMAGE_HW)
    for a, b in zip((whole.xy, whole.xz, whole.yz), (chunked.xy, chunked.xz, chunked.yz)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_checkpointing_leaves_gradients_unchanged() -> None:
    grads = []
    for use_checkpoint, checkpoint_layers in ((False, False), (True, False), (True, True), (False, True)):
        config = tiny_config(
            checkpoint=use_checkpoint, checkpoint_layers=checkpoint_layers, query_chunk=50, dropout=0.1
        )
        torch.manual_seed(0)
        encoder = TPVEncoder(config, SCENE, DIM).train()
        perturb_zero_inits(encoder)
        feats, ego2img = random_inputs(config)
        planes = encoder(feats, ego2img, IMAGE_HW)
        (planes.volume() ** 2).mean().backward()  # dropout on: recomputation must replay the same masks
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters()})
    for other in grads[1:]:
        assert other.keys() == grads[0].keys()
        for name in grads[0]:
            torch.testing.assert_close(other[name], grads[0][name], atol=1e-7, rtol=1e-6, msg=name)


def test_initial_attention_is_uniform_and_looks_one_cell_around_the_reference() -> None:
    config = tiny_config(num_heads=4)
    encoder = TPVEncoder(config, SCENE, DIM)
    query = torch.randn(5, DIM)
    image_attention = encoder.layers[0].cross_attn["xy"]
    self_attention = encoder.layers[0].self_attn
    for attention, grows in ((image_attention, False), (self_attention, True)):
        assert torch.equal(attention.attention_weights(query), torch.zeros(5, attention.attention_weights.out_features))
        offsets = attention.sampling_offsets(query).view(5, 4, -1, attention.num_points, 2)
        # head h looks along angle 2 pi h / 4: +x, +y, -x, -y; point p at distance p + 1 cells (self) or 1 (image)
        directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
        distance = torch.arange(1.0, attention.num_points + 1.0) if grows else torch.ones(attention.num_points)
        expected = directions[:, None, None, :] * distance[None, None, :, None]
        torch.testing.assert_close(offsets, expected[None].expand_as(offsets), atol=1e-6, rtol=0)
