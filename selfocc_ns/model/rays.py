"""Pixel lattices, camera rays, ray-box clipping, stratified samples, projection and image reads.

Pixel convention (used everywhere in this package): continuous pixel coordinates (u, v) with u along the
image width and v along the height; pixel (i, j) (row i, column j) covers [j, j+1) x [i, i+1) and its
centre is at (u, v) = (j + 0.5, i + 0.5). Intrinsics map camera points to these coordinates
(u = fx x / z + cx). Images are read with `grid_sample(align_corners=False)` at x_n = 2 u / W - 1, which
is the same convention, so a lattice point on a pixel centre reads that pixel exactly. The official losses
read with `align_corners=True` at the same x_n, i.e. at pixel index u (W - 1) / W (`image_read="official"`).

Cameras are OpenCV (x right, y down, z forward); `cam2ego` maps camera to ego coordinates (metres).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor


ImageRead = Literal["pixel_centre", "official"]
Jitter = Literal["per_edge", "per_ray"]


def uniform_noise(shape: Sequence[int], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """U[0, 1) noise from `generator` (drawn on the generator's device, then moved), or the global RNG."""
    if generator is None:
        return torch.rand(*shape, device=device)
    return torch.rand(*shape, generator=generator, device=generator.device).to(device)


# ----------------------------------------------------------------------------------------------
# Lattices
# ----------------------------------------------------------------------------------------------


def fixed_lattice_px(
    image_hw: Tuple[int, int], lattice_hw: Tuple[int, int], device: torch.device | str = "cpu"
) -> Float[Tensor, "h w 2"]:
    """Evenly spaced lattice: the pixel centres of the image resized to lattice_hw, in image pixels.

    u_j = (j + 0.5) W / w, v_i = (i + 0.5) H / h. For 450x800 on 900x1600 these are the centres of the
    2x2 pixel blocks, so the depth map is exactly the half-resolution image's depth map.
    """
    (height, width), (h, w) = image_hw, lattice_hw
    us = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * (width / w)
    vs = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * (height / h)
    return torch.stack(torch.meshgrid(us, vs, indexing="xy"), dim=-1)


def eval_lattice_hw(image_hw: Tuple[int, int], fraction: float = 0.5) -> Tuple[int, int]:
    """The eval lattice of an image: `fraction` of its size (450x800 on 900x1600 for 0.5)."""
    return max(1, round(image_hw[0] * fraction)), max(1, round(image_hw[1] * fraction))


def _cellular_axis(
    length_px: int, count: int, noise: Tensor, snap_to_pixels: bool, cell_centres: bool = True
) -> Float[Tensor, "count"]:
    if length_px < count:
        raise ValueError(f"image axis of {length_px} px cannot hold a lattice of {count} rays")
    max_stride = length_px / count
    if snap_to_pixels:
        stride = 1 + math.floor(float(noise[0]) * math.floor(max_stride))
        stride = min(stride, math.floor(max_stride))
        max_offset = length_px - count * stride
        offset = min(math.floor(float(noise[1]) * (max_offset + 1)), max_offset)
        return offset + torch.arange(count, dtype=torch.float32) * stride + 0.5
    stride = 1.0 + float(noise[0]) * (max_stride - 1.0)
    offset = float(noise[1]) * (length_px - count * stride)
    return offset + (torch.arange(count, dtype=torch.float32) + (0.5 if cell_centres else 0.0)) * stride


def cellular_lattice_px(
    image_hw: Tuple[int, int],
    lattice_hw: Tuple[int, int],
    generator: Optional[torch.Generator] = None,
    snap_to_pixels: bool = False,
    device: torch.device | str = "cpu",
    cell_centres: bool = True,
) -> Float[Tensor, "h w 2"]:
    """Training lattice: h x w rays with a random stride and offset per axis (official 'cellular').

    The stride is uniform in [1, H / h] (per axis), the offset uniform in [0, H - h * stride], and ray k
    sits at offset + (k + 0.5) * stride (`cell_centres`; the official ray sampler uses offset + k * stride),
    so the lattice stays a regular (SSIM-able) image inside the image. With `snap_to_pixels` stride and
    offset are integers and rays sit on pixel centres.
    """
    noise = uniform_noise((4,), generator, torch.device("cpu"))
    us = _cellular_axis(image_hw[1], lattice_hw[1], noise[:2], snap_to_pixels, cell_centres)
    vs = _cellular_axis(image_hw[0], lattice_hw[0], noise[2:], snap_to_pixels, cell_centres)
    return torch.stack(torch.meshgrid(us, vs, indexing="xy"), dim=-1).to(device)


# ----------------------------------------------------------------------------------------------
# Rays and samples
# ----------------------------------------------------------------------------------------------


def rays_from_pixels(
    pixels_px: Float[Tensor, "*cams R 2"],
    intrinsics: Float[Tensor, "*cams 3 3"],
    cam2ego: Float[Tensor, "*cams 4 4"],
) -> Tuple[Float[Tensor, "*cams R 3"], Float[Tensor, "*cams R 3"], Float[Tensor, "*cams R 1"]]:
    """Ego-frame rays through pixels: origins, unit directions and z_per_distance.

    z_per_distance = cos(angle to the optical axis): a point at distance t along the ray has camera
    depth (z) t * z_per_distance. Depth maps are z-depth, as the official code (and LiDAR projection) use.
    """
    ones = torch.ones_like(pixels_px[..., :1])
    pixels_h = torch.cat([pixels_px, ones], dim=-1)
    dirs_cam = torch.einsum("...ij,...rj->...ri", torch.linalg.inv(intrinsics), pixels_h)
    norm = torch.linalg.vector_norm(dirs_cam, dim=-1, keepdim=True)
    z_per_distance = dirs_cam[..., 2:3] / norm
    dirs_ego = torch.einsum("...ij,...rj->...ri", cam2ego[..., :3, :3], dirs_cam / norm)
    origins = cam2ego[..., None, :3, 3].expand_as(dirs_ego)
    return origins, dirs_ego, z_per_distance


def lattice_rays(
    lattice_px: Float[Tensor, "B N h w 2"], intrinsics: Float[Tensor, "B N 3 3"], cam2ego: Float[Tensor, "B N 4 4"]
) -> Tuple[Float[Tensor, "B R 3"], Float[Tensor, "B R 3"], Float[Tensor, "B R 1"]]:
    """`rays_from_pixels` of every camera's lattice, cameras flattened into R = N h w rays per batch item."""
    batch, cams, h, w = lattice_px.shape[:4]
    pixels_px = lattice_px.reshape(batch, cams, h * w, 2)
    origins, directions, z_per_distance = rays_from_pixels(pixels_px, intrinsics, cam2ego)
    return origins.reshape(batch, -1, 3), directions.reshape(batch, -1, 3), z_per_distance.reshape(batch, -1, 1)


def intersect_aabb_torch(
    origins: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"], range_m: Sequence[float], near_m: float = 0.0
) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N"], Bool[Tensor, "N"]]:
    """Reference slab test (any device): entry and exit distance through the box, entry clipped to near_m.

    Missed rays (and rays whose box part lies before near_m) get near = far = near_m and hit = False.
    """
    lo = torch.tensor(range_m[:3], dtype=origins.dtype, device=origins.device)
    hi = torch.tensor(range_m[3:], dtype=origins.dtype, device=origins.device)
    # A zero direction component would give 0/0 for an origin on that face; nudge it (sign kept).
    safe_dirs = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t_lo, t_hi = (lo - origins) / safe_dirs, (hi - origins) / safe_dirs
    t_enter = torch.minimum(t_lo, t_hi).amax(dim=-1).clamp_min(near_m)
    t_exit = torch.maximum(t_lo, t_hi).amin(dim=-1)
    hit = t_exit > t_enter
    return torch.where(hit, t_enter, near_m), torch.where(hit, t_exit, near_m), hit


def intersect_aabb_nerfacc(
    origins: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"], range_m: Sequence[float], near_m: float = 0.0
) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N"], Bool[Tensor, "N"]]:
    """`intersect_aabb_torch` by `nerfacc.ray_aabb_intersect` (CUDA kernel, float32)."""
    import nerfacc  # only here: the rest of this module is plain torch

    aabb = torch.tensor([list(range_m)], dtype=origins.dtype, device=origins.device)
    t_min, t_max, hit = nerfacc.ray_aabb_intersect(origins, directions, aabb, near_plane=near_m, miss_value=near_m)
    t_min, t_max = t_min[:, 0], t_max[:, 0]
    # nerfacc calls a box that ends before near_plane a hit (with t_max < t_min): a miss, as in the reference.
    hit = hit[:, 0] & (t_max > t_min)
    return torch.where(hit, t_min, near_m), torch.where(hit, t_max, near_m), hit


def intersect_aabb(
    origins: Float[Tensor, "N 3"], directions: Float[Tensor, "N 3"], range_m: Sequence[float], near_m: float = 0.0
) -> Tuple[Float[Tensor, "N"], Float[Tensor, "N"], Bool[Tensor, "N"]]:
    """Entry and exit distance of rays through the scene box, clipped to near_m >= 0.

    Missed rays get near = far = near_m and hit = False. `intersect_aabb_nerfacc` on CUDA,
    `intersect_aabb_torch` elsewhere.
    """
    intersect = intersect_aabb_nerfacc if origins.is_cuda else intersect_aabb_torch
    return intersect(origins, directions, range_m, near_m)


def interval_edges(
    near_m: Float[Tensor, "*rays"],
    far_m: Float[Tensor, "*rays"],
    num_samples: int,
    generator: Optional[torch.Generator] = None,
    jitter: bool = True,
    jitter_mode: Jitter = "per_edge",
) -> Float[Tensor, "*rays S+1"]:
    """The S + 1 edges (metres along the ray) of num_samples intervals between near and far.

    Uniform edges b_k = k / S without `jitter`. With it, "per_edge": every inner edge moves uniformly within
    half a bin on either side, independently, and the ends stay at near and far (the samples always cover the
    whole box); "per_ray" (the official NeuSSampler, nerfstudio's UniformSampler with single_jitter): one
    t ~ U[0, 1) per ray moves every edge between the neighbouring bin centres, b_0 = t / (2 S),
    b_k = (k - 0.5 + t) / S, b_S = (S - 0.5 + t / 2) / S.
    """
    edges = torch.linspace(0.0, 1.0, num_samples + 1, device=near_m.device, dtype=near_m.dtype)
    edges = edges.expand(*near_m.shape, num_samples + 1)
    if jitter and jitter_mode == "per_ray":
        centres = 0.5 * (edges[..., 1:] + edges[..., :-1])
        lower = torch.cat([edges[..., :1], centres], dim=-1)
        upper = torch.cat([centres, edges[..., -1:]], dim=-1)
        noise = uniform_noise((*near_m.shape, 1), generator, near_m.device).to(edges.dtype)
        edges = lower + (upper - lower) * noise
    elif jitter and jitter_mode == "per_edge":
        if num_samples > 1:
            half_bin = 0.5 / num_samples
            inner = edges[..., 1:-1]
            noise = uniform_noise(inner.shape, generator, near_m.device).to(edges.dtype)
            inner = inner + (2.0 * noise - 1.0) * half_bin
            edges = torch.cat([edges[..., :1], inner, edges[..., -1:]], dim=-1)
    elif jitter:
        raise ValueError(f"unknown jitter {jitter_mode!r}; expected 'per_edge' or 'per_ray'")
    return near_m[..., None] + (far_m - near_m)[..., None] * edges


def stratified_samples(
    near_m: Float[Tensor, "*rays"],
    far_m: Float[Tensor, "*rays"],
    num_samples: int,
    generator: Optional[torch.Generator] = None,
    jitter: bool = True,
    jitter_mode: Jitter = "per_edge",
) -> Tuple[Float[Tensor, "*rays S"], Float[Tensor, "*rays S"]]:
    """num_samples intervals between near and far: midpoints t and lengths delta (metres along the ray);
    the edges are `interval_edges`."""
    return midpoints_and_deltas(interval_edges(near_m, far_m, num_samples, generator, jitter, jitter_mode))


def midpoints_and_deltas(
    edges_m: Float[Tensor, "*rays S+1"],
) -> Tuple[Float[Tensor, "*rays S"], Float[Tensor, "*rays S"]]:
    """Interval midpoints and lengths from interval edges."""
    return 0.5 * (edges_m[..., 1:] + edges_m[..., :-1]), edges_m[..., 1:] - edges_m[..., :-1]


# ----------------------------------------------------------------------------------------------
# Projection and image reads
# ----------------------------------------------------------------------------------------------


def project_points(
    points_m: Float[Tensor, "*cams P 3"], intrinsics: Float[Tensor, "*cams 3 3"], cam2ego: Float[Tensor, "*cams 4 4"]
) -> Tuple[Float[Tensor, "*cams P 2"], Float[Tensor, "*cams P"]]:
    """Ego points -> pixel coordinates and camera depth z (metres). Points behind get z <= 0.

    The division uses max(z, 1e-5) so points behind the camera stay finite (mask them with z > 0).
    """
    rotation, translation = cam2ego[..., :3, :3], cam2ego[..., :3, 3]
    points_cam = torch.einsum("...ji,...pj->...pi", rotation, points_m - translation[..., None, :])
    pixels_h = torch.einsum("...ij,...pj->...pi", intrinsics, points_cam)
    depth = points_cam[..., 2]
    return pixels_h[..., :2] / depth.clamp_min(1e-5)[..., None], depth


def inside_image(pixels_px: Float[Tensor, "*batch 2"], image_hw: Tuple[int, int]) -> Bool[Tensor, "*batch"]:
    """Strictly inside the image rectangle (0, W) x (0, H)."""
    u, v = pixels_px[..., 0], pixels_px[..., 1]
    return (u > 0) & (u < image_hw[1]) & (v > 0) & (v < image_hw[0])


def sample_images_at_px(
    images: Float[Tensor, "M C H W"], pixels_px: Float[Tensor, "M P 2"], read: ImageRead = "pixel_centre"
) -> Float[Tensor, "M P C"]:
    """Bilinear read of images at continuous pixel coordinates (border padding outside).

    "pixel_centre": at pixel index u - 0.5 (align_corners=False, this module's convention); "official": at
    index u (W - 1) / W (align_corners=True at the same 2 u / W - 1, as every official loss reads).
    """
    if read not in ("pixel_centre", "official"):
        raise ValueError(f"unknown image read {read!r}; expected 'pixel_centre' or 'official'")
    height, width = images.shape[-2:]
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=images.dtype, device=images.device)
    grid = (pixels_px.to(images.dtype) * scale - 1.0)[:, :, None, :]  # M P 1 2
    sampled = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=read == "official"
    )
    return sampled[..., 0].transpose(1, 2)


def lattice_colours(
    images: Float[Tensor, "B N C H W"], lattice_px: Float[Tensor, "B N h w 2"], read: ImageRead = "pixel_centre"
) -> Float[Tensor, "B N h w C"]:
    """Images read at their cameras' lattice points (targets for RGB / reprojection losses).

    Lattice points lie inside the image, so the official RGB loss's zero padding and the reprojection
    loss's border padding read the same values there."""
    b, n, c = images.shape[:3]
    h, w = lattice_px.shape[2:4]
    sampled = sample_images_at_px(images.flatten(0, 1), lattice_px.reshape(b * n, h * w, 2), read)
    return sampled.reshape(b, n, h, w, c)


def lattice_labels(labels: Int[Tensor, "B N H W"], lattice_px: Float[Tensor, "B N h w 2"]) -> Int[Tensor, "B N h w"]:
    """Nearest-pixel read of integer label maps at lattice points (labels must not be interpolated)."""
    height, width = labels.shape[-2:]
    cols = lattice_px[..., 0].floor().long().clamp(0, width - 1)
    rows = lattice_px[..., 1].floor().long().clamp(0, height - 1)
    flat = labels.flatten(-2)  # B N HW
    index = (rows * width + cols).flatten(2)  # B N hw
    return torch.gather(flat, 2, index).reshape(cols.shape)
