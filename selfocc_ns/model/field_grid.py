"""The decoded field grid and everything computed on it: trilinear queries, finite-difference
gradient and Hessian, and the analytic geometric priors (pure functions; used by field.py, the renderer
and the losses).

Grid convention: that of `selfocc_ns.model.planes` (grid points with the ends included, index order
[x, y, z], metric ego frame of the input keyframe). Finite differences make all derivatives first-order
autograd through `grid_sample`: no double backward is needed (the official code needed a custom
double-backward grid_sample only because it differentiated with autograd).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from selfocc_ns.model.planes import grid_points_m, normalise_points

SdfPrior = Literal["none", "ground", "ground_shell", "free"]
RgbActivation = Literal["relu", "sigmoid", "sh0"]
FdBoundary = Literal["one_sided", "replicate_half"]
SH_C0 = 0.28209479177387814
"""Real spherical harmonic of degree 0, 1 / (2 sqrt(pi)): the official SH-degree-0 colour is relu(C0 f + 0.5)."""

# ----------------------------------------------------------------------------------------------
# Pure grid functions
# ----------------------------------------------------------------------------------------------


def grid_spacing_m(range_m: Sequence[float], grid_xyz: Sequence[int]) -> Tuple[float, float, float]:
    """Metric distance between neighbouring grid points along x, y, z (ends included)."""
    return tuple((range_m[i + 3] - range_m[i]) / (grid_xyz[i] - 1) for i in range(3))  # type: ignore[return-value]


def sample_grid(
    values: Float[Tensor, "B C X Y Z"], points_m: Float[Tensor, "B R 3"], range_m: Sequence[float]
) -> Float[Tensor, "B R C"]:
    """Trilinear read of a grid at metric ego points (align_corners=True, border padding).

    `grid_sample` indexes a 5-D input [N, C, D, H, W] with coordinates ordered (W, H, D); our grid is
    [B, C, X, Y, Z] (D=X, H=Y, W=Z), so the normalised point (x, y, z) is passed as (z, y, x).
    Points outside the range read the border value (the official code's choice).
    """
    normalised = normalise_points(points_m, range_m).to(values.dtype)
    coords_whd = normalised.flip(-1)[:, :, None, None, :]  # B R 1 1 3
    sampled = F.grid_sample(values, coords_whd, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[:, :, :, 0, 0].transpose(1, 2)  # B R C


def lattice_axes(points_m: Float[Tensor, "I J K 3"], atol_m: float = 1e-5) -> Optional[Tuple[Tuple[int, Tensor], ...]]:
    """When the points are an axis-aligned lattice (coordinate a varies along one lattice axis only, each along
    another): per coordinate a, (its lattice axis, its 1D positions); else None."""
    axes = []
    for a in range(3):
        values = points_m[..., a]
        lines = [values.narrow((i + 1) % 3, 0, 1).narrow((i + 2) % 3, 0, 1) for i in range(3)]  # along i only
        i = max(range(3), key=lambda j: float(lines[j].max() - lines[j].min()))  # the axis it varies along
        if i in [axis for axis, _ in axes] or float((values - lines[i]).abs().max()) > atol_m:
            return None
        axes.append((i, lines[i].reshape(-1)))
    return tuple(axes)


def linear_read_weights(positions_m: Float[Tensor, "M"], lo_m: float, hi_m: float, size: int) -> Float[Tensor, "M N"]:
    """Row m: the weights of the linear read of N samples spanning [lo_m, hi_m] (align_corners=True, border clamp)
    at positions_m[m] -- two non-zeros per row."""
    u = ((positions_m - lo_m) / (hi_m - lo_m) * (size - 1)).clamp(0, size - 1)
    low = u.floor().long().clamp(0, max(size - 2, 0))
    high = (low + 1).clamp_max(size - 1)
    frac = u - low.to(u.dtype)
    weights = torch.zeros(positions_m.shape[0], size, dtype=positions_m.dtype, device=positions_m.device)
    weights.scatter_add_(1, low[:, None], (1.0 - frac)[:, None])
    weights.scatter_add_(1, high[:, None], frac[:, None])
    return weights


def sample_grid_lattice(
    values: Float[Tensor, "C X Y Z"], axes: Tuple[Tuple[int, Tensor], ...], range_m: Sequence[float]
) -> Float[Tensor, "I J K C"]:
    """`sample_grid` at the points of an axis-aligned lattice (`lattice_axes`), channels last: the trilinear read
    (align_corners=True, border clamp) is separable, so it is three matrix products with the axes'
    `linear_read_weights` (no per-point gathers). Equal to `sample_grid` up to float rounding."""
    out = values.permute(1, 2, 3, 0).contiguous()  # X Y Z C
    w = [linear_read_weights(positions.to(values.dtype), range_m[a], range_m[a + 3], values.shape[1 + a])
         for a, (_, positions) in enumerate(axes)]
    x, y, z, c = out.shape
    # z, y, then x: the smallest intermediates (z is the shortest axis), one batched product each
    out = torch.matmul(w[2], out.view(x * y, z, c)).view(x, y, -1, c)
    k = out.shape[2]
    out = torch.matmul(w[1], out.view(x, y, k * c)).view(x, -1, k, c)
    out = (w[0] @ out.view(x, -1)).view(-1, out.shape[1], k, c)
    # dims are now (lattice axis of x, of y, of z, C): put them in lattice order
    order = [[i for i, _ in axes].index(axis) for axis in range(3)]
    return out.permute(*order, 3)


def grid_gradient(
    values: Float[Tensor, "B C X Y Z"], spacing_m: Sequence[float], boundary: FdBoundary = "one_sided"
) -> Float[Tensor, "B C 3 X Y Z"]:
    """Finite-difference spatial derivative of every channel, per metre.

    Central differences inside. On the faces, "one_sided": the one-sided difference divided by the true
    distance (one spacing), the exact derivative of a linear field. "replicate_half" (official): the grid is
    padded by replication and the central difference divided by two spacings everywhere, so a face gets half
    the one-sided difference (a plane then has a non-zero eikonal loss there).
    """
    if boundary not in ("one_sided", "replicate_half"):
        raise ValueError(f"unknown finite-difference boundary {boundary!r}; expected 'one_sided' or 'replicate_half'")
    derivatives = list(torch.gradient(values, spacing=list(spacing_m), dim=[2, 3, 4], edge_order=1))
    if boundary == "replicate_half":
        for axis, derivative in enumerate(derivatives):
            faces = torch.ones(values.shape[2 + axis], dtype=values.dtype, device=values.device)
            faces[0] = faces[-1] = 0.5
            derivatives[axis] = derivative * faces.view(-1, *([1] * (2 - axis)))
    return torch.stack(derivatives, dim=2)


def sdf_gradient_grid(
    sdf: Float[Tensor, "B 1 X Y Z"], spacing_m: Sequence[float], boundary: FdBoundary = "one_sided"
) -> Float[Tensor, "B 3 X Y Z"]:
    """SDF gradient (d/dx, d/dy, d/dz) at every grid point."""
    return grid_gradient(sdf, spacing_m, boundary)[:, 0]


def sdf_hessian_grid(
    sdf_gradient: Float[Tensor, "B 3 X Y Z"], spacing_m: Sequence[float], boundary: FdBoundary = "one_sided"
) -> Float[Tensor, "B 3 3 X Y Z"]:
    """Second derivatives as finite differences of the gradient grids: H[:, i, j] = d g_i / d x_j."""
    return grid_gradient(sdf_gradient, spacing_m, boundary)


def ground_sdf(points_m: Float[Tensor, "*batch 3"], ground_z_m: float) -> Float[Tensor, "*batch"]:
    """Signed distance to the ground plane z = ground_z_m (positive above)."""
    return points_m[..., 2] - ground_z_m


def ground_shell_sdf(
    points_m: Float[Tensor, "*batch 3"], ground_z_m: float, shell_radius_m: float
) -> Float[Tensor, "*batch"]:
    """Ground plane united with a vertical cylinder wall of radius shell_radius_m around the ego z axis.

    Free space is the inside of the cylinder above the ground; the SDF of the union of the two solids is
    the min of their SDFs (exact away from the ground/wall corner, where it is a lower bound).
    """
    radial_m = torch.linalg.vector_norm(points_m[..., :2], dim=-1)
    return torch.minimum(ground_sdf(points_m, ground_z_m), shell_radius_m - radial_m)


def prior_sdf_grid(
    prior: SdfPrior,
    range_m: Sequence[float],
    grid_xyz: Tuple[int, int, int],
    ground_z_m: float = 0.0,
    shell_radius_m: float = 30.0,
    free_sdf_m: float = 1.0,
) -> Float[Tensor, "X Y Z"]:
    """The analytic prior SDF at the grid points (zeros for 'none', the constant `free_sdf_m` for 'free')."""
    xs, ys, zs = grid_points_m(range_m, grid_xyz)
    points = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
    if prior == "none":
        return torch.zeros(grid_xyz)
    if prior == "ground":
        return ground_sdf(points, ground_z_m)
    if prior == "ground_shell":
        return ground_shell_sdf(points, ground_z_m, shell_radius_m)
    if prior == "free":
        return torch.full(grid_xyz, float(free_sdf_m))
    raise ValueError(f"unknown sdf_prior {prior!r}; expected 'none', 'ground', 'ground_shell' or 'free'")


# ----------------------------------------------------------------------------------------------
# The decoded grid and point queries
# ----------------------------------------------------------------------------------------------


@dataclass
class FieldGrid:
    """The decoded field of B input samples, the object the renderer and the losses read.

    Channel layout of `values`: 0 = SDF in metres (prior included), then `rgb_channels` raw colour
    channels (0 or 3), then `semantic_channels` logits (0, 18 or 21).
    """

    values: Float[Tensor, "B K X Y Z"]
    range_m: Tuple[float, float, float, float, float, float]
    rgb_channels: int
    semantic_channels: int
    rgb_activation: RgbActivation = "relu"
    _gradient: Optional[Tensor] = field(default=None, repr=False)
    fd_boundary: FdBoundary = "one_sided"
    """Finite differences on the grid's faces (`grid_gradient`)."""

    @property
    def sdf(self) -> Float[Tensor, "B 1 X Y Z"]:
        return self.values[:, :1]

    @property
    def grid_xyz(self) -> Tuple[int, int, int]:
        return tuple(self.values.shape[2:])  # type: ignore[return-value]

    @property
    def spacing_m(self) -> Tuple[float, float, float]:
        return grid_spacing_m(self.range_m, self.grid_xyz)

    @property
    def batch_size(self) -> int:
        return int(self.values.shape[0])

    def sdf_gradient(self) -> Float[Tensor, "B 3 X Y Z"]:
        """Finite-difference SDF gradient grid (computed once, then cached with its graph)."""
        if self._gradient is None:
            self._gradient = sdf_gradient_grid(self.sdf, self.spacing_m, self.fd_boundary)
        return self._gradient

    def sdf_hessian(self) -> Float[Tensor, "B 3 3 X Y Z"]:
        """3x3 Hessian at every grid point (for the hessian loss over the whole grid)."""
        return sdf_hessian_grid(self.sdf_gradient(), self.spacing_m, self.fd_boundary)

    def select(self, index: int) -> "FieldGrid":
        """The grid of one batch item (B = 1), sharing storage."""
        gradient = None if self._gradient is None else self._gradient[index : index + 1]
        return FieldGrid(
            self.values[index : index + 1],
            self.range_m,
            self.rgb_channels,
            self.semantic_channels,
            self.rgb_activation,
            gradient,
            self.fd_boundary,
        )


@dataclass
class FieldSamples:
    """Field values at query points."""

    sdf: Float[Tensor, "B R 1"]
    rgb: Optional[Float[Tensor, "B R 3"]] = None
    """Activated colour (`activate_rgb`), None without a colour head."""
    semantic_logits: Optional[Float[Tensor, "B R S"]] = None
    sdf_gradient: Optional[Float[Tensor, "B R 3"]] = None
    """Trilinear read of the finite-difference gradient grid (when asked for)."""


def activate_rgb(raw: Tensor, activation: RgbActivation) -> Tensor:
    """Colour from sampled raw channels: relu(f), sigmoid(f), or the official SH degree 0 relu(C0 f + 0.5)."""
    if activation == "relu":
        return torch.relu(raw)
    if activation == "sigmoid":
        return torch.sigmoid(raw)
    if activation == "sh0":
        return torch.relu(SH_C0 * raw + 0.5)
    raise ValueError(f"unknown rgb_activation {activation!r}; expected 'relu', 'sigmoid' or 'sh0'")


def query_field(
    grid: FieldGrid, points_m: Float[Tensor, "B R 3"], with_gradient: bool = False
) -> FieldSamples:
    """Read SDF, colour, semantic logits (and optionally the SDF gradient) at metric ego points.

    One `grid_sample` call reads everything: the gradient grid is concatenated to the values.
    """
    tensors = [grid.values]
    if with_gradient:
        tensors.append(grid.sdf_gradient())
    sampled = sample_grid(torch.cat(tensors, dim=1) if len(tensors) > 1 else tensors[0], points_m, grid.range_m)
    # One split (not four slices): its backward is a single cat instead of four zero-filled full grads.
    sizes = [1, grid.rgb_channels, grid.semantic_channels, 3 if with_gradient else 0]
    sdf, raw_rgb, logits, gradient = torch.split(sampled, sizes, dim=-1)
    rgb = activate_rgb(raw_rgb, grid.rgb_activation) if grid.rgb_channels else None
    return FieldSamples(
        sdf=sdf,
        rgb=rgb,
        semantic_logits=logits if grid.semantic_channels else None,
        sdf_gradient=gradient if with_gradient else None,
    )


def sdf_to_density(sdf: Tensor, inv_s: Tensor | float) -> Tensor:
    """A NeuS-style logistic density s * sigmoid(-s * sdf), for nerfstudio tools that want a density.

    The renderer itself never uses it (it uses NeuS alpha); this only serves `Field.get_density`.
    """
    return inv_s * torch.sigmoid(-inv_s * sdf)
