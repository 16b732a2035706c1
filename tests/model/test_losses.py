"""Losses on inputs with known answers, and gradient flow from each loss to what it should reach."""

from __future__ import annotations

import math

import pytest
import torch

from selfocc_ns.model.field import FieldGrid, SelfOccFieldConfig
from selfocc_ns.model.losses import (
    ego_ground_loss,
    flat_ground_points,
    edge_aware_smoothness,
    eikonal_loss,
    flat_normal_loss,
    free_space_loss,
    hessian_loss,
    reprojection_loss,
    rgb_loss,
    semantic_ce_loss,
    semantic_ray_scores,
    sky_free_space_loss,
    soft_sparsity_loss,
    ssim,
)
from selfocc_ns.model.planes import SceneGrid, TPVPlanes, grid_points_m
from selfocc_ns.model.rays import fixed_lattice_px, lattice_colours, lattice_labels, rays_from_pixels
from selfocc_ns.model.renderer import SelfOccRendererConfig

IMAGE_HW = (60, 80)
HEIGHT_M = 1.5


def look_cam2ego(position, yaw_deg: float, pitch_down_deg: float) -> torch.Tensor:
    """OpenCV camera at `position` (ego metres) looking along yaw, tilted down by pitch."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_down_deg)
    forward = torch.tensor([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
    right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
    pose = torch.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, torch.linalg.cross(forward, right), forward
    pose[:3, 3] = torch.tensor(position)
    return pose


K = torch.tensor([[50.0, 0.0, 40.0], [0.0, 50.0, 30.0], [0.0, 0.0, 1.0]])


def ground_texture(points: torch.Tensor) -> torch.Tensor:
    """Smooth RGB texture of the ground plane z = 0 (wavelengths ~1-3 m)."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack(
        [
            0.5 + 0.3 * torch.sin(3.1 * x + 0.3) * torch.cos(2.3 * y),
            0.5 + 0.3 * torch.sin(2.0 * x - 2.7 * y + 1.0),
            0.5 + 0.2 * torch.cos(4.0 * x + 1.1 * y),
        ],
        dim=-1,
    )


def ray_cast_image(pose: torch.Tensor) -> torch.Tensor:
    """Render the textured ground by ray-casting every pixel centre: [3, H, W]."""
    px = fixed_lattice_px(IMAGE_HW, IMAGE_HW).reshape(-1, 2)
    origins, dirs, _ = rays_from_pixels(px, K, pose)
    t = -origins[:, 2] / dirs[:, 2]
    assert torch.all(t > 0), "every pixel must see the ground"
    colour = ground_texture(origins + t[:, None] * dirs)
    return colour.reshape(*IMAGE_HW, 3).permute(2, 0, 1)


@pytest.fixture(scope="module")
def planar_scene():
    target_pose = look_cam2ego((0.0, 0.0, HEIGHT_M), 0.0, 40.0)
    source_poses = [look_cam2ego((-0.6, 0.1, HEIGHT_M), 0.0, 40.0), look_cam2ego((0.6, -0.1, HEIGHT_M), 2.0, 38.0)]
    target = ray_cast_image(target_pose)
    sources = torch.stack([ray_cast_image(p) for p in source_poses])  # V 3 H W
    lattice = fixed_lattice_px(IMAGE_HW, IMAGE_HW)  # every pixel centre
    origins, dirs, _ = rays_from_pixels(lattice.reshape(-1, 2), K, target_pose)
    true_t = -origins[:, 2] / dirs[:, 2]
    return dict(
        target_pose=target_pose,
        source_poses=torch.stack(source_poses),
        target_image=target,
        source_images=sources,
        lattice=lattice,
        origins=origins,
        dirs=dirs,
        true_t=true_t,
    )


def reproject(scene, depth_scales=(0.6, 1.0, 1.6), hot: int = 1, source_images=None, source_poses=None, **kw):
    """Reprojection loss with samples at scaled true depths and all weight on sample `hot`."""
    h, w = IMAGE_HW
    scales = torch.tensor(depth_scales)
    t = scene["true_t"][:, None] * scales  # R S
    points = scene["origins"][:, None] + scene["dirs"][:, None] * t[..., None]
    weights = torch.zeros(h * w, len(depth_scales))
    weights[:, hot] = 1.0
    weights.requires_grad_(True)
    src = scene["source_images"] if source_images is None else source_images
    poses = scene["source_poses"] if source_poses is None else source_poses
    target_rgb = lattice_colours(scene["target_image"][None, None], scene["lattice"][None, None])
    loss, diag = reprojection_loss(
        points.reshape(1, 1, h, w, -1, 3),
        weights.reshape(1, 1, h, w, -1),
        target_rgb,
        scene["lattice"][None, None],
        src[None, :, None],
        K.expand(1, 2, 1, 3, 3),
        poses[None, :, None],
        **kw,
    )
    return loss, diag, weights


def test_reprojection_true_depth_beats_wrong_depth_by_10x(planar_scene):
    true_loss, diag, _ = reproject(planar_scene, hot=1, automask=False)
    near_loss, _, _ = reproject(planar_scene, hot=0, automask=False)
    far_loss, _, _ = reproject(planar_scene, hot=2, automask=False)
    assert diag["no_source_fraction"].item() == 0.0
    assert true_loss.item() < 0.01
    assert near_loss.item() > 10 * true_loss.item() and far_loss.item() > 10 * true_loss.item()
    # with auto-masking on, the true depth still wins over the identity (unwarped) error almost everywhere
    masked_loss, masked_diag, _ = reproject(planar_scene, hot=1, automask=True)
    assert masked_loss.item() <= true_loss.item() and masked_diag["automasked_fraction"].item() < 0.1


def test_reprojection_l1_gradient_prefers_true_depth(planar_scene):
    # weight spread evenly over three depths: the per-sample (L1) part of the loss pulls weight towards
    # the true depth, i.e. its gradient wrt the weights is lowest there
    h, w = IMAGE_HW
    scales = torch.tensor([0.6, 1.0, 1.6])
    points_t = planar_scene["true_t"][:, None] * scales
    even = torch.full((h * w, 3), 1.0 / 3, requires_grad=True)
    points = planar_scene["origins"][:, None] + planar_scene["dirs"][:, None] * points_t[..., None]
    target_rgb = lattice_colours(planar_scene["target_image"][None, None], planar_scene["lattice"][None, None])
    loss, _ = reprojection_loss(points.reshape(1, 1, h, w, 3, 3), even.reshape(1, 1, h, w, 3), target_rgb,
                                planar_scene["lattice"][None, None], planar_scene["source_images"][None, :, None],
                                K.expand(1, 2, 1, 3, 3), planar_scene["source_poses"][None, :, None], automask=False,
                                ssim_weight=0.0)
    loss.backward()
    best = even.grad.argmin(-1)
    assert (best == 1).float().mean().item() > 0.9


def test_automask_picks_identity_when_source_equals_target(planar_scene):
    same = planar_scene["target_image"].expand(2, 3, *IMAGE_HW)
    loss, diag, _ = reproject(planar_scene, hot=1, source_images=same, automask=True)
    assert loss.item() < 1e-6  # identity error is exactly zero
    assert diag["automasked_fraction"].item() > 0.95


def test_rays_outside_both_sources_get_1e3_before_the_min(planar_scene):
    backwards = torch.stack([look_cam2ego((-0.6, 0.0, HEIGHT_M), 180.0, 40.0)] * 2)
    loss, diag, _ = reproject(planar_scene, source_poses=backwards, automask=False)
    assert diag["no_source_fraction"].item() == 1.0
    assert loss.item() == pytest.approx(1e3)
    masked, _, _ = reproject(planar_scene, source_poses=backwards, automask=True)
    # with the mask the min falls to the identity error of the (unwarped) sources
    identity, _, _ = reproject(planar_scene, source_poses=backwards, automask=True, no_source_loss=1e9)
    assert masked.item() < 1.0 and masked.item() == pytest.approx(identity.item())


def test_ssim_and_rgb_loss_of_identical_images_are_zero():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 12, 16, generator=g)
    assert ssim(image, image).abs().max().item() < 1e-6
    assert ssim(image, torch.rand(2, 3, 12, 16, generator=g)).mean().item() > 0.1
    lattice = torch.rand(1, 2, 6, 8, 3, generator=g)
    assert rgb_loss(lattice, lattice).item() < 1e-6
    # pure L1 part: a constant offset leaves SSIM's structure term but shifts the means
    assert rgb_loss(lattice, lattice + 0.1).item() > 0.15 * 0.1 - 1e-6


def test_smoothness_known_values():
    image = torch.full((1, 1, 4, 4, 3), 0.5)
    assert edge_aware_smoothness(torch.full((1, 1, 4, 4), 7.0), image).item() == pytest.approx(0.0, abs=1e-7)
    step = torch.ones(1, 1, 4, 4)
    step[..., 2:] = 2.0  # disparity 1 | 0.5, mean 0.75 -> 4/3 | 2/3: one jump of 2/3 in 12 x-neighbours
    assert edge_aware_smoothness(step, image).item() == pytest.approx(2 / 9, rel=1e-5)
    edge_image = image.clone()
    edge_image[..., 2:, :] = 1.5  # image edge at the same place: |dI| = 1 -> weight exp(-1)
    assert edge_aware_smoothness(step, edge_image).item() == pytest.approx(2 / 9 * math.exp(-1), rel=1e-5)
    # depth variant: depth 1 | 2, mean 1.5 -> 2/3 | 4/3, same jump
    assert edge_aware_smoothness(step, image, of="depth").item() == pytest.approx(2 / 9, rel=1e-5)


def test_semantic_ce_known_value_and_ignore():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5], [0.3, 0.3, 0.4]]).reshape(1, 1, 1, 3, 3)
    labels = torch.tensor([0, 0, 255]).reshape(1, 1, 1, 3)
    expected = (-math.log(0.7) - math.log(1e-6)) / 2
    assert semantic_ce_loss(p, labels).item() == pytest.approx(expected, rel=1e-5)
    assert semantic_ce_loss(p, torch.full_like(labels, 255)).item() == 0.0
    # labels are read at lattice points by nearest pixel
    label_map = torch.arange(12).reshape(1, 1, 3, 4)
    px = torch.tensor([[[[[0.5, 0.5], [3.9, 2.2]]]]])
    assert lattice_labels(label_map, px).tolist() == [[[[0, 11]]]]


def test_semantic_ce_given_hit_scores_the_class_mix_and_asks_nothing_of_the_opacity():
    mix = torch.tensor([0.7, 0.2, 0.1])
    labels = torch.zeros(1, 1, 1, 2, dtype=torch.long)
    opacity = torch.tensor([0.5, 0.05], requires_grad=True)  # one half-opaque ray, one nearly transparent
    p = (opacity[:, None] * mix).reshape(1, 1, 1, 2, 3)
    official = semantic_ce_loss(p, labels)
    assert official.item() == pytest.approx(-(math.log(0.35) + math.log(0.035)) / 2, rel=1e-5)
    given_hit = semantic_ce_loss(p, labels, given_hit=True)
    assert given_hit.item() == pytest.approx(-math.log(0.7), rel=1e-5)  # the same for both rays
    (grad_official,) = torch.autograd.grad(official, opacity, retain_graph=True)
    (grad_given_hit,) = torch.autograd.grad(given_hit, opacity)
    assert (grad_official < 0).all()  # officially: more opacity, lower loss
    assert torch.allclose(grad_given_hit, torch.zeros(2), atol=1e-6)
    # the class mix still learns: more of the label's share lowers it
    assert semantic_ce_loss(0.5 * torch.tensor([0.9, 0.05, 0.05]).reshape(1, 1, 1, 1, 3), labels[..., :1],
                            given_hit=True).item() < given_hit.item()


def test_semantic_ray_scores_tell_a_collapsed_head_from_a_right_one():
    labels = torch.tensor([0, 0, 0, 1, 2, 255])  # three rays of class 0, one each of 1 and 2, one unlabelled
    right = torch.nn.functional.one_hot(torch.tensor([0, 0, 0, 1, 2, 1]), 3).float()
    scores = semantic_ray_scores(right, labels)
    assert scores["semantic_accuracy"].item() == 1.0 and scores["semantic_mean_recall"].item() == 1.0
    collapsed = torch.nn.functional.one_hot(torch.zeros(6, dtype=torch.long), 3).float()  # class 0 everywhere
    scores = semantic_ray_scores(collapsed, labels)
    assert scores["semantic_accuracy"].item() == pytest.approx(3 / 5)  # the frequent class hides the collapse
    assert scores["semantic_mean_recall"].item() == pytest.approx(1 / 3)  # recall 1, 0, 0
    half = right.clone()
    half[3] = torch.tensor([0.0, 0.2, 0.8])  # the class-1 ray rendered as class 2
    assert semantic_ray_scores(half, labels)["semantic_mean_recall"].item() == pytest.approx(2 / 3)
    assert semantic_ray_scores(right, torch.full_like(labels, 255)) == {}


def test_eikonal_hessian_sparsity_known_values():
    doubled = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (|g|-1)^2 = 1, 0
    assert eikonal_loss(doubled).item() == pytest.approx(0.5)
    grid = torch.zeros(1, 3, 2, 1, 1)
    grid[0, 2] = 1.0  # two unit gradients
    assert eikonal_loss(doubled, grid).item() == pytest.approx(0.25)  # one mean over all four
    assert hessian_loss(torch.tensor([-1.0, 2.0, 0.0, 1.0])).item() == pytest.approx(1.0)
    assert soft_sparsity_loss(torch.tensor([-1.0, 0.5, -0.25])).item() == pytest.approx(1.25 / 3)


def test_sky_free_space_loss_is_the_mean_opacity_of_sky_rays():
    accumulation = torch.tensor([0.9, 0.2, 0.6, 1.0]).reshape(1, 1, 2, 2, 1).requires_grad_(True)
    labels = torch.tensor([17, 3, 17, 255]).reshape(1, 1, 2, 2)
    loss = sky_free_space_loss(accumulation, labels, sky_id=17)
    assert loss.item() == pytest.approx(0.75)
    (grad,) = torch.autograd.grad(loss, accumulation)
    assert grad.flatten().tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0])  # only the sky rays are pushed
    no_sky = sky_free_space_loss(accumulation, torch.full_like(labels, 3), sky_id=17)
    assert no_sky.item() == 0.0 and no_sky.requires_grad


def test_gradients_flow_from_each_loss_to_what_it_should():
    torch.manual_seed(0)
    range_m = (-20.0, -20.0, -2.0, 20.0, 20.0, 6.0)
    config = SelfOccFieldConfig(hidden_dim=8, sdf_prior="ground_shell", shell_radius_m=15.0)
    field = config.setup(scene=SceneGrid(range_m, (9, 9, 5)), feature_dim=4)
    planes = TPVPlanes(torch.randn(1, 4, 9, 9), torch.randn(1, 4, 9, 5), torch.randn(1, 4, 9, 5))
    grid = field.decode(planes)
    renderer = SelfOccRendererConfig(num_samples=24).setup()
    lattice = fixed_lattice_px((12, 16), (6, 8))[None, None]
    intr = torch.tensor([[10.0, 0.0, 8.0], [0.0, 10.0, 6.0], [0.0, 0.0, 1.0]])[None, None]
    pose = look_cam2ego((0.0, 0.0, 1.5), 0.0, 20.0)[None, None]
    out = renderer.render_cameras(grid, lattice, intr, pose, torch.Generator().manual_seed(0))
    image = torch.rand(1, 1, 3, 12, 16)
    target = lattice_colours(image, lattice)
    sources = torch.stack([look_cam2ego((x, 0.0, 1.5), 0.0, 20.0) for x in (-0.5, 0.5)])[None, :, None]
    reproj, _ = reprojection_loss(out.points_m, out.weights, target, lattice, image[:, None].expand(1, 2, 1, 3, 12, 16),
                                  intr.expand(1, 2, 1, 3, 3), sources, automask=False)
    losses = {
        "reprojection": reproj,
        "rgb": rgb_loss(out.rgb, target),
        "eikonal": eikonal_loss(out.sdf_gradient, grid.sdf_gradient()),
        "hessian": hessian_loss(grid.sdf_hessian()),
        "smoothness": edge_aware_smoothness(out.depth, target),
        "semantic": semantic_ce_loss(out.semantics, torch.randint(0, 18, (1, 1, 6, 8))),
        "sparsity": soft_sparsity_loss(grid.sdf),
    }
    variance = renderer.neus_alpha.variance
    reaches = {}
    for name, loss in losses.items():
        g_values, g_var = torch.autograd.grad(loss, [grid.values, variance], retain_graph=True, allow_unused=True)
        reaches[name] = dict(
            sdf=g_values[:, 0].abs().sum().item() > 0,
            rgb=g_values[:, 1:4].abs().sum().item() > 0,
            semantic=g_values[:, 4:].abs().sum().item() > 0,
            variance=g_var is not None and g_var.abs().item() > 0,
        )
    assert reaches["reprojection"] == dict(sdf=True, rgb=False, semantic=False, variance=True)
    assert reaches["rgb"] == dict(sdf=True, rgb=True, semantic=False, variance=True)
    assert reaches["semantic"] == dict(sdf=True, rgb=False, semantic=True, variance=True)
    assert reaches["smoothness"] == dict(sdf=True, rgb=False, semantic=False, variance=True)
    for name in ("eikonal", "hessian", "sparsity"):
        assert reaches[name] == dict(sdf=True, rgb=False, semantic=False, variance=False), name
    # and on to the decoder and encoder planes
    planes_grad = torch.autograd.grad(losses["reprojection"], field.decoder[-1].weight, retain_graph=True)[0]
    assert planes_grad[0].abs().sum() > 0


# ------------------------------------------------------------------ free space (not official)

FREE_RANGE_M = (-10.0, -10.0, -2.0, 10.0, 10.0, 6.0)
FREE_GRID_XYZ = (81, 81, 33)  # 0.25 m


def render_ground_seen_from_above(with_bubble: bool):
    """A camera 3 m above the ground plane z = 0 looking 60 deg down at it; optionally a planted solid bubble
    of radius 1 m around the camera (SDF |p - c| - 1): its rays start inside it and leave it with a rising
    SDF, so NeuS gives it no opacity -- invisible to every rendering loss, yet occupied."""
    xs, ys, zs = grid_points_m(FREE_RANGE_M, FREE_GRID_XYZ)
    points = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
    centre = torch.tensor([0.0, 0.0, 3.0])
    sdf = points[..., 2].clone()
    if with_bubble:
        sdf = torch.minimum(sdf, torch.linalg.vector_norm(points - centre, dim=-1) - 1.0)
    grid = FieldGrid(values=sdf[None, None], range_m=FREE_RANGE_M, rgb_channels=0, semantic_channels=0)
    # inv_s = 5, about what the tiny preset reaches in training
    renderer = SelfOccRendererConfig(num_samples=128, variance_init=math.log(5.0) / 10).setup().eval()
    pose = look_cam2ego(tuple(centre.tolist()), 0.0, 60.0)
    lattice = fixed_lattice_px(IMAGE_HW, (6, 8))[None, None]
    with torch.no_grad():
        return renderer.render_cameras(grid, lattice, K[None, None], pose[None, None])


def test_free_space_loss_penalises_a_planted_invisible_solid_and_not_a_correct_field():
    correct = render_ground_seen_from_above(with_bubble=False)
    planted = render_ground_seen_from_above(with_bubble=True)
    # the bubble is invisible to rendering: the same depth and opacity as the correct field
    assert torch.allclose(planted.depth, correct.depth, rtol=0.02)
    assert torch.allclose(planted.accumulation, correct.accumulation, atol=1e-3)
    assert correct.accumulation.min() > 0.99
    assert free_space_loss(correct.sdf, correct.weights).item() == 0.0
    loss = free_space_loss(planted.sdf, planted.weights)
    # known answer: along every ray the first metre is inside the bubble, SDF = t - 1, i.e. -0.5 m on average
    # over that metre; the seen-through samples are those up to the ground, all of them with SDF >= 0 beyond it
    front = torch.cumsum(planted.weights, -1) < 0.1
    inside = front & (planted.t_m < 1.0)
    expected = (1.0 - planted.t_m[inside]).sum() / front.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=0.05)
    assert planted.t_m[front & (planted.sdf < 0)].max() < 1.0 + 0.1  # what is penalised is the bubble
    assert loss.item() > 0.05
    assert free_space_loss(planted.sdf + 2.0, planted.weights).item() == 0.0  # once the margin is met
    assert free_space_loss(correct.sdf, correct.weights, min_sdf_m=1.0).item() > 0.0  # a margin reaches the ground


def test_free_space_loss_gradient_raises_the_sdf_of_seen_through_samples_only():
    sdf = torch.tensor([[-1.0, -0.5, -2.0, 3.0]], requires_grad=True)
    weights = torch.tensor([[0.0, 0.05, 0.9, 0.05]], requires_grad=True)  # cumulative 0, 0.05, 0.95, 1.0
    loss = free_space_loss(sdf, weights, max_opacity=0.1)
    assert loss.item() == pytest.approx(0.75)  # (1 + 0.5) / 2: the surface and what lies behind it are left alone
    grad_sdf, grad_weights = torch.autograd.grad(loss, (sdf, weights), allow_unused=True)
    assert grad_sdf.tolist() == [[-0.5, -0.5, 0.0, 0.0]]
    assert grad_weights is None  # the selection is detached: the loss never moves the rendered surface
    none_seen = free_space_loss(sdf, torch.ones_like(sdf), max_opacity=0.1)
    assert none_seen.item() == 0.0 and none_seen.requires_grad


def test_rgb_loss_ray_mask_averages_over_the_selected_rays_only():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 1, 4, 6, 3, generator=g)
    wrong = target.clone()
    wrong[..., :, :2, :] = 1.0 - wrong[..., :, :2, :]  # two wrong columns
    keep = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    assert rgb_loss(wrong, target).item() > 0.05
    keep[..., :, :3] = False  # SSIM windows of column 2 still reach column 1; from column 3 on they do not
    assert rgb_loss(wrong, target, ray_mask=keep).item() == pytest.approx(0.0, abs=1e-6)
    nothing = rgb_loss(wrong, target, ray_mask=torch.zeros_like(keep))
    assert nothing.item() == 0.0


def render_tilted_ground(tilt_deg: float):
    """The ground z = 0 tilted by `tilt_deg` about the x axis (SDF (z - tan(t) y) cos(t): an exact SDF, trilinear
    on the grid), seen by a camera 3 m up looking 60 deg down along +x; renders with per-sample outputs."""
    xs, ys, zs = grid_points_m(FREE_RANGE_M, FREE_GRID_XYZ)
    points = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
    tilt = math.radians(tilt_deg)
    sdf = (points[..., 2] - math.tan(tilt) * points[..., 1]) * math.cos(tilt)
    grid = FieldGrid(values=sdf[None, None], range_m=FREE_RANGE_M, rgb_channels=0, semantic_channels=0)
    renderer = SelfOccRendererConfig(num_samples=128, variance_init=math.log(5.0) / 10).setup().eval()
    lattice = fixed_lattice_px(IMAGE_HW, (6, 8))[None, None]
    return renderer.render_cameras(grid, lattice, K[None, None], look_cam2ego((0.0, 0.0, 3.0), 0.0, 60.0)[None, None])


@pytest.mark.parametrize("tilt_deg", [0.0, 20.0, 90.0])
def test_flat_normal_loss_is_one_minus_the_cosine_of_the_ground_tilt(tilt_deg):
    out = render_tilted_ground(tilt_deg)
    flat = torch.ones(out.depth.shape[:-1], dtype=torch.bool)
    loss = flat_normal_loss(out.sdf_gradient, out.weights, flat)
    # known answer: the rendered normal of a plane is its normal, (0, -sin t, cos t)
    assert loss.item() == pytest.approx(1.0 - math.cos(math.radians(tilt_deg)), abs=1e-4)


def test_flat_normal_loss_reads_only_ground_rays_and_pushes_a_ramp_flat():
    sdf_gradient = torch.tensor([[[0.0, -0.6, 0.8], [0.0, -0.6, 0.8]], [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]],
                                requires_grad=True)  # 2 rays x 2 samples: a ramp, a wall
    weights = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    ramp_only = flat_normal_loss(sdf_gradient, weights, torch.tensor([True, False]))
    assert ramp_only.item() == pytest.approx(0.2)  # 1 - 0.8; the wall (not a ground label) is left alone
    (grad,) = torch.autograd.grad(ramp_only, sdf_gradient)
    assert grad[1].abs().max() == 0.0
    # descending the loss turns the ramp's normal towards +z: d/dg (1 - n_z) = -(e_z - n n_z) w per sample
    assert grad[0].tolist() == [pytest.approx([0.0, -0.24, -0.18])] * 2
    both = flat_normal_loss(sdf_gradient, weights, torch.tensor([True, True]))
    assert both.item() == pytest.approx((0.2 + 1.0) / 2)
    none = flat_normal_loss(sdf_gradient, weights, torch.tensor([False, False]))
    assert none.item() == 0.0 and none.requires_grad


def test_flat_label_ids_name_the_ground_classes_in_both_label_spaces():
    from selfocc_ns.data.label_maps import OPENSEED_PROMPTS, flat_label_ids

    assert flat_label_ids("occ3d") == (11, 12, 13, 14)
    assert [OPENSEED_PROMPTS[i] for i in flat_label_ids("openseed")] == ["road", "other_flat", "sidewalk", "terrain",
                                                                         "grass"]


def test_flat_ground_points_stand_under_the_rendered_surface_of_ground_rays_in_the_box():
    # 4 rays x 3 samples (B = 1): a ground ray, a ray that is not ground, a ground ray landing outside the box,
    # a ground ray that rendered nothing
    points = torch.tensor([[[[0.0, 0.0, 2.0], [5.0, 1.0, 0.3], [9.0, 9.0, 9.0]],
                            [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]],
                            [[0.0, 0.0, 0.0], [50.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                            [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]]])
    weights = torch.tensor([[[0.0, 0.6, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    flat = torch.tensor([[True, False, True, True]])
    out, heights, mask = flat_ground_points(points, weights, flat, (-40, -40, -1, 40, 40, 5.4), -0.2, (0.0, 0.5))
    assert out.shape == (1, 8, 3) and heights.tolist() == [0.0, 0.5] * 4
    # the first ray's rendered point is (5, 1, 0.3) (weights normalised); its x, y at the ground and 0.5 above it
    assert out[0, :2].tolist() == [pytest.approx([5.0, 1.0, -0.2]), pytest.approx([5.0, 1.0, 0.3])]
    assert mask[0].tolist() == [True, True, False, False, False, False, False, False]
    # known answers of the loss: an SDF z - g is right for g = -0.2 and off by |g + 0.2| elsewhere
    for ground_m in (-0.2, 0.4):
        sdf = out[..., 2] - ground_m
        assert ego_ground_loss(sdf, heights, mask).item() == pytest.approx(abs(ground_m + 0.2), abs=1e-6)
    # no ray counts: 0, still attached to the graph
    sdf = torch.zeros(1, 8, requires_grad=True)
    none = ego_ground_loss(sdf, heights, torch.zeros_like(mask))
    assert none.item() == 0.0 and none.requires_grad
