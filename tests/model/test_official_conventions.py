"""Each official-convention flag computes the official formula (hand values), the presets named after official
configs set every one of them, and `selfocc-tiny` keeps this project's conventions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfocc_ns.model.compositing import composite_weights, composite_weights_dense, weights_torch
from selfocc_ns.model.field_grid import SH_C0, FieldGrid, activate_rgb, grid_gradient
from selfocc_ns.model.losses import edge_aware_smoothness
from selfocc_ns.model.planes import grid_points_m
from selfocc_ns.model.rays import cellular_lattice_px, interval_edges, sample_images_at_px
from selfocc_ns.model.renderer import NeuSAlpha, SelfOccRendererConfig, clip_ray_distance

RANGE = (-20.0, -20.0, -4.0, 20.0, 20.0, 6.0)
GRID = (41, 41, 21)


def test_per_ray_jitter_moves_every_edge_with_one_draw() -> None:
    """Official NeuSSampler (single jitter): b_0 = t / 2S, b_k = (k - 0.5 + t) / S, b_S = (S - 0.5 + t / 2) / S."""
    near, far, samples = torch.tensor([1.0, 2.0]), torch.tensor([5.0, 12.0]), 4
    edges = interval_edges(near, far, samples, torch.Generator().manual_seed(7), jitter=True, jitter_mode="per_ray")
    t = torch.rand(2, 1, generator=torch.Generator().manual_seed(7))[:, 0]
    for r in range(2):
        b = [t[r] / (2 * samples)] + [(k - 0.5 + t[r]) / samples for k in range(1, samples)]
        b.append((samples - 0.5 + 0.5 * t[r]) / samples)
        expected = near[r] + (far[r] - near[r]) * torch.stack(b)
        torch.testing.assert_close(edges[r], expected, atol=1e-6, rtol=0)
    fixed = interval_edges(near, far, samples, jitter=False, jitter_mode="per_ray")
    torch.testing.assert_close(fixed[0], torch.linspace(1.0, 5.0, samples + 1))


def test_transmittance_eps_is_inside_the_product() -> None:
    """w_i = a_i prod_{j<i} (1 - a_j + 1e-4), so the weights of a nearly empty ray sum to more than their alphas
    would give; eps 0 is nerfacc's exact transmittance."""
    alphas = torch.tensor([[0.0, 0.01, 0.3, 0.9, 0.5], [0.001] * 5])
    eps = 1e-4
    expected = torch.zeros_like(alphas)
    for r in range(alphas.shape[0]):
        transmittance = 1.0
        for i in range(alphas.shape[1]):
            expected[r, i] = alphas[r, i] * transmittance
            transmittance *= 1.0 - float(alphas[r, i]) + eps
    torch.testing.assert_close(composite_weights_dense(alphas, eps), expected, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(weights_torch(alphas, eps), expected, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(composite_weights(alphas, False, 0.0), weights_torch(alphas), atol=1e-7, rtol=1e-6)
    assert not torch.allclose(composite_weights(alphas, False, 0.0), expected, atol=1e-8, rtol=1e-7)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="packed scan needs CUDA"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_transmittance_eps_on_each_compositing_path_matches_the_torch_reference(device: str) -> None:
    alphas = (torch.rand(3, 16, 64, generator=torch.Generator().manual_seed(2)) ** 3).to(device)
    reference = weights_torch(alphas, 1e-4)
    torch.testing.assert_close(composite_weights(alphas, False, 1e-4), reference, atol=1e-6, rtol=1e-5)
    if device == "cuda":
        torch.testing.assert_close(composite_weights(alphas, True, 1e-4), reference, atol=1e-6, rtol=1e-5)


def test_depth_clip_per_ray_or_over_the_whole_call() -> None:
    """Official: the expected distance is clipped to [min, max] of all midpoints of the render call."""
    t_m = torch.tensor([[[1.0, 2.0, 3.0], [10.0, 11.0, 12.0]]])
    distance = torch.tensor([[[0.0], [20.0]]])  # a ray with no weight reads 0; one beyond its far end
    assert clip_ray_distance(distance, t_m, "per_ray").flatten().tolist() == [1.0, 12.0]
    assert clip_ray_distance(distance, t_m, "global").flatten().tolist() == [1.0, 12.0]
    distance = torch.tensor([[[5.0], [5.0]]])
    assert clip_ray_distance(distance, t_m, "per_ray").flatten().tolist() == [3.0, 10.0]
    assert clip_ray_distance(distance, t_m, "global").flatten().tolist() == [5.0, 5.0]


def test_cos_anneal_ratio_schedule_and_formula() -> None:
    """r = min(1, step / 5000) in training, 1 at eval; iter_cos = -(relu(0.5 - 0.5 cos) (1 - r) + relu(-cos) r)."""
    renderer = SelfOccRendererConfig(cos_anneal_steps=5000).setup().train()
    assert [renderer.cos_anneal_ratio(s) for s in (0, 1000, 5000, 9000, None)] == [0.0, 0.2, 1.0, 1.0, 1.0]
    assert renderer.eval().cos_anneal_ratio(1000) == 1.0
    assert SelfOccRendererConfig().setup().train().cos_anneal_ratio(10) == 1.0

    neus = NeuSAlpha(0.1)
    inv_s = math.exp(1.0)
    sdf = torch.tensor([[0.3, -0.2]])
    gradient = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    for cos, ratio in ((-0.6, 0.25), (0.8, 0.25), (-0.6, 1.0)):
        direction = torch.tensor([[0.0, math.sqrt(1 - cos**2), cos]])
        deltas = torch.tensor([[0.5, 0.5]])
        iter_cos = -(max(0.5 - 0.5 * cos, 0.0) * (1 - ratio) + max(-cos, 0.0) * ratio)
        sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        expected = []
        for value in sdf[0].tolist():
            prev, nxt = sig((value - iter_cos * 0.25) * inv_s), sig((value + iter_cos * 0.25) * inv_s)
            expected.append(min(max((prev - nxt + 1e-5) / (prev + 1e-5), 0.0), 1.0))
        got = neus(sdf, gradient, direction, deltas, cos_anneal_ratio=ratio)
        torch.testing.assert_close(got[0], torch.tensor(expected), atol=1e-6, rtol=1e-5)


def plane_grid(offset_m: float = 1.0) -> FieldGrid:
    xs, ys, zs = grid_points_m(RANGE, GRID)
    p = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
    return FieldGrid(values=(p[..., 2] - offset_m)[None, None], range_m=RANGE, rgb_channels=0, semantic_channels=0)


@pytest.mark.parametrize("read_at", ["midpoint", "start"])
def test_the_field_is_read_where_sdf_read_at_says(read_at: str) -> None:
    """Vertical ray from z = 5 down through the plane z = 1: the sampled SDF is z - 1 at the interval starts
    (official) or midpoints; depth always uses the midpoints."""
    renderer = SelfOccRendererConfig(num_samples=16, sdf_read_at=read_at, variance_init=0.3).setup().eval()
    origins, directions = torch.tensor([[[0.0, 0.0, 5.0]]]), torch.tensor([[[0.0, 0.0, -1.0]]])
    out = renderer.render_rays(plane_grid(), origins, directions)
    edges = torch.linspace(0.0, 9.0, 17)  # near 0 (inside the box), far at z = -4
    reads = edges[:-1] if read_at == "start" else 0.5 * (edges[1:] + edges[:-1])
    torch.testing.assert_close(out.sdf[0, 0], 5.0 - reads - 1.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.t_m[0, 0], 0.5 * (edges[1:] + edges[:-1]), atol=1e-5, rtol=0)


def test_cos_anneal_reaches_the_render_through_the_step() -> None:
    renderer = SelfOccRendererConfig(num_samples=16, cos_anneal_steps=5000, variance_init=0.3).setup().train()
    origins, directions = torch.tensor([[[0.0, 0.0, 5.0]]]), torch.tensor([[[0.6, 0.0, -0.8]]])

    def render(step):
        return renderer.render_rays(plane_grid(), origins, directions, generator=torch.Generator().manual_seed(0),
                                    step=step).weights

    assert torch.equal(render(5000), render(None))
    assert not torch.allclose(render(0), render(5000))


def test_replicate_half_boundary_is_the_official_padded_central_difference() -> None:
    """Official: ReplicationPad3d(1), then (s[i+1] - s[i-1]) / (2 spacing) everywhere (half the one-sided value
    on a face); one_sided keeps the exact slope of a linear field on the faces."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(1, 2, 5, 4, 3, generator=generator, dtype=torch.float64)
    spacing = (0.5, 2.0, 0.25)
    padded = F.pad(values, (1, 1, 1, 1, 1, 1), mode="replicate")
    expected = torch.stack([
        (padded[:, :, 2:, 1:-1, 1:-1] - padded[:, :, :-2, 1:-1, 1:-1]) / (2 * spacing[0]),
        (padded[:, :, 1:-1, 2:, 1:-1] - padded[:, :, 1:-1, :-2, 1:-1]) / (2 * spacing[1]),
        (padded[:, :, 1:-1, 1:-1, 2:] - padded[:, :, 1:-1, 1:-1, :-2]) / (2 * spacing[2]),
    ], dim=2)
    torch.testing.assert_close(grid_gradient(values, spacing, "replicate_half"), expected)
    linear = torch.arange(5, dtype=torch.float64)[None, None, :, None, None].expand(1, 1, 5, 4, 3) * 0.5
    assert grid_gradient(linear, spacing, "one_sided")[0, 0, 0].unique().tolist() == [1.0]
    assert grid_gradient(linear, spacing, "replicate_half")[0, 0, 0, [0, 2, 4], 0, 0].tolist() == [0.5, 1.0, 0.5]

    grid = plane_grid()
    official = FieldGrid(grid.values, grid.range_m, 0, 0, fd_boundary="replicate_half")
    assert official.sdf_gradient()[0, 2, 0, 0].tolist()[:2] == [0.5, 1.0]  # d/dz of z - 1: half on the bottom face
    assert official.select(0).fd_boundary == "replicate_half"


def test_sh0_colour_is_relu_of_c0_f_plus_half() -> None:
    raw = torch.tensor([0.0, -2.0, 0.5 / SH_C0, 3.0])
    expected = torch.tensor([0.5, 0.0, 1.0, 0.28209479177387814 * 3.0 + 0.5])
    torch.testing.assert_close(activate_rgb(raw, "sh0"), expected)
    with pytest.raises(ValueError, match="rgb_activation"):
        activate_rgb(raw, "softplus")  # type: ignore[arg-type]


def test_official_training_lattice_is_shared_and_starts_at_the_offset() -> None:
    """Official cellular sampler: stride s = 1 + U (W / w - 1), offset e = U (W - w s), u_k = e + k s (no half
    stride), one lattice for all cameras of a step."""
    image_hw, lattice_hw = (90, 160), (6, 10)
    renderer = SelfOccRendererConfig(train_lattice_hw=lattice_hw, train_lattice="official_shared").setup()
    lattices = renderer.train_lattices(2, 3, image_hw, torch.Generator().manual_seed(5))
    assert lattices.shape == (2, 3, 6, 10, 2)
    assert torch.equal(lattices[0, 0], lattices[0, 2]) and not torch.equal(lattices[0, 0], lattices[1, 0])
    noise = torch.rand(4, generator=torch.Generator().manual_seed(5))
    stride_u = 1 + float(noise[0]) * (160 / 10 - 1)
    offset_u = float(noise[1]) * (160 - 10 * stride_u)
    stride_v = 1 + float(noise[2]) * (90 / 6 - 1)
    offset_v = float(noise[3]) * (90 - 6 * stride_v)
    torch.testing.assert_close(lattices[0, 0, 0, :, 0], offset_u + torch.arange(10.0) * stride_u)
    torch.testing.assert_close(lattices[0, 0, :, 0, 1], offset_v + torch.arange(6.0) * stride_v)
    ours = cellular_lattice_px(image_hw, lattice_hw, torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours[0, :, 0], offset_u + (torch.arange(10.0) + 0.5) * stride_u)
    per_camera = SelfOccRendererConfig(train_lattice_hw=lattice_hw).setup().train_lattices(1, 2, image_hw)
    assert not torch.equal(per_camera[0, 0], per_camera[0, 1])


def test_official_image_read_is_align_corners_true() -> None:
    """Official losses read pixel u at index u (W - 1) / W; ours at u - 0.5 (pixel centres)."""
    width = 8
    ramp = torch.arange(width, dtype=torch.float32)[None, None, None, :].expand(1, 1, 3, width)  # value = column
    pixels = torch.tensor([[[0.0, 1.0], [4.0, 1.0], [6.5, 2.0], [8.0, 1.0]]])
    official = sample_images_at_px(ramp, pixels, "official")[0, :, 0]
    torch.testing.assert_close(official, pixels[0, :, 0] * (width - 1) / width)
    centre = sample_images_at_px(ramp, pixels, "pixel_centre")[0, :, 0]
    torch.testing.assert_close(centre, (pixels[0, :, 0] - 0.5).clamp(0, width - 1))


def test_depth_smoothness_normalises_by_mean_depth_plus_1e_6() -> None:
    depth = torch.tensor([[1.0, 3.0], [1.0, 3.0]], dtype=torch.float64)[None, None]
    image = torch.zeros(1, 1, 2, 2, 3, dtype=torch.float64)
    assert edge_aware_smoothness(depth, image, of="depth").item() == pytest.approx(2.0 / (2.0 + 1e-6), rel=1e-12)
    disparity = torch.tensor([1.0, 1.0 / 3.0], dtype=torch.float64)
    expected = float((disparity[0] - disparity[1]) / (disparity.mean() + 1e-7))
    assert edge_aware_smoothness(depth, image, of="disparity").item() == pytest.approx(expected, rel=1e-12)


OFFICIAL_VALUES = {
    ("encoder", "self_attn_reference"): "official",
    ("encoder", "pe_layout"): "interleaved",
    ("encoder", "image_visibility"): "official",
    ("field", "rgb_activation"): "sh0",
    ("field", "fd_boundary"): "replicate_half",
    ("renderer", "sdf_read_at"): "start",
    ("renderer", "jitter"): "per_ray",
    ("renderer", "transmittance_eps"): 1e-4,
    ("renderer", "depth_clip"): "global",
    ("renderer", "cos_anneal_steps"): 5000,
    ("renderer", "train_lattice"): "official_shared",
    (None, "image_read"): "official",
    (None, "smoothness_of"): "depth",
}


def _value(model, group, name):
    return getattr(model if group is None else getattr(model, group), name)


@pytest.mark.parametrize("preset", ["nuscenes_occ", "nuscenes_depth", "nuscenes_novel_depth", "tiny"])
def test_official_presets_set_every_official_convention_and_tiny_keeps_ours(preset: str) -> None:
    import importlib

    from selfocc_ns.model.selfocc import SelfOccModelConfig

    model = importlib.import_module(f"selfocc_ns.configs.{preset}").trainer_config().pipeline.model
    defaults = SelfOccModelConfig()
    for (group, name), official_value in OFFICIAL_VALUES.items():
        default = _value(defaults, group, name)
        assert default != official_value, f"{name}: the default is this project's convention"
        if preset == "tiny":
            assert _value(model, group, name) != official_value, (preset, group, name)
        else:
            assert _value(model, group, name) == official_value, (preset, group, name)


NOT_OFFICIAL_OFF = {
    (None, "sky_free_loss_weight"): 0.0,
    (None, "sky_free_rgb"): False,
    (None, "free_space_loss_weight"): 0.0,
    (None, "flat_normal_loss_weight"): 0.0,
    (None, "flat_ground_loss_weight"): 0.0,
    (None, "ego_ground_loss_weight"): 0.0,
    (None, "semantic_given_hit"): False,
    ("field", "sdf_prior"): "none",
    ("renderer", "inv_s_floor_end"): 0.0,
}
"""README "Beyond the paper": what is not in the official code, at its off value."""


@pytest.mark.parametrize("preset", ["nuscenes_occ", "nuscenes_depth", "nuscenes_novel_depth"])
def test_official_presets_keep_every_not_official_flag_off(preset: str) -> None:
    import importlib

    model = importlib.import_module(f"selfocc_ns.configs.{preset}").trainer_config().pipeline.model
    for (group, name), off in NOT_OFFICIAL_OFF.items():
        assert _value(model, group, name) == off, (preset, group, name)
