"""SelfOcc losses, one function each (official loss/*.py). Weights live in the config.

Lattice images are channels-last [B, N, h, w, C] (B batch items, N cameras, h x w ray lattice), as the
renderer returns them. Every loss returns a scalar; the reduction is stated per function.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from selfocc_ns.data.occ3d import IGNORE_ID
from selfocc_ns.model.rays import ImageRead, inside_image, project_points, sample_images_at_px
from selfocc_ns.model.ssim import lattice_to_nchw, photometric_error, ssim

__all__ = [
    "ssim",
    "reprojection_loss",
    "rgb_loss",
    "eikonal_loss",
    "hessian_loss",
    "edge_aware_smoothness",
    "semantic_ce_loss",
    "semantic_ray_scores",
    "soft_sparsity_loss",
    "sky_free_space_loss",
    "free_space_loss",
    "flat_normal_loss",
    "ego_ground_points",
    "ego_ground_loss",
]


def _warp_sources(
    sample_points_m: Float[Tensor, "B N h w S 3"],
    source_images: Float[Tensor, "B V N 3 H W"],
    source_intrinsics: Float[Tensor, "B V N 3 3"],
    source_cam2ego: Float[Tensor, "B V N 4 4"],
    image_read: ImageRead = "pixel_centre",
) -> Tuple[Float[Tensor, "V B N h w S 3"], Float[Tensor, "V B N h w S"]]:
    """Colour of every ray sample in every source image, and whether it lands inside that image."""
    b, n, h, w, s = sample_points_m.shape[:5]
    image_hw = tuple(source_images.shape[-2:])
    points = sample_points_m.reshape(b, n, h * w * s, 3)
    colours, valid = [], []
    for v in range(source_images.shape[1]):
        pixels, depth = project_points(points, source_intrinsics[:, v], source_cam2ego[:, v])
        rgb = sample_images_at_px(source_images[:, v].flatten(0, 1), pixels.flatten(0, 1), image_read)
        colours.append(rgb.reshape(b, n, h, w, s, -1))
        valid.append(((depth > 0) & inside_image(pixels, image_hw)).reshape(b, n, h, w, s))  # type: ignore[arg-type]
    return torch.stack(colours), torch.stack(valid)


def reprojection_loss(
    sample_points_m: Float[Tensor, "B N h w S 3"],
    weights: Float[Tensor, "B N h w S"],
    target_rgb: Float[Tensor, "B N h w 3"],
    lattice_px: Float[Tensor, "B N h w 2"],
    source_images: Float[Tensor, "B V N 3 H W"],
    source_intrinsics: Float[Tensor, "B V N 3 3"],
    source_cam2ego: Float[Tensor, "B V N 4 4"],
    automask: bool = True,
    no_source_loss: float = 1e3,
    ssim_weight: float = 0.85,
    image_read: ImageRead = "pixel_centre",
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """SelfOcc's "MVS-embedded" reprojection loss (official ReprojLossMonoMultiNewCombine).

    Every sample of every ray is projected into the V (= 2: previous, next) source images of its camera
    (sources have their own intrinsics / cam2ego in the same ego frame). Per sample the L1 colour error
    (mean over channels) is averaged over the sources it lands in; the render weights, zeroed where a
    sample lands in no source and renormalised to sum 1 per ray, average these errors along the ray
    (so every depth proposal gets a gradient). The same weights average the warped colour (source mean),
    and SSIM compares that warped lattice image with the target lattice image. Per ray:
    combined = 0.85 SSIM + 0.15 L1; rays with no sample in any source get `no_source_loss` (1e3).
    Auto-masking (Monodepth2): the per-ray min of combined and each source's identity error (the
    unwarped source at the same lattice pixels vs the target, same 0.85/0.15 mix).
    Reduction: mean over all rays of all cameras and batch items (= official mean per camera, averaged
    over cameras, since every camera has h x w rays).

    Source images are read as `image_read` says (`rays.sample_images_at_px`).

    Returns the loss and diagnostics: `automasked_fraction` (an identity error strictly below the
    warped one), `no_source_fraction`, `warped_error` (mean combined error over rays with a source).
    """
    colours, valid = _warp_sources(sample_points_m, source_images, source_intrinsics, source_cam2ego, image_read)
    valid_f = valid.to(weights.dtype)
    count = valid_f.sum(0)  # B N h w S
    lands = count > 0
    mean_div = count.clamp_min(1.0)
    sample_l1 = ((colours - target_rgb[:, :, :, :, None, :]).abs().mean(-1) * valid_f).sum(0) / mean_div
    sample_colour = (colours * valid_f[..., None]).sum(0) / mean_div[..., None]

    masked_weights = weights * lands
    eps = torch.finfo(weights.dtype).eps
    normalised = masked_weights / masked_weights.sum(-1, keepdim=True).clamp_min(eps)
    ray_l1 = (normalised * sample_l1).sum(-1)  # B N h w
    warped_rgb = (normalised[..., None] * sample_colour).sum(-2)  # B N h w 3

    b, n, h, w = ray_l1.shape
    ray_ssim = ssim(lattice_to_nchw(warped_rgb), lattice_to_nchw(target_rgb)).mean(1).reshape(b, n, h, w)
    combined = ssim_weight * ray_ssim + (1.0 - ssim_weight) * ray_l1
    no_source = ~lands.any(-1)
    combined = torch.where(no_source, torch.full_like(combined, no_source_loss), combined)

    per_ray = combined
    automasked = torch.zeros_like(combined, dtype=torch.bool)
    if automask:
        target_nchw = lattice_to_nchw(target_rgb)
        identity = []
        for v in range(source_images.shape[1]):
            unwarped = sample_images_at_px(
                source_images[:, v].flatten(0, 1), lattice_px.reshape(b * n, h * w, 2), image_read
            )
            unwarped_nchw = unwarped.reshape(b * n, h, w, -1).permute(0, 3, 1, 2)
            identity.append(photometric_error(unwarped_nchw, target_nchw, ssim_weight).reshape(b, n, h, w))
        best_identity = torch.stack(identity).amin(0)
        automasked = best_identity < combined
        per_ray = torch.minimum(combined, best_identity)

    with torch.no_grad():
        has_source = ~no_source
        diagnostics = {
            "automasked_fraction": automasked.float().mean(),
            "no_source_fraction": no_source.float().mean(),
            "warped_error": combined[has_source].mean() if has_source.any() else combined.new_tensor(0.0),
        }
    return per_ray.mean(), diagnostics


def rgb_loss(
    rendered_rgb: Float[Tensor, "B N h w 3"],
    target_rgb: Float[Tensor, "B N h w 3"],
    ssim_weight: float = 0.85,
    ray_mask: Optional[Bool[Tensor, "B N h w"]] = None,
) -> Tensor:
    """Rendered colour vs target on the ray lattice: 0.85 SSIM + 0.15 L1, mean over rays (RGBLossMS).

    `ray_mask` (not official): the mean runs over the rays where it is true (SSIM windows still read their
    neighbours); 0 (attached) when it selects none.
    """
    error = photometric_error(lattice_to_nchw(rendered_rgb), lattice_to_nchw(target_rgb), ssim_weight)
    if ray_mask is None:
        return error.mean()
    keep = ray_mask.reshape(error.shape)
    if not keep.any():
        return error.sum() * 0.0
    return error[keep].mean()


def eikonal_loss(
    sample_gradients: Optional[Float[Tensor, "*samples 3"]] = None,
    grid_gradients: Optional[Float[Tensor, "B 3 X Y Z"]] = None,
) -> Tensor:
    """mean (|g| - 1)^2 over the union of ray-sample gradients and all grid-point gradients.

    One mean over all gradient vectors together (the official loss takes the concatenation), so the
    larger set dominates. Grid gradients are channels-first [B, 3, X, Y, Z] as `FieldGrid.sdf_gradient`.
    """
    norms = []
    if sample_gradients is not None:
        norms.append(torch.linalg.vector_norm(sample_gradients, dim=-1).reshape(-1))
    if grid_gradients is not None:
        norms.append(torch.linalg.vector_norm(grid_gradients, dim=1).reshape(-1))
    if not norms:
        raise ValueError("eikonal_loss needs sample_gradients and/or grid_gradients")
    return ((torch.cat(norms) - 1.0) ** 2).mean()


def hessian_loss(hessian: Float[Tensor, "B 3 3 X Y Z"]) -> Tensor:
    """mean |H_ij| over all entries and grid points (official SecondGradLoss)."""
    return hessian.abs().mean()


def edge_aware_smoothness(
    depth_m: Float[Tensor, "B N h w"],
    image: Float[Tensor, "B N h w 3"],
    of: Literal["disparity", "depth"] = "disparity",
) -> Tensor:
    """Monodepth2 get_smooth_loss on the lattice depth map, per image normalised by its mean.

    `of="disparity"` (mean-normalised disparity 1 / depth, as Monodepth2, eps 1e-7) or `"depth"`
    (what the official EdgeLoss3DMS code feeds: depth / (mean depth + 1e-6)). |d x-gradient| exp(-|image
    x-gradient|) mean + the same along y, means over all images (Monodepth2 reduction).
    """
    if depth_m.dim() == 5:
        depth_m = depth_m[..., 0]
    if of not in ("disparity", "depth"):
        raise ValueError(f"unknown smoothness signal {of!r}; expected 'disparity' or 'depth'")
    signal = 1.0 / depth_m.clamp_min(1e-3) if of == "disparity" else depth_m
    signal = signal.flatten(0, 1)[:, None]  # BN 1 h w
    signal = signal / (signal.mean((2, 3), keepdim=True) + (1e-7 if of == "disparity" else 1e-6))
    img = lattice_to_nchw(image)
    grad_x = (signal[..., :, :-1] - signal[..., :, 1:]).abs()
    grad_y = (signal[..., :-1, :] - signal[..., 1:, :]).abs()
    img_grad_x = (img[..., :, :-1] - img[..., :, 1:]).abs().mean(1, keepdim=True)
    img_grad_y = (img[..., :-1, :] - img[..., 1:, :]).abs().mean(1, keepdim=True)
    return (grad_x * torch.exp(-img_grad_x)).mean() + (grad_y * torch.exp(-img_grad_y)).mean()


def semantic_ce_loss(
    probabilities: Float[Tensor, "B N h w C"], labels: Int[Tensor, "B N h w"], ignore_index: int = IGNORE_ID,
    given_hit: bool = False,
) -> Tensor:
    """CE on volume-rendered class probabilities: -sum_c onehot_c log clamp(p_c, 1e-6, 1) (SemCELossMS).

    Mean over rays whose label is not `ignore_index`; 0 (still attached to the graph) if there are none.
    The rendered probabilities sum to the accumulation, so low opacity is penalised too (official): a ray whose
    surface lies beyond the box is asked for matter inside it. `given_hit` (not official) scores p / accumulation
    instead, the class distribution given that the ray hits: the loss then asks nothing of the opacity.
    """
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels)).long()
    if given_hit:
        probabilities = probabilities / probabilities.sum(-1, keepdim=True).clamp_min(1e-6)
    log_p = torch.log(probabilities.clamp(1e-6, 1.0))
    picked = torch.gather(log_p, -1, safe_labels[..., None])[..., 0]
    if not valid.any():
        return probabilities.sum() * 0.0
    return -(picked[valid]).mean()


def semantic_ray_scores(
    probabilities: Float[Tensor, "*rays C"], labels: Int[Tensor, "*rays"], ignore_index: int = IGNORE_ID
) -> Dict[str, Tensor]:
    """How well the rendered classes match the 2D labels (a training metric, no gradient).

    `semantic_accuracy`: the fraction of labelled rays whose rendered argmax is their label.
    `semantic_mean_recall`: that fraction per label present, averaged over the labels: it falls to 1 / (labels
    present) when the head renders one class everywhere, however frequent that class is.
    Empty when no ray is labelled.
    """
    valid = labels != ignore_index
    predicted = probabilities.detach().argmax(-1)[valid]
    truth = labels[valid].long()
    if truth.numel() == 0:
        return {}
    hit = (predicted == truth).to(probabilities.dtype)
    num_classes = max(int(probabilities.shape[-1]), int(truth.max()) + 1)
    per_label = torch.zeros(num_classes, dtype=hit.dtype, device=hit.device).index_add_(0, truth, hit)
    counts = torch.bincount(truth, minlength=num_classes).to(hit.dtype)
    present = counts > 0
    return {"semantic_accuracy": hit.mean(), "semantic_mean_recall": (per_label[present] / counts[present]).mean()}


def sky_free_space_loss(accumulation: Float[Tensor, "B N h w 1"], labels: Int[Tensor, "B N h w"], sky_id: int) -> Tensor:
    """Mean accumulated opacity of the rays whose 2D label is sky: such rays should leave the scene box unhit.

    Not in the official code (there the sky is one more rendered class, so the field builds a sky surface
    inside the box, and the occupancy eval crops the top of the box). 0 (attached) when no ray is sky.
    """
    sky = labels == sky_id
    if not sky.any():
        return accumulation.sum() * 0.0
    return accumulation[..., 0][sky].mean()


def soft_sparsity_loss(sdf: Tensor) -> Tensor:
    """mean relu(-sdf) over the given SDF values (official SoftSparsityLoss, BEV preset weight 0.001).

    Feed it the whole grid's SDF channel (`FieldGrid.sdf`): it penalises occupied volume, linearly in
    how deep inside (metres) each point is, pushing the field towards free space where nothing else
    asks for matter.
    """
    return torch.relu(-sdf).mean()


def seen_through_samples(weights: Float[Tensor, "*rays S"], max_opacity: float) -> Bool[Tensor, "*rays S"]:
    """Samples a ray still sees through: cumulative render weight, the sample's own included, below `max_opacity`."""
    return torch.cumsum(weights, dim=-1) < max_opacity


def free_space_loss(
    sdf: Float[Tensor, "*rays S"],
    weights: Float[Tensor, "*rays S"],
    max_opacity: float = 0.1,
    min_sdf_m: float = 0.0,
) -> Tensor:
    """mean relu(min_sdf_m - sdf) over the samples the renderer sees through (not in the official code).

    NeuS alpha only counts surfaces a ray *enters* (SDF falling along it): a region of negative SDF that a
    ray crosses while the SDF rises, or whose surface is too shallow for the current sharpness, costs no
    rendering loss, and the eikonal term is as content with an inverted field; yet occupancy (SDF <= 0)
    calls it solid. The samples before the rendered surface (`seen_through_samples` of the detached
    weights, so the rendered surface itself is not moved) must be free. A field positive (by `min_sdf_m`)
    in front of every rendered surface scores exactly 0; 0 (attached) when no sample is seen through.
    """
    front = seen_through_samples(weights.detach(), max_opacity)
    if not front.any():
        return sdf.sum() * 0.0
    return torch.relu(min_sdf_m - sdf[front]).mean()


def flat_normal_loss(
    sdf_gradient: Float[Tensor, "*rays S 3"],
    weights: Float[Tensor, "*rays S"],
    flat: Bool[Tensor, "*rays"],
    up: Sequence[float] = (0.0, 0.0, 1.0),
) -> Tensor:
    """mean (1 - n . up) over the rays whose 2D label is a ground class (not in the official code).

    n is the rendered surface normal, the normalised weighted sum of the samples' SDF gradients (the outward
    normal of an SDF). Vision-only training reconstructs the concave corner between the road and the buildings
    as a ramp (few parallax cues on a uniform ground, and the Hessian term rounds corners); a ray labelled road,
    sidewalk or terrain asks for a horizontal surface. A flat ground scores exactly 0, a wall 1, an inverted
    ground 2; 0 (attached) when no ray is flat.
    """
    if not flat.any():
        return sdf_gradient.sum() * 0.0
    rendered = (weights[..., None] * sdf_gradient).sum(-2)  # *rays 3
    normal = F.normalize(rendered[flat], dim=-1, eps=1e-8)
    up_vector = torch.as_tensor(up, dtype=normal.dtype, device=normal.device)
    return (1.0 - normal @ up_vector).mean()


def ego_ground_points(
    ego2ref: Float[Tensor, "B F 4 4"], ground_z_m: float, heights_m: Sequence[float]
) -> Tuple[Float[Tensor, "B F*H 3"], Float[Tensor, "F*H"]]:
    """Points above the ground under each ego pose: the ego origin lowered/raised to `ground_z_m` (ground height in
    the ego frame) plus h along the ego's up axis, for every h in `heights_m`; returned with each point's h (the
    SDF it should have)."""
    heights = torch.as_tensor(heights_m, dtype=ego2ref.dtype, device=ego2ref.device)
    offsets = torch.zeros(heights.shape[0], 4, dtype=ego2ref.dtype, device=ego2ref.device)
    offsets[:, 2], offsets[:, 3] = ground_z_m + heights, 1.0
    points = torch.einsum("bfij,hj->bfhi", ego2ref, offsets)[..., :3]
    return points.flatten(1, 2), heights.repeat(ego2ref.shape[1])


def flat_ground_points(
    points_m: Float[Tensor, "B *rays S 3"],
    weights: Float[Tensor, "B *rays S"],
    flat: Bool[Tensor, "B *rays"],
    range_m: Sequence[float],
    ground_z_m: float,
    heights_m: Sequence[float],
) -> Tuple[Float[Tensor, "B R*H 3"], Float[Tensor, "R*H"], Bool[Tensor, "B R*H"]]:
    """Points above the ground under the rendered surface of every ground-labelled ray (not in the official code).

    Each ray's rendered point, sum(w p) / sum(w) (detached: the loss moves the field, not the ray), keeps its x, y
    and takes the heights `ground_z_m + h` for every h in `heights_m`; returned with each point's h (the SDF it
    should have) and a mask of the points that count: the ray is labelled ground, has rendered something and its
    point lies inside the box's x, y range.
    """
    total = weights.sum(-1, keepdim=True)
    rendered = ((weights[..., None] * points_m).sum(-2) / total.clamp_min(1e-8)).detach()  # B *rays 3
    batch = rendered.shape[0]
    rendered, flat, total = rendered.reshape(batch, -1, 3), flat.reshape(batch, -1), total.reshape(batch, -1)
    heights = torch.as_tensor(heights_m, dtype=rendered.dtype, device=rendered.device)
    points = rendered[:, :, None, :].repeat(1, 1, heights.shape[0], 1)  # B R H 3
    points[..., 2] = ground_z_m + heights
    x, y = rendered[..., 0], rendered[..., 1]
    inside = (x >= range_m[0]) & (x <= range_m[3]) & (y >= range_m[1]) & (y <= range_m[4])
    counts = flat & inside & (total > 1e-4)
    mask = counts[:, :, None].expand(-1, -1, heights.shape[0])
    return points.flatten(1, 2), heights.repeat(rendered.shape[1]), mask.flatten(1)


def ego_ground_loss(
    sdf_m: Float[Tensor, "B P"], heights_m: Float[Tensor, "P"], mask: Optional[Bool[Tensor, "B P"]] = None
) -> Tensor:
    """mean |sdf - h| at the `ego_ground_points` or the `flat_ground_points` (their mask) (not in the official code).

    The ego vehicle stands on the road wherever its poses put it: the SDF is 0 on the ground under each ego pose
    and h at height h above it (the ego body itself is not part of the occupancy). Vision-only training leaves
    the height of a weakly textured road free (trained fields put it anywhere between -0.6 and +0.6 m); the
    poses, already an input of the reprojection loss, pin it along the driven path.
    """
    if mask is None:
        return (sdf_m - heights_m).abs().mean()
    if not mask.any():
        return sdf_m.sum() * 0.0
    return (sdf_m - heights_m).abs()[mask].mean()
