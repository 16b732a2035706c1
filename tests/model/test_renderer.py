"""Renderer: lattices, rays, box clipping, samples, NeuS alpha, nerfacc compositing, chunked eval."""

from __future__ import annotations

import math

import pytest
import torch

from selfocc_ns.model import compositing, rays
from selfocc_ns.model.compositing import (
    accumulate,
    accumulate_dense,
    accumulate_packed,
    composite_weights,
    composite_weights_dense,
    composite_weights_packed,
    packed_ray_indices,
)
from selfocc_ns.model.field import FieldGrid, SelfOccFieldConfig
from selfocc_ns.model.planes import SceneGrid, TPVPlanes, grid_points_m
from selfocc_ns.model.rays import (
    cellular_lattice_px,
    eval_lattice_hw,
    fixed_lattice_px,
    intersect_aabb,
    intersect_aabb_nerfacc,
    intersect_aabb_torch,
    project_points,
    rays_from_pixels,
    stratified_samples,
)
from selfocc_ns.model.renderer import NeuSAlpha, SelfOccRendererConfig

RANGE = (-20.0, -20.0, -4.0, 20.0, 20.0, 6.0)
GRID = (41, 41, 21)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="the nerfacc fast paths (packed scan, ray_aabb_intersect) need CUDA"
        ),
    ),
]
"""Fast paths are checked against their references on every device here; on CPU the dispatchers must
pick the reference (nerfacc's packed scan and ray-box kernel raise there)."""


def look_cam2ego(position, yaw_deg: float, pitch_down_deg: float) -> torch.Tensor:
    """OpenCV camera at `position` (ego metres) looking along yaw, tilted down by pitch."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_down_deg)
    forward = torch.tensor([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
    right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
    down = torch.linalg.cross(forward, right)
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, torch.tensor(position)
    return pose


def intrinsics(focal: float, image_hw) -> torch.Tensor:
    return torch.tensor([[focal, 0.0, image_hw[1] / 2], [0.0, focal, image_hw[0] / 2], [0.0, 0.0, 1.0]])


def plane_grid(normal=(0.0, 0.0, 1.0), offset_m: float = 0.0) -> FieldGrid:
    xs, ys, zs = grid_points_m(RANGE, GRID)
    p = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
    sdf = p @ torch.tensor(normal) - offset_m
    return FieldGrid(values=sdf[None, None], range_m=RANGE, rgb_channels=0, semantic_channels=0)


def renderer(num_samples=256, variance=0.3, **kw):
    r = SelfOccRendererConfig(num_samples=num_samples, variance_init=variance, **kw).setup()
    return r


# ------------------------------------------------------------------ lattices and rays


def test_fixed_lattice_is_half_resolution_pixel_centres():
    px = fixed_lattice_px((900, 1600), (450, 800))
    assert px.shape == (450, 800, 2)
    assert torch.equal(px[0, :3, 0], torch.tensor([1.0, 3.0, 5.0]))  # u = 2 j + 1
    assert torch.equal(px[:3, 0, 1], torch.tensor([1.0, 3.0, 5.0]))
    assert px[-1, -1].tolist() == [1599.0, 899.0]


@pytest.mark.parametrize("snap", [False, True])
def test_cellular_lattice_is_regular_inside_and_seeded(snap):
    image_hw, lattice_hw = (225, 400), (48, 100)
    a = cellular_lattice_px(image_hw, lattice_hw, torch.Generator().manual_seed(3), snap)
    b = cellular_lattice_px(image_hw, lattice_hw, torch.Generator().manual_seed(3), snap)
    c = cellular_lattice_px(image_hw, lattice_hw, torch.Generator().manual_seed(4), snap)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (48, 100, 2)
    for axis, (dim, size) in enumerate([(1, image_hw[1]), (0, image_hw[0])]):
        coords = a[..., axis].select(1 - dim, 0)
        steps = coords[1:] - coords[:-1]
        assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-4)  # one stride per axis
        assert 1.0 - 1e-5 <= steps[0] <= size / lattice_hw[1 - axis] + 1e-5
        assert coords.min() > 0 and coords.max() < size
        if snap:
            assert torch.all(coords - coords.floor() == 0.5)  # on pixel centres


def test_rays_and_projection_round_trip():
    image_hw = (60, 80)
    K = intrinsics(50.0, image_hw)
    pose = look_cam2ego((1.0, 2.0, 1.5), yaw_deg=30.0, pitch_down_deg=10.0)
    px = fixed_lattice_px(image_hw, (6, 8)).reshape(-1, 2)
    origins, dirs, z_per_distance = rays_from_pixels(px, K, pose)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(48))
    assert torch.allclose(origins, torch.tensor([1.0, 2.0, 1.5]).expand(48, 3))
    # principal point looks along the optical axis; off-axis cosines are < 1
    centre_origin, centre_dir, centre_cos = rays_from_pixels(torch.tensor([[40.0, 30.0]]), K, pose)
    assert torch.allclose(centre_dir[0], pose[:3, 2], atol=1e-6) and centre_cos.item() == pytest.approx(1.0)
    t = torch.linspace(1.0, 30.0, 48)[:, None]
    pixels, depth = project_points(origins + t * dirs, K, pose)
    assert torch.allclose(pixels, px, atol=1e-3)
    assert torch.allclose(depth, (t * z_per_distance)[:, 0], atol=1e-4)


def test_ray_box_intersection():
    origins = torch.tensor([[0.0, 0.0, 0.0], [-30.0, 0.0, 1.0], [-30.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    dirs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.6, 0.8]])
    near, far, hit = intersect_aabb(origins, dirs, RANGE, near_m=0.0)
    assert hit.tolist() == [True, True, False, True]
    assert near.tolist()[:2] == [0.0, 10.0] and far.tolist()[:2] == [20.0, 50.0]
    assert far[3].item() == pytest.approx(7.5)  # leaves through the top z = 6 at t = 6 / 0.8
    assert near[2] == far[2]


def test_stratified_samples_cover_the_interval():
    near, far = torch.tensor([0.0, 2.0]), torch.tensor([10.0, 3.0])
    t, delta = stratified_samples(near, far, 5, jitter=False)
    assert torch.allclose(t[0], torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0]))
    assert torch.allclose(delta.sum(-1), far - near)
    tj, dj = stratified_samples(near, far, 5, torch.Generator().manual_seed(0), jitter=True)
    tj2, _ = stratified_samples(near, far, 5, torch.Generator().manual_seed(0), jitter=True)
    assert torch.equal(tj, tj2) and not torch.allclose(tj, t)
    assert torch.all(dj >= 0) and torch.allclose(dj.sum(-1), far - near)
    assert torch.all(tj[:, 1:] > tj[:, :-1]) and torch.all(tj >= near[:, None]) and torch.all(tj <= far[:, None])


# ------------------------------------------------------------------ NeuS alpha and compositing


def test_neus_alpha_formula():
    neus = NeuSAlpha(0.1)
    s = math.exp(1.0)
    sdf = torch.tensor([[0.4, -0.1]])
    grad = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    delta = torch.tensor([[0.5, 0.5]])
    down, up = torch.tensor([[0.0, 0.6, -0.8]]), torch.tensor([[0.0, 0.6, 0.8]])
    alpha = neus(sdf, grad, down, delta)
    sig = torch.sigmoid
    prev, nxt = sig((sdf + 0.8 * 0.25) * s), sig((sdf - 0.8 * 0.25) * s)
    assert torch.allclose(alpha, ((prev - nxt + 1e-5) / (prev + 1e-5)).clip(0, 1))
    # leaving a surface (cos > 0) gives (almost) no opacity
    assert alpha.min() > 0.1 and neus(sdf, grad, up, delta)[0, 0] < 1e-4
    assert neus.inv_s().item() == pytest.approx(s)


def test_dense_compositing_matches_a_python_loop():
    g = torch.Generator().manual_seed(0)
    alphas = torch.rand(7, 11, generator=g) ** 3
    values = torch.rand(7, 11, 3, generator=g)
    weights = composite_weights(alphas)
    for r in range(7):
        transmittance = 1.0
        for i in range(11):
            assert weights[r, i].item() == pytest.approx(transmittance * alphas[r, i].item(), abs=1e-6)
            transmittance *= 1.0 - alphas[r, i].item()
    assert torch.allclose(accumulate(weights, values), (weights[..., None] * values).sum(1), atol=1e-6)
    assert torch.allclose(accumulate(weights)[:, 0], weights.sum(1))


def test_packed_ray_indices():
    assert packed_ray_indices(3, 2, "cpu").tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("device", DEVICES)
def test_compositing_on_each_device_matches_the_dense_reference(device):
    g = torch.Generator().manual_seed(0)
    alphas = (torch.rand(2, 64, 32, generator=g) ** 3).to(device)
    alphas[0, :5] = 0.0  # rays that miss the box have all-zero alphas
    values = torch.rand(2, 64, 32, 3, generator=g).to(device)
    packed = renderer()._packed(torch.device(device))  # what the renderer picks on this device ('auto')
    assert packed == (device == "cuda")
    reference = composite_weights_dense(alphas)
    weights = composite_weights(alphas, packed)
    assert torch.allclose(weights, reference, atol=1e-5)
    assert torch.allclose(accumulate(weights, values, packed), accumulate_dense(reference, values), atol=1e-5)
    assert torch.allclose(accumulate(weights, None, packed), accumulate_dense(reference), atol=1e-5)
    if device == "cuda":
        assert torch.allclose(composite_weights_packed(alphas), reference, atol=1e-5)
        assert torch.allclose(accumulate_packed(reference, values), accumulate_dense(reference, values), atol=1e-5)


def random_rays(count: int, device: str):
    """Unit rays from inside the box (they always hit) and from a shell around it (some miss)."""
    g = torch.Generator().manual_seed(1)
    lo, hi = torch.tensor(RANGE[:3]), torch.tensor(RANGE[3:])
    inside = lo + (hi - lo) * torch.rand(count // 2, 3, generator=g)
    around = lo + (hi - lo) * (3.0 * torch.rand(count - count // 2, 3, generator=g) - 1.0)
    directions = torch.nn.functional.normalize(torch.randn(count, 3, generator=g), dim=-1)
    return torch.cat([inside, around]).to(device), directions.to(device), count // 2


@pytest.mark.parametrize("near_m", [0.0, 5.0])
@pytest.mark.parametrize("device", DEVICES)
def test_ray_box_intersection_on_each_device_matches_the_torch_reference(device, near_m):
    origins, directions, num_inside = random_rays(512, device)
    near, far, hit = intersect_aabb_torch(origins, directions, RANGE, near_m)
    hit_from_zero = intersect_aabb_torch(origins, directions, RANGE, 0.0)[2]
    assert hit_from_zero[:num_inside].all() and not hit_from_zero[num_inside:].all()  # starting inside; misses
    if near_m > 0:
        assert (hit_from_zero & ~hit).any()  # the box part of some rays lies before near_m
    assert torch.all(near[~hit] == near_m) and torch.all(far[~hit] == near_m)
    fast = [intersect_aabb(origins, directions, RANGE, near_m)]
    if device == "cuda":
        fast.append(intersect_aabb_nerfacc(origins, directions, RANGE, near_m))
    for fast_near, fast_far, fast_hit in fast:
        assert torch.equal(fast_hit, hit)
        assert torch.allclose(fast_near, near, atol=1e-4) and torch.allclose(fast_far, far, atol=1e-4)


def test_dispatchers_use_the_references_on_cpu(monkeypatch):
    def fast_path(*args, **kwargs):
        raise AssertionError("a CUDA fast path ran on CPU")

    monkeypatch.setattr(rays, "intersect_aabb_nerfacc", fast_path)
    monkeypatch.setattr(compositing, "composite_weights_packed", fast_path)
    monkeypatch.setattr(compositing, "accumulate_packed", fast_path)
    origins, directions, _ = random_rays(64, "cpu")
    assert all(torch.equal(a, b) for a, b in zip(intersect_aabb(origins, directions, RANGE),
                                                  intersect_aabb_torch(origins, directions, RANGE)))
    out, *_ = render_plane(45.0)  # the whole camera render on CPU ('auto' compositing)
    assert out.accumulation.max() > 0.99


def render_plane(pitch_deg: float, training: bool = False, normal=(0.0, 0.0, 1.0)):
    image_hw, height = (60, 80), 1.5
    r = renderer()
    r.train(training)
    K = intrinsics(60.0, image_hw)[None, None]
    pose = look_cam2ego((0.0, 0.0, height), 0.0, pitch_deg)[None, None]
    px = fixed_lattice_px(image_hw, (6, 8))[None, None]
    out = r.render_cameras(plane_grid(normal), px, K, pose, torch.Generator().manual_seed(1))
    _, dirs, z_per_distance = rays_from_pixels(px.reshape(1, 1, -1, 2), K, pose)
    return out, dirs.reshape(6, 8, 3), z_per_distance.reshape(6, 8), height


@pytest.mark.parametrize("pitch_deg", [20.0, 45.0, 70.0, 90.0])
@pytest.mark.parametrize("training", [False, True])
def test_plane_sdf_renders_depth_at_the_plane(pitch_deg, training):
    out, dirs, z_per_distance, height = render_plane(pitch_deg, training)
    true_t = height / (-dirs[..., 2])
    hit_point = dirs * true_t[..., None]
    usable = (hit_point[..., :2].abs() < 15.0).all(-1)  # lands well inside the box
    assert usable.sum() >= 24
    rel = (out.ray_distance[0, 0, ..., 0] - true_t).abs() / true_t
    assert rel[usable].max().item() < 0.01
    assert out.accumulation[0, 0, ..., 0][usable].min().item() > 0.99
    assert torch.allclose(out.depth[0, 0, ..., 0], out.ray_distance[0, 0, ..., 0] * z_per_distance)
    if pitch_deg == 90.0:  # image plane parallel to the ground: z-depth is the height everywhere
        assert torch.allclose(out.depth[0, 0, ..., 0], torch.full((6, 8), height), rtol=0.01)


def test_tilted_plane_depth():
    normal = (0.2, 0.1, math.sqrt(1 - 0.05))
    out, dirs, _, height = render_plane(45.0, normal=normal)
    n = torch.tensor(normal)
    true_t = (0.0 - height * n[2]) / (dirs @ n)  # origin (0, 0, h), plane n.p = 0
    rel = (out.ray_distance[0, 0, ..., 0] - true_t).abs() / true_t
    assert rel.max().item() < 0.01


def test_chunked_eval_matches_one_shot_and_gradients_reach_variance_and_grid():
    torch.manual_seed(0)
    config = SelfOccFieldConfig(hidden_dim=8, sdf_prior="ground")
    field = config.setup(scene=SceneGrid(RANGE, (11, 11, 6)), feature_dim=4)
    planes = TPVPlanes(torch.randn(2, 4, 11, 11), torch.randn(2, 4, 11, 6), torch.randn(2, 4, 11, 6))
    grid = field.decode(planes)
    r = renderer(num_samples=32, variance=0.1)
    r.eval()
    K = intrinsics(30.0, (20, 30)).expand(2, 3, 3, 3)
    poses = torch.stack([look_cam2ego((0.0, 0.0, 1.5), yaw, 15.0) for yaw in (0.0, 120.0, 240.0)]).expand(2, 3, 4, 4)
    px = fixed_lattice_px((20, 30), eval_lattice_hw((20, 30), r.config.eval_lattice_fraction)).expand(2, 3, 10, 15, 2)
    with torch.no_grad():
        full = r.render_cameras(grid, px, K, poses, per_sample_outputs=False)
    chunked = r.render_cameras_chunked(grid, px, K, poses, chunk_rays=37)
    for name in ("depth", "accumulation", "rgb", "semantics", "ray_distance"):
        assert torch.allclose(getattr(full, name), getattr(chunked, name), atol=1e-5), name
    assert chunked.weights is None and chunked.depth.shape == (2, 3, 10, 15, 1)
    # training render: depth reaches the NeuS variance and the decoded grid
    r.train()
    grid = field.decode(planes)
    grid.values.retain_grad()
    out = r.render_cameras(grid, px, K, poses, torch.Generator().manual_seed(0))
    out.depth.mean().backward()
    assert r.neus_alpha.variance.grad.abs().item() > 0
    assert grid.values.grad[:, 0].abs().sum() > 0
    assert out.weights.shape == (2, 3, 10, 15, 32) and out.points_m.shape == (2, 3, 10, 15, 32, 3)
    assert torch.allclose(out.weights_normalised.sum(-1), torch.ones(2, 3, 10, 15), atol=1e-5)


def test_sharpness_floor_rises_log_linearly_is_saved_and_kept_at_eval():
    r = renderer(num_samples=32, variance=0.1, inv_s_floor_end=20.0, inv_s_floor_steps=100)
    assert "neus_alpha.inv_s_floor" in r.state_dict()
    assert "neus_alpha.inv_s_floor" not in renderer(variance=0.1).state_dict()  # off: the official keys only
    assert r.inv_s_floor(0) == pytest.approx(math.e) and r.inv_s_floor(100) == pytest.approx(20.0)
    assert r.inv_s_floor(50) == pytest.approx(math.sqrt(math.e * 20.0)) and r.inv_s_floor(500) == pytest.approx(20.0)
    origins = torch.tensor([[[0.0, 0.0, 1.5]]])
    directions = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0, -0.5]]]), dim=-1)
    r.train()
    out = r.render_rays(plane_grid(), origins, directions, generator=torch.Generator().manual_seed(0), step=50)
    assert float(r.neus_alpha.inv_s()) == pytest.approx(math.sqrt(math.e * 20.0), rel=1e-6)
    out.depth.sum().backward()
    assert float(r.neus_alpha.variance.grad) == 0.0  # the floor rules: the learned value gets no gradient
    r.eval()
    r.render_rays(plane_grid(), origins, directions)  # eval renders do not move the floor
    assert float(r.neus_alpha.inv_s()) == pytest.approx(math.sqrt(math.e * 20.0), rel=1e-6)
    loaded = renderer(num_samples=32, variance=0.1, inv_s_floor_end=20.0, inv_s_floor_steps=100)
    loaded.load_state_dict(r.state_dict())
    assert float(loaded.neus_alpha.inv_s()) == pytest.approx(math.sqrt(math.e * 20.0), rel=1e-6)
    with torch.no_grad():
        r.neus_alpha.variance.fill_(math.log(50.0) / 10.0)  # learned sharper than the floor: the learned value
    assert float(r.neus_alpha.inv_s()) == pytest.approx(50.0, rel=1e-5)
    with pytest.raises(ValueError, match="inv_s_floor_steps"):
        renderer(inv_s_floor_end=20.0, inv_s_floor_steps=0)
