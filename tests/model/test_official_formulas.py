"""The encoder under the official conventions equals hand computations of the official formulas (explicit loops,
official layouts: planes hw = (Y rows, X cols), zh = (Z, Y), wz = (X, Z), queries flattened row-major):
image cross-attention, cross-plane attention (reference points i / n, offsets in cells, softmax over levels x
points per head), the positional encoding and the pillar reference points."""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import Tensor

from selfocc_ns.model import official
from selfocc_ns.model.tpv import TPVEncoder, TPVEncoderConfig
from selfocc_ns.model.planes import SceneGrid
from selfocc_ns.model.tpv_attention import CrossPlaneSelfAttention, DeformableImageAttention
from selfocc_ns.model.tpv_geometry import (
    cross_plane_reference_grid,
    fourier_features,
    official_plane_cells_unit,
    pillar_points_m,
    project_to_images,
)

OCC_RANGE = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)


def randomise(*linears: torch.nn.Linear, generator: torch.Generator, scale: float = 0.5) -> None:
    with torch.no_grad():
        for linear in linears:
            linear.weight.copy_(scale * torch.randn(linear.weight.shape, generator=generator))
            linear.bias.copy_(scale * torch.randn(linear.bias.shape, generator=generator))


def bilinear_zeros(image: Tensor, x: float, y: float) -> Tensor:
    """Bilinear value of a (C, rows, cols) image at column index x, row index y; corners outside read 0."""
    rows, cols = image.shape[-2:]
    x0, y0 = math.floor(x), math.floor(y)
    value = torch.zeros(image.shape[0], dtype=torch.float64)
    for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            if 0 <= xi < cols and 0 <= yi < rows:
                value += wx * wy * image[:, yi, xi].double()
    return value


def apply(linear: torch.nn.Linear, x: Tensor) -> Tensor:
    return linear.weight.double() @ x.double() + linear.bias.double()


# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_image_cross_attention_equals_the_official_formula() -> None:
    """out = q + W_out (1 / max(|cams(q)|, 1)) sum_{n in cams(q)} concat_m sum_{l,p} A_{m,l,p} bil0(V_{n,l,m},
    (r_{n,p}.x + D_{m,l,p,x} / w_l) w_l - 0.5, (r_{n,p}.y + D_{m,l,p,y} / h_l) h_l - 0.5); A softmax over (l, p)
    per head, D = W_o q + b_o; point p anchored at pillar point p; cams(q): some pillar point strictly inside."""
    generator = torch.Generator().manual_seed(0)
    dim, heads, shapes, points, cams, queries = 4, 2, [(3, 5), (2, 3)], 2, 2, 6
    attention = DeformableImageAttention(dim, heads, len(shapes), points, points, dropout=0.0).eval()
    randomise(attention.value_proj, attention.attention_weights, attention.output_proj, generator=generator)
    randomise(attention.sampling_offsets, generator=generator, scale=0.8)
    feats = [torch.randn(1, cams, dim, h, w, generator=generator) for h, w in shapes]
    refs = torch.rand(cams, queries, points, 2, generator=generator) * 1.4 - 0.2  # normalised u / W, v / H
    refs[:, 5] = 1.5  # a query no camera sees
    visible = ((refs > 0) & (refs < 1)).all(-1)
    q = torch.randn(queries, dim, generator=generator)
    with torch.no_grad():
        out = attention(q[None], feats, (2 * refs - 1)[None], visible[None], query_chunk=4)[0]

    ch = dim // heads
    for i in range(queries):
        seen = [n for n in range(cams) if visible[n, i].any()]
        slot = torch.zeros(dim, dtype=torch.float64)
        for n in seen:
            offsets = apply(attention.sampling_offsets, q[i]).view(heads, len(shapes), points, 2)
            weights = torch.softmax(apply(attention.attention_weights, q[i]).view(heads, -1), -1).view(
                heads, len(shapes), points)
            for m in range(heads):
                for level, (h, w) in enumerate(shapes):
                    values = torch.einsum("oc,chw->ohw", attention.value_proj.weight.double(),
                                          feats[level][0, n].double())
                    values = values + attention.value_proj.bias.double()[:, None, None]
                    for p in range(points):
                        loc_x = refs[n, i, p, 0].double() + offsets[m, level, p, 0] / w
                        loc_y = refs[n, i, p, 1].double() + offsets[m, level, p, 1] / h
                        slot[m * ch:(m + 1) * ch] += weights[m, level, p] * bilinear_zeros(
                            values[m * ch:(m + 1) * ch], float(loc_x * w - 0.5), float(loc_y * h - 0.5))
        expected = q[i].double() + apply(attention.output_proj, slot / max(len(seen), 1))
        torch.testing.assert_close(out[i].double(), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out[5], q[5] + attention.output_proj.bias, atol=1e-6, rtol=0)


def official_cross_view_refs(size_h: int, size_w: int, size_z: int, points: int) -> List[List[List[tuple]]]:
    """refs[query][level][k] = (x, y) in [0, 1) per the official i / n convention, queries in official order
    (hw: h W + w, zh: d H + h, wz: w Z + d), levels [hw, zh, wz], (x, y) = (column, row) of that level's image."""
    def spread(n: int) -> List[float]:
        return [k * (n - 1) / (points - 1) / n for k in range(points)]

    refs = []
    for h in range(size_h):
        for w in range(size_w):
            refs.append([[(w / size_w, h / size_h)] * points, [(h / size_h, d) for d in spread(size_z)],
                         [(d, w / size_w) for d in spread(size_z)]])
    for d in range(size_z):
        for h in range(size_h):
            refs.append([[(wk, h / size_h) for wk in spread(size_w)], [(h / size_h, d / size_z)] * points,
                         [(d / size_z, wk) for wk in spread(size_w)]])
    for w in range(size_w):
        for d in range(size_z):
            refs.append([[(w / size_w, hk) for hk in spread(size_h)], [(hk, d / size_z) for hk in spread(size_h)],
                         [(d / size_z, w / size_w)] * points])
    return refs


def to_our_order(official_rows: Tensor, grid_xyz: Sequence[int]) -> Tensor:
    """Official query rows [hw, zh, wz] -> ours [xy (x Y + y), xz (x Z + z), yz (y Z + z)], by explicit indices."""
    nx, ny, nz = grid_xyz
    hw, zh, wz = official_rows.split([ny * nx, nz * ny, nx * nz])
    xy = torch.stack([hw[iy * nx + ix] for ix in range(nx) for iy in range(ny)])
    yz = torch.stack([zh[iz * ny + iy] for iy in range(ny) for iz in range(nz)])
    return torch.cat([xy, wz, yz])


@torch.no_grad()
def test_cross_plane_attention_equals_the_official_formula() -> None:
    """Official CrossViewHybridAttention: values = W_v Q (no positional code), q' = q + pos, D = W_o q' + b_o
    (head, level [hw, zh, wz], point, 2), A softmax over the 3 P entries of a head; sample at index
    (ref.x + D_x / cols) cols - 0.5, (ref.y + D_y / rows) rows - 0.5 of the level image, zeros outside;
    out = q + W_out concat_m sum A sample. Our module runs on the converted weights and our query order."""
    generator = torch.Generator().manual_seed(1)
    nx, ny, nz = 4, 3, 2
    dim, heads, points = 4, 2, 3
    ours = CrossPlaneSelfAttention(dim, heads, 3, points, dropout=0.0, reference="official").eval()
    value_proj, output_proj = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)
    offsets_off, weights_off = torch.nn.Linear(dim, heads * 3 * points * 2), torch.nn.Linear(dim, heads * 3 * points)
    randomise(value_proj, output_proj, weights_off, generator=generator)
    randomise(offsets_off, generator=generator, scale=0.6)
    with torch.no_grad():
        ours.value_proj.load_state_dict(value_proj.state_dict())
        ours.output_proj.load_state_dict(output_proj.state_dict())
        for name in ("weight", "bias"):
            getattr(ours.sampling_offsets, name).copy_(
                official.self_attn_offsets_to_ours(getattr(offsets_off, name), heads, points))
            getattr(ours.attention_weights, name).copy_(
                official.self_attn_weights_reorder(getattr(weights_off, name), heads, points))
    total = ny * nx + nz * ny + nx * nz
    q_off = torch.randn(total, dim, generator=generator)
    pos_off = torch.randn(total, dim, generator=generator)

    images = [(ny, nx), (nz, ny), (nx, nz)]  # (rows, cols) of hw, zh, wz
    values = (value_proj.weight.double() @ q_off.double().T).T + value_proj.bias.double()
    level_values = [block.T.reshape(dim, rows, cols) for block, (rows, cols) in
                    zip(values.split([r * c for r, c in images]), images)]
    refs = official_cross_view_refs(ny, nx, nz, points)
    ch = dim // heads
    expected = torch.zeros(total, dim, dtype=torch.float64)
    for i in range(total):
        query = q_off[i] + pos_off[i]
        offsets = apply(offsets_off, query).view(heads, 3, points, 2)
        weights = torch.softmax(apply(weights_off, query).view(heads, 3 * points), -1).view(heads, 3, points)
        sampled = torch.zeros(dim, dtype=torch.float64)
        for m in range(heads):
            for level, (rows, cols) in enumerate(images):
                for k in range(points):
                    ref_x, ref_y = refs[i][level][k]
                    x = (ref_x + offsets[m, level, k, 0] / cols) * cols - 0.5
                    y = (ref_y + offsets[m, level, k, 1] / rows) * rows - 0.5
                    sampled[m * ch:(m + 1) * ch] += weights[m, level, k] * bilinear_zeros(
                        level_values[level][m * ch:(m + 1) * ch], float(x), float(y))
        expected[i] = q_off[i].double() + apply(output_proj, sampled)

    grid_xyz = (nx, ny, nz)
    references = cross_plane_reference_grid(grid_xyz, ("xy", "xz", "yz"), points, "official")
    with torch.no_grad():
        out = ours(to_our_order(q_off, grid_xyz)[None], to_our_order(pos_off, grid_xyz),
                   [(nx, ny), (nx, nz), (ny, nz)], references, query_chunk=7)[0]
    torch.testing.assert_close(out.double(), to_our_order(expected, grid_xyz), atol=2e-5, rtol=1e-5)


def official_axis(index: Tensor, size: int, lo: float, hi: float, centred: bool) -> Tensor:
    """The official linear grid2meter in float32: x, y = sign(i - c) |i - c| / c r (c = (n - 1) / 2, r the half
    range), z = sign(d) |d| / (n - 1) (max - min) + min."""
    if centred:
        c, r = (size - 1) // 2, (hi - lo) / 2
        offset = index - c
        return torch.sign(offset) * (offset.abs() / c * r)
    return torch.sign(index) * (index.abs() / (size - 1) * (hi - lo)) + lo


def test_positional_encoding_equals_the_official_features_at_the_full_occ_grid() -> None:
    """f[k 2F + 2j] = sin(pi 2^(j-1) c_k), f[k 2F + 2j + 1] = cos(...), c = ((x, y) hw, (y, z) zh, (x, z) wz)
    normalised over the range; coordinates in the official float32 arithmetic (the top frequency, 1024 pi, turns
    a last-bit difference of the coordinate into ~2e-4)."""
    nx, ny, nz, freqs = 257, 257, 25, 12
    x0, y0, z0, x1, y1, z1 = OCC_RANGE
    ar = lambda n: torch.arange(n, dtype=torch.float32)  # noqa: E731
    xn = (official_axis(ar(nx), nx, x0, x1, True) - x0) / (x1 - x0)
    yn = (official_axis(ar(ny), ny, y0, y1, True) - y0) / (y1 - y0)
    zn = (official_axis(ar(nz), nz, z0, z1, False) - z0) / (z1 - z0)
    omega = torch.pi * 2.0 ** torch.arange(-1, freqs - 1, dtype=torch.float32)

    def features(first: Tensor, second: Tensor) -> Tensor:
        out = torch.empty(first.shape[0], 4 * freqs)
        for k, coord in enumerate((first, second)):
            for j in range(freqs):
                out[:, k * 2 * freqs + 2 * j] = torch.sin(coord * omega[j])
                out[:, k * 2 * freqs + 2 * j + 1] = torch.cos(coord * omega[j])
        return out

    # Our query orders: xy row x Y + y with coordinates (x, y); xz (x, z); yz (y, z).
    expected = {
        "xy": features(xn.repeat_interleave(ny), yn.repeat(nx)),
        "xz": features(xn.repeat_interleave(nz), zn.repeat(nx)),
        "yz": features(yn.repeat_interleave(nz), zn.repeat(ny)),
    }
    for plane, wanted in expected.items():
        got = fourier_features(official_plane_cells_unit(OCC_RANGE, (nx, ny, nz), plane), freqs, "interleaved")
        torch.testing.assert_close(got, wanted, atol=2e-6, rtol=0, msg=plane)
        blocked = fourier_features(official_plane_cells_unit(OCC_RANGE, (nx, ny, nz), plane), freqs, "blocked")
        perm = [(j // 24) * 24 + 2 * (j % 12) + (j % 24) // 12 for j in range(48)]
        assert torch.equal(blocked, got[:, perm]), "blocked is the same features, columns permuted"

    encoder = TPVEncoder(TPVEncoderConfig(pe_num_freqs=3, pe_layout="interleaved", num_layers=1, num_heads=1,
                                          ffn_dim=4, num_points_cross=(2, 2, 2), points_in_pillar=(2, 2, 2),
                                          num_points_self=2), SceneGrid(OCC_RANGE, (5, 3, 4)), 4)
    torch.testing.assert_close(encoder.fourier_yz, fourier_features(
        official_plane_cells_unit(OCC_RANGE, (5, 3, 4), "yz"), 3, "interleaved"), atol=0, rtol=0)


def test_pillar_reference_points_equal_the_official_grid2meter() -> None:
    """hw cell (h, w): points (x(w), y(h), z(d_k)), d_k = linspace(0, Z - 1, P); zh cell (d, h): (x(w_k), y(h), z(d));
    wz cell (w, d): (x(w), y(h_k), z(d)); ours in our query order (xy: x Y + y, yz: y Z + z, xz: x Z + z)."""
    nx, ny, nz = 17, 13, 5
    x0, y0, z0, x1, y1, z1 = (-51.2, -51.2, -4.0, 51.2, 51.2, 5.0)
    rng = (x0, y0, z0, x1, y1, z1)
    px, py, pz = 6, 7, 3  # points along the missing axis: yz planes (x), xz (y), xy (z)
    x = lambda i: official_axis(torch.as_tensor(i, dtype=torch.float32), nx, x0, x1, True)  # noqa: E731
    y = lambda i: official_axis(torch.as_tensor(i, dtype=torch.float32), ny, y0, y1, True)  # noqa: E731
    z = lambda i: official_axis(torch.as_tensor(i, dtype=torch.float32), nz, z0, z1, False)  # noqa: E731
    cases = {
        "xy": ([(ix, iy) for ix in range(nx) for iy in range(ny)], pz,
               lambda c, k: (x(c[0]), y(c[1]), z(k * (nz - 1) / (pz - 1)))),
        "xz": ([(ix, iz) for ix in range(nx) for iz in range(nz)], py,
               lambda c, k: (x(c[0]), y(k * (ny - 1) / (py - 1)), z(c[1]))),
        "yz": ([(iy, iz) for iy in range(ny) for iz in range(nz)], px,
               lambda c, k: (x(k * (nx - 1) / (px - 1)), y(c[0]), z(c[1]))),
    }
    for plane, (cells, count, point) in cases.items():
        wanted = torch.tensor([[[float(v) for v in point(c, k)] for k in range(count)] for c in cells])
        torch.testing.assert_close(pillar_points_m(rng, (nx, ny, nz), plane, count), wanted, atol=2e-5, rtol=0,
                                   msg=plane)


def test_official_visibility_is_strict_and_keeps_points_behind_the_camera_divided_by_eps() -> None:
    """u = a / max(c, 1e-5) / W, v likewise; seen iff c > 1e-5 and 0 < u < 1 and 0 < v < 1; grid = 2 u - 1."""
    image_hw = (4, 8)
    camera = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])[None, None]
    points = torch.tensor([[[0.0, 1.0, 1.0], [2.0, 1.0, 1.0], [8.0, 1.0, 1.0], [1e-7, 2e-7, -3.0]]])
    grid, seen = project_to_images(points, camera, image_hw, visibility="official")
    assert seen[0, 0, 0].tolist() == [False, True, False, False]
    expected_u = torch.tensor([0.0, 2.0, 8.0, 1e-7 / 1e-5]) / 8
    expected_v = torch.tensor([1.0, 1.0, 1.0, 2e-7 / 1e-5]) / 4
    torch.testing.assert_close(grid[0, 0, 0], torch.stack([2 * expected_u - 1, 2 * expected_v - 1], -1))
    _, seen_inclusive = project_to_images(points, camera, image_hw, visibility="inclusive")
    assert seen_inclusive[0, 0, 0].tolist() == [True, True, False, False]
