"""Empty-space skipping (model/fast_render.py) against the faithful renderer, for every preset's renderer flags."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from selfocc_ns.model import fast_render
from selfocc_ns.model.fast_render import (
    SkipRunTables,
    alpha_floor,
    build_skip_grid,
    corner_min,
    max_half_section_m,
    min_filter,
    neus_alpha_bound_torch,
    skip_subdivision,
)
from selfocc_ns.model.field_grid import FieldGrid
from selfocc_ns.model.planes import grid_points_m
from selfocc_ns.model.rays import fixed_lattice_px
from selfocc_ns.model.renderer import SelfOccRendererConfig

RANGE = (-20.0, -20.0, -1.0, 20.0, 20.0, 5.4)
GRID = (41, 41, 13)
PRESETS = ("selfocc-tiny", "selfocc", "selfocc-depth", "selfocc-novel-depth")


def street_grid(semantic_channels: int = 5, seed: int = 0) -> FieldGrid:
    """Ground plane z = 0 and three boxes (SDF in metres) with smooth random colour and semantic channels."""
    xs, ys, zs = grid_points_m(RANGE, GRID)
    p = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
    sdf = p[..., 2].clone()
    for cx, cy, half_x, half_y, top in [(8.0, 2.0, 2.0, 1.0, 1.5), (-6.0, -5.0, 1.0, 3.0, 3.0), (3.0, -12.0, 4.0, 1.0, 2.0)]:
        box = torch.maximum(torch.maximum((p[..., 0] - cx).abs() - half_x, (p[..., 1] - cy).abs() - half_y), p[..., 2] - top)
        sdf = torch.minimum(sdf, box)
    generator = torch.Generator().manual_seed(seed)
    other = torch.randn(3 + semantic_channels, 11, 11, 4, generator=generator)
    other = F.interpolate(other[None], size=GRID, mode="trilinear", align_corners=True)[0]
    values = torch.cat([sdf[None], other])[None]
    return FieldGrid(values, RANGE, 3, semantic_channels, "sigmoid")


def look_around_cameras(height_m: float = 1.5):
    """Six cameras at the origin, `height_m` up, 60 deg apart, pitched 5 deg down (OpenCV axes)."""
    poses = []
    for yaw_deg in range(0, 360, 60):
        yaw, pitch = math.radians(yaw_deg), math.radians(5.0)
        forward = torch.tensor([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        pose = torch.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, torch.linalg.cross(forward, right), forward
        pose[:3, 3] = torch.tensor([0.0, 0.0, height_m])
        poses.append(pose)
    image_hw = (36, 64)
    intrinsics = torch.tensor([[40.0, 0.0, 32.0], [0.0, 40.0, 18.0], [0.0, 0.0, 1.0]])
    return torch.stack(poses)[None], intrinsics.expand(1, 6, 3, 3), image_hw


def preset_renderer(preset: str, inv_s: float, **overrides):
    from selfocc_ns import methods

    config = getattr(methods, preset.replace("-", "_")).config.pipeline.model.renderer
    renderer = dataclasses.replace(config, **overrides).setup().eval()
    with torch.no_grad():
        renderer.neus_alpha.variance.fill_(math.log(inv_s) / 10.0)
    return renderer


def render_both(renderer, grid, chunk_rays=None):
    cam2ego, intrinsics, image_hw = look_around_cameras()
    lattice = fixed_lattice_px(image_hw, image_hw).expand(1, 6, *image_hw, 2)
    faithful = renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego, chunk_rays, fast=False)
    fast = renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego, chunk_rays, fast=True)
    return faithful, fast


# ------------------------------------------------------------------ bounds


@pytest.mark.parametrize("inv_s", [3.0, 50.0, 2000.0])
@pytest.mark.parametrize("excess", [1e-7, 1e-4])
def test_max_half_section_is_where_alpha_reaches_floor_plus_excess(inv_s, excess):
    sdf = torch.linspace(-1.0, 12.0, 2001, dtype=torch.float64)
    half = max_half_section_m(sdf, inv_s, excess)
    target = alpha_floor() + excess
    ok = half >= 0
    assert ok.any() and not ok[sdf * inv_s < -12].any()  # deep inside solid alpha is ~1
    at_bound = neus_alpha_bound_torch(sdf[ok], half[ok], inv_s)
    torch.testing.assert_close(at_bound, torch.full_like(at_bound, target), rtol=1e-6, atol=1e-9)
    # any larger SDF or smaller half section stays below; where none exists even h = 0 is above
    assert (neus_alpha_bound_torch(sdf[ok] + 0.3, 0.9 * half[ok], inv_s) <= target).all()
    assert (neus_alpha_bound_torch(sdf[~ok], torch.zeros_like(sdf[~ok]), inv_s) > target - 1e-12).all()


def test_alpha_floor_is_the_neus_alpha_far_outside():
    big = torch.tensor([200.0], dtype=torch.float64)
    assert float(neus_alpha_bound_torch(big, big * 0, 50.0)) == pytest.approx(alpha_floor(), rel=1e-12)
    assert alpha_floor() == pytest.approx(1e-5 / (1 + 1e-5))


def test_corner_min_and_min_filter_match_max_pool():
    values = torch.randn(9, 7, 5)
    torch.testing.assert_close(corner_min(values), -F.max_pool3d(-values[None, None], 2, stride=1)[0, 0])
    for axis, radius in [(0, 2), (1, 1), (2, 3)]:
        kernel, padding = [1, 1, 1], [0, 0, 0]
        kernel[axis], padding[axis] = 2 * radius + 1, radius
        expected = -F.max_pool3d(-values[None, None], kernel, stride=1, padding=padding)[0, 0]
        torch.testing.assert_close(min_filter(values, radius, axis), expected)


def test_skip_subdivision_splits_cells_to_the_size_and_respects_the_cap():
    assert skip_subdivision((1.0, 1.0, 0.5333), (80, 80, 12), 0.5) == (2, 2, 2)
    assert skip_subdivision((0.3125, 0.3125, 0.2667), (256, 256, 24), 0.5) == (1, 1, 1)
    assert skip_subdivision((1.0, 1.0, 1.0), (100, 100, 100), 0.1, max_cells=10**7) == (2, 2, 2)


def test_skip_grid_bounds_every_trilinear_read():
    """Inside each sub-cell, the NeuS alpha of any read at an allowed interval length is within the excess."""
    grid = street_grid(0)
    inv_s, excess = 20.0, 1e-6
    skip = build_skip_grid(grid, inv_s, excess, cell_m=0.5)
    generator = torch.Generator().manual_seed(1)
    points = torch.rand(20000, 3, generator=generator) * torch.tensor([40.0, 40.0, 6.4]) + torch.tensor(RANGE[:3])
    from selfocc_ns.model.field_grid import query_field

    samples = query_field(grid, points[None], with_gradient=True)
    lo, hi = torch.tensor(skip.centre_lo_m), torch.tensor(skip.centre_hi_m)
    coords = ((points - lo) / (hi - lo) * 2 - 1).flip(-1)
    allowed = F.grid_sample(skip.max_delta_m, coords.view(1, -1, 1, 1, 3), mode="nearest", padding_mode="border",
                            align_corners=True).view(-1)
    direction = -F.normalize(samples.sdf_gradient[0], dim=-1)  # the worst direction: against the gradient
    delta = allowed.clamp_max(5.0)
    half = (-(direction * samples.sdf_gradient[0]).sum(-1)).clamp_min(0) * delta / 2
    alpha = neus_alpha_bound_torch(samples.sdf[0, :, 0].double(), half.double(), inv_s)
    assert (allowed > 0).float().mean() > 0.3  # the test covers skippable space
    assert (alpha[allowed > 0] <= alpha_floor() + excess + 1e-7).all()


def test_skip_run_tables_are_the_sums_of_a_loop():
    tables = SkipRunTables.build(10, 1e-4, torch.float64, "cpu")
    q = 1 - alpha_floor() + 1e-4
    transmittance, t0, delta = torch.tensor([0.7], dtype=torch.float64), torch.tensor([3.0]), torch.tensor([0.5])
    weight, distance = tables.run(torch.tensor([6]), transmittance, t0.double(), delta.double())
    loop_w = sum(alpha_floor() * 0.7 * q**i for i in range(6))
    loop_d = sum(alpha_floor() * 0.7 * q**i * (3.0 + 0.5 * i) for i in range(6))
    assert float(weight) == pytest.approx(loop_w, rel=1e-12) and float(distance) == pytest.approx(loop_d, rel=1e-12)
    assert float(tables.power[6]) == pytest.approx(q**6, rel=1e-12)


# ------------------------------------------------------------------ renders


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("inv_s", [2.718, 40.0, 1000.0])
def test_fast_render_reproduces_the_faithful_render_of_every_preset(preset, inv_s):
    """Same flags as each preset (tiny: midpoint read, exact transmittance, per-ray clip; official: start read,
    eps 1e-4 in the product, global clip over the chunk), from the untrained sharpness to a sharp one."""
    renderer = preset_renderer(preset, inv_s, num_samples=64 if preset == "selfocc-tiny" else 128)
    grid = street_grid(5)
    faithful, fast = render_both(renderer, grid, chunk_rays=5000)
    torch.testing.assert_close(fast.depth, faithful.depth, rtol=2e-4, atol=1e-4)
    torch.testing.assert_close(fast.accumulation, faithful.accumulation, rtol=1e-4, atol=1e-5)
    # skipped samples have no colour or class: at most S floor alphas (1 + eps)^S of the weight
    missing = renderer.config.num_samples * alpha_floor() * (1 + renderer.config.transmittance_eps) ** 128
    assert (fast.rgb - faithful.rgb).abs().max() <= missing
    assert (fast.semantics - faithful.semantics).abs().max() <= missing
    assert torch.equal(fast.hit, faithful.hit)
    assert fast.samples_evaluated.max() <= renderer.config.num_samples
    if inv_s >= 40.0:
        assert fast.samples_evaluated.mean() < 0.35 * renderer.config.num_samples


def test_global_depth_clip_follows_the_faithful_chunks():
    """The official clip is over each chunk of the faithful render: rays that miss the box pull a chunk's lower
    bound to near_m, so a chunk boundary changes the numbers; the fast path reproduces them for any chunking."""
    renderer = preset_renderer("selfocc", 40.0, num_samples=64)
    grid = street_grid(0)
    for chunk in (997, 100000):
        faithful, fast = render_both(renderer, grid, chunk_rays=chunk)
        torch.testing.assert_close(fast.depth, faithful.depth, rtol=2e-4, atol=1e-4)


def test_misses_and_interior_cameras_match():
    """A camera inside a solid (alpha ~1 from the first sample) and rays missing the box."""
    renderer = preset_renderer("selfocc-tiny", 40.0)
    grid = street_grid(0)
    cam2ego, intrinsics, image_hw = look_around_cameras(height_m=-0.5)  # under the ground
    outside = cam2ego.clone()
    outside[..., :3, 3] = torch.tensor([0.0, 0.0, 30.0])  # above the box, looking out: misses
    lattice = fixed_lattice_px(image_hw, (9, 16)).expand(1, 6, 9, 16, 2)
    for poses in (cam2ego, outside):
        faithful = renderer.render_cameras_chunked(grid, lattice, intrinsics, poses, fast=False)
        fast = renderer.render_cameras_chunked(grid, lattice, intrinsics, poses, fast=True)
        torch.testing.assert_close(fast.depth, faithful.depth, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.accumulation, faithful.accumulation, rtol=1e-4, atol=1e-5)


def test_fast_eval_is_the_default_and_training_stays_faithful(monkeypatch):
    renderer = preset_renderer("selfocc-tiny", 40.0)
    assert SelfOccRendererConfig().fast_eval
    calls = []
    original = fast_render.render_cameras_skipping
    monkeypatch.setattr(fast_render, "render_cameras_skipping", lambda *a, **k: calls.append(1) or original(*a, **k))
    grid = street_grid(0)
    cam2ego, intrinsics, image_hw = look_around_cameras()
    lattice = fixed_lattice_px(image_hw, (9, 16)).expand(1, 6, 9, 16, 2)
    renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego)
    assert calls == [1]
    renderer.config.fast_eval = False
    renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego)
    renderer.train()
    renderer.config.fast_eval = True
    renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego)
    assert calls == [1]
    with pytest.raises(ValueError, match="eval only"):
        original(renderer, grid, lattice, intrinsics, cam2ego, 1000)


@pytest.mark.parametrize("preset", ["selfocc-tiny", "selfocc"])
def test_read_mask_renders_only_its_rays_and_those_as_without_it(preset):
    """Rays outside the mask are NaN with 0 reads; the others equal the unmasked fast render (and so the faithful
    one), also under the official global clip over chunks, with chunks smaller than the masked rays."""
    renderer = preset_renderer(preset, 40.0, num_samples=64)
    grid = street_grid(5)
    cam2ego, intrinsics, image_hw = look_around_cameras()
    lattice = fixed_lattice_px(image_hw, image_hw).expand(1, 6, *image_hw, 2)
    mask = torch.rand(1, 6, *image_hw, generator=torch.Generator().manual_seed(3)) < 0.2
    whole = renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego, 997, fast=True)
    masked = renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego, 997, fast=True, read_mask=mask)
    for name in ("depth", "ray_distance", "accumulation", "rgb", "semantics"):
        ours, theirs = getattr(masked, name), getattr(whole, name)
        torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-6, atol=1e-6)
        assert torch.isnan(ours[~mask]).all()
    assert torch.equal(masked.hit, whole.hit)
    assert (masked.samples_evaluated[~mask] == 0).all()
    assert torch.equal(masked.samples_evaluated[mask], whole.samples_evaluated[mask])
    # the faithful reference ignores the mask (it renders every ray)
    faithful = renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego, 997, fast=False, read_mask=mask)
    assert not torch.isnan(faithful.depth).any()
    with pytest.raises(ValueError, match="does not match the lattice"):
        renderer.render_cameras_chunked(grid, lattice, intrinsics, cam2ego, fast=True, read_mask=mask[..., 1:])
