"""Field: decoding, trilinear queries, finite-difference derivatives, geometric prior, nerfstudio interface."""

from __future__ import annotations

import math

import pytest
import torch

from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.base_field import Field
from selfocc_ns.model.field import (
    FieldGrid,
    SelfOccFieldConfig,
    grid_spacing_m,
    ground_shell_sdf,
    query_field,
    sample_grid,
    sdf_gradient_grid,
    sdf_hessian_grid,
)
from selfocc_ns.model.losses import eikonal_loss, hessian_loss
from selfocc_ns.model.planes import SceneGrid, TPVPlanes, grid_points_m

RANGE = (-4.0, -3.0, -1.0, 4.0, 5.0, 2.0)  # deliberately different extents per axis
GRID = (9, 17, 7)  # and different counts, so any axis mix-up shows


def grid_points(range_m=RANGE, grid_xyz=GRID) -> torch.Tensor:
    xs, ys, zs = grid_points_m(range_m, grid_xyz)
    return torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)  # X Y Z 3


def random_points(n: int, range_m=RANGE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(range_m[:3]), torch.tensor(range_m[3:])
    return lo + (hi - lo) * torch.rand(n, 3, generator=g)


def sdf_only_grid(sdf_xyz: torch.Tensor, range_m=RANGE) -> FieldGrid:
    return FieldGrid(values=sdf_xyz[None, None].double(), range_m=range_m, rgb_channels=0, semantic_channels=0)


def test_trilinear_query_of_a_linear_function_is_exact():
    p = grid_points().double()
    coeffs = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)
    values = (p @ coeffs + 0.5)[None, None]
    points = random_points(500)[None].double()
    got = sample_grid(values, points, RANGE)[0, :, 0]
    assert torch.allclose(got, points[0] @ coeffs + 0.5, atol=1e-6)


def test_axis_order_single_hot_voxel():
    values = torch.zeros(1, 1, *GRID)
    i, j, k = 2, 11, 5
    values[0, 0, i, j, k] = 1.0
    p = grid_points()
    hot = p[i, j, k]
    # neighbours along each axis, and the transposed index, must read 0
    others = torch.stack([p[i + 1, j, k], p[i, j + 1, k], p[i, j, k - 1], p[k, j, i]])
    got = sample_grid(values, torch.cat([hot[None], others])[None], RANGE)[0, :, 0]
    assert got[0].item() == pytest.approx(1.0)
    assert torch.all(got[1:] == 0)
    # half way to the next x point reads one half
    halfway = hot + torch.tensor([0.5 * grid_spacing_m(RANGE, GRID)[0], 0.0, 0.0])
    assert sample_grid(values, halfway[None, None], RANGE)[0, 0, 0].item() == pytest.approx(0.5)


def test_plane_gradient_is_exact_and_its_eikonal_and_hessian_vanish():
    normal = torch.tensor([0.3, -0.4, math.sqrt(1 - 0.25)], dtype=torch.float64)
    sdf = grid_points().double() @ normal - 0.2
    grid = sdf_only_grid(sdf)
    gradient = grid.sdf_gradient()
    assert torch.allclose(gradient[0].permute(1, 2, 3, 0), normal.expand(*GRID, 3), atol=1e-12)  # faces too
    assert eikonal_loss(grid_gradients=gradient).item() < 1e-20
    assert hessian_loss(grid.sdf_hessian()).item() < 1e-12


def test_sphere_gradient_has_unit_norm_and_nonzero_hessian():
    range_m, grid_xyz = (-8.0, -8.0, -4.0, 8.0, 8.0, 4.0), (65, 65, 33)
    centre, radius = torch.tensor([1.0, -2.0, -20.0], dtype=torch.float64), 12.0  # centre outside the grid
    p = grid_points(range_m, grid_xyz).double()
    sdf = torch.linalg.vector_norm(p - centre, dim=-1) - radius
    grid = sdf_only_grid(sdf, range_m)
    gradient = grid.sdf_gradient()
    assert eikonal_loss(grid_gradients=gradient).item() < 1e-6
    hess = grid.sdf_hessian()
    # |H| of a sphere at distance r: (I - n n^T) / r, entries ~ 1/20 here; the plane gave < 1e-12
    assert hessian_loss(hess).item() > 5e-3
    mid = (32, 32, 16)
    r = torch.linalg.vector_norm(p[mid] - centre)
    n = (p[mid] - centre) / r
    expected = (torch.eye(3, dtype=torch.float64) - torch.outer(n, n)) / r
    assert torch.allclose(hess[0, :, :, mid[0], mid[1], mid[2]], expected, atol=2e-3)
    # trilinear read of the gradient grid at off-grid points matches the analytic normal
    pts = random_points(200, (-6.0, -6.0, -3.0, 6.0, 6.0, 3.0), seed=1)[None].double()
    samples = query_field(grid, pts, with_gradient=True)
    analytic = (pts - centre) / torch.linalg.vector_norm(pts - centre, dim=-1, keepdim=True)
    assert (samples.sdf_gradient - analytic).abs().max().item() < 2e-3


def test_hessian_is_finite_difference_of_gradient_grid():
    sdf = grid_points().double().pow(2).sum(-1)[None, None]  # |p|^2: H = 2 I
    spacing = grid_spacing_m(RANGE, GRID)
    hess = sdf_hessian_grid(sdf_gradient_grid(sdf, spacing), spacing)
    inner = hess[0, :, :, 2:-2, 2:-2, 2:-2]
    assert torch.allclose(inner, (2 * torch.eye(3, dtype=torch.float64))[:, :, None, None, None].expand_as(inner))


def small_config(**overrides) -> SelfOccFieldConfig:
    base = dict(hidden_dim=8, num_semantic_classes=18)
    base.update(overrides)
    return SelfOccFieldConfig(**base)


FEATURE_DIM = 8


def build(config: SelfOccFieldConfig, scene: SceneGrid = SceneGrid(RANGE, GRID), bev: bool = False) -> SelfOccField:
    return config.setup(scene=scene, feature_dim=FEATURE_DIM, bev=bev)


def random_planes(field: SelfOccField, batch: int = 2, seed: int = 0) -> TPVPlanes:
    g = torch.Generator().manual_seed(seed)
    c, (x, y, z) = FEATURE_DIM, field.scene.grid_xyz
    xy = torch.randn(batch, c, x, y, generator=g, requires_grad=True)
    if field.bev:
        return TPVPlanes(xy)
    return TPVPlanes(xy, torch.randn(batch, c, x, z, generator=g, requires_grad=True),
                     torch.randn(batch, c, y, z, generator=g, requires_grad=True))


def test_decode_matches_per_voxel_mlp_and_chunking():
    torch.manual_seed(0)
    field = build(small_config(decode_chunk_x=100))
    assert isinstance(field, Field)
    planes = random_planes(field)
    grid = field.decode(planes)
    assert grid.values.shape == (2, 1 + 3 + 18, *GRID)
    b, i, j, k = 1, 3, 12, 4
    feature = planes.xy[b, :, i, j] + planes.xz[b, :, i, k] + planes.yz[b, :, j, k]
    assert torch.allclose(grid.values[b, :, i, j, k], field.decoder(feature), atol=1e-6)
    # chunked and checkpointed decoding give the same values and gradients
    loss_full = grid.values.square().mean()
    (grad_full,) = torch.autograd.grad(loss_full, planes.xz)
    for chunk, ckpt in [(2, False), (4, True)]:
        field.config.decode_chunk_x, field.config.checkpoint_decoder = chunk, ckpt
        values = field.decode(planes).values
        assert torch.allclose(values, grid.values, atol=1e-6)
        (grad,) = torch.autograd.grad(values.square().mean(), planes.xz)
        assert torch.allclose(grad, grad_full, atol=1e-7)


def test_heads_are_optional_and_rgb_activation_applies():
    field = build(small_config(use_rgb=False, num_semantic_classes=0))
    grid = field.decode(random_planes(field, batch=1))
    assert grid.values.shape[1] == 1
    samples = query_field(grid, random_points(10)[None])
    assert samples.rgb is None and samples.semantic_logits is None
    for act in ("relu", "sigmoid"):
        field = build(small_config(rgb_activation=act))
        grid = field.decode(random_planes(field, batch=1))
        raw = sample_grid(grid.values, random_points(50)[None], RANGE)[..., 1:4]
        expected = torch.relu(raw) if act == "relu" else torch.sigmoid(raw)
        assert torch.allclose(query_field(grid, random_points(50)[None]).rgb, expected)


@pytest.mark.parametrize("prior", ["ground", "ground_shell"])
def test_prior_makes_untrained_field_zero_level_set_the_prior(prior):
    range_m, grid_xyz = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), (33, 33, 9)
    field = build(small_config(sdf_prior=prior, ground_z_m=0.0, shell_radius_m=25.0), SceneGrid(range_m, grid_xyz))
    planes = random_planes(field)
    grid = field.decode(planes)
    p = grid_points(range_m, grid_xyz)
    expected = p[..., 2] if prior == "ground" else ground_shell_sdf(p, 0.0, 25.0)
    assert torch.allclose(grid.sdf[:, 0], expected.expand(2, *grid_xyz), atol=1e-5)
    # points on the ground plane (inside the shell) read 0, above it positive, below negative
    on_ground = torch.tensor([[3.3, -7.1, 0.0], [12.0, 5.0, 0.0], [0.0, 0.0, 0.0]])
    sdf = query_field(grid, on_ground.expand(2, 3, 3)).sdf[..., 0]
    assert sdf.abs().max().item() < 1e-5
    above = query_field(grid, torch.tensor([[[1.0, 2.0, 1.5]]]).expand(2, 1, 3)).sdf
    assert torch.all(above > 1.0)
    if prior == "ground_shell":
        # the wall: 0 at radius 25 m; (25, 0) lies on grid points in x and y (trilinear reads of the
        # min() are exact only there), and along z the SDF is 0 on both neighbours
        wall = torch.tensor([[[25.0, 0.0, 2.6]]]).expand(2, 1, 3)
        assert query_field(grid, wall).sdf.abs().max().item() < 1e-5
        outside = torch.tensor([[[35.0, 0.0, 2.6]]]).expand(2, 1, 3)
        assert torch.all(query_field(grid, outside).sdf < -5.0)
    # the residual still learns: the SDF row gets a gradient
    grid.sdf.sum().backward()
    assert field.decoder[-1].weight.grad[0].abs().sum() > 0


def test_free_prior_starts_empty_everywhere_and_still_learns():
    range_m, grid_xyz = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), (33, 33, 9)
    field = build(small_config(sdf_prior="free", free_sdf_m=1.5), SceneGrid(range_m, grid_xyz))
    grid = field.decode(random_planes(field))
    assert torch.allclose(grid.sdf, torch.full_like(grid.sdf, 1.5), atol=1e-6)  # free space, no surface anywhere
    assert grid.sdf_gradient().abs().max().item() < 1e-5
    grid.sdf.sum().backward()
    assert field.decoder[-1].weight.grad[0].abs().sum() > 0


def test_bev_uses_learnable_z_embedding():
    field = build(small_config(), bev=True)
    planes = random_planes(field)
    grid = field.decode(planes)
    assert not torch.allclose(grid.values[..., 0], grid.values[..., 1])  # heights differ
    grid.values.sum().backward()
    assert field.z_embedding.grad is not None and field.z_embedding.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        field.decode(random_planes(build(small_config())))  # TPV planes into a BEV field


def test_nerfstudio_field_interface_matches_fast_path():
    field = build(small_config())
    grid = field.decode(random_planes(field))
    field.set_grid(grid, sample_index=1, inv_s=5.0)
    origins = random_points(12, seed=3).reshape(4, 3, 3) * 0.5
    directions = torch.nn.functional.normalize(torch.randn(4, 3, 3), dim=-1)
    starts = torch.rand(4, 3, 1)
    samples = RaySamples(frustums=Frustums(origins=origins, directions=directions, starts=starts, ends=starts + 0.2,
                                           pixel_area=torch.ones(4, 3, 1)))
    outputs = field(samples, compute_normals=True)  # normals come from the FD gradient, not autograd
    positions = samples.frustums.get_positions().reshape(1, -1, 3)
    fast = query_field(grid.select(1), positions, with_gradient=True)
    assert torch.allclose(outputs[FieldHeadNames.SDF].reshape(-1), fast.sdf.reshape(-1))
    assert outputs[FieldHeadNames.RGB].shape == (4, 3, 3)
    assert outputs[FieldHeadNames.SEMANTICS].shape == (4, 3, 18)
    assert torch.allclose(outputs[FieldHeadNames.GRADIENT].reshape(-1, 3), fast.sdf_gradient[0])
    assert torch.allclose(outputs[FieldHeadNames.NORMALS].norm(dim=-1), torch.ones(4, 3))
    expected_density = 5.0 * torch.sigmoid(-5.0 * fast.sdf.reshape(4, 3, 1))
    assert torch.allclose(outputs[FieldHeadNames.DENSITY], expected_density)


def test_lattice_read_equals_grid_sample_and_refuses_rotated_lattices():
    """`sample_grid_lattice` (three matrix products) is the trilinear `sample_grid` read at every lattice point,
    with the border clamp beyond the range, for a lattice whose axes are permuted and flipped by the frame change;
    a lattice rotated by 30 deg is not axis-aligned (None: the caller reads point by point)."""
    from selfocc_ns.model.field_grid import lattice_axes, sample_grid, sample_grid_lattice

    range_m = (-4.0, -3.0, -1.0, 4.0, 3.0, 2.0)
    values = torch.randn(1, 5, 9, 7, 4, generator=torch.Generator().manual_seed(0))
    axes_m = [torch.linspace(-5.0, 5.0, 23), torch.linspace(-3.5, 2.0, 11), torch.linspace(-1.2, 2.5, 6)]
    ego = torch.stack(torch.meshgrid(*axes_m, indexing="ij"), dim=-1)  # 23 11 6 3
    swap = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    for rotation, shift in ((torch.eye(3), torch.zeros(3)), (swap, torch.tensor([0.3, -0.2, 0.1]))):
        points = ego @ rotation.T + shift
        axes = lattice_axes(points)
        assert axes is not None
        lattice = sample_grid_lattice(values[0], axes, range_m)
        reference = sample_grid(values, points.reshape(1, -1, 3), range_m).reshape(*points.shape[:3], 5)
        assert lattice.shape == reference.shape
        torch.testing.assert_close(lattice, reference, atol=1e-5, rtol=1e-5)
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    assert lattice_axes(ego @ torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).T) is None
