"""The official SelfOcc state dict (the released `model_state_dict.pth` of nuscenes_occ, nuscenes_depth and
nuscenes_novel_depth) in this package's model, back again, and the official layouts of the encoder's and the
field's outputs.

The conversion is a change of layout only (bitwise: `selfocc_to_official(official_to_selfocc(sd))` is `sd`),
because the model is configured with the official conventions (`configs/common.official_conventions`:
cross-plane references i / n, interleaved positional code, SH-degree-0 colour, ...). Parameter groups:

| official | selfocc-ns | transform |
|---|---|---|
| `img_backbone.*` (ResNet-50, 318 keys) | `image_encoder.backbone.*` | copy |
| `img_neck.lateral_convs.i.conv.*` | `image_encoder.neck.inner_blocks.i.0.*` | copy |
| `img_neck.fpn_convs.i.conv.*` | `image_encoder.neck.layer_blocks.i.0.*` | copy |
| `lifter.tpv_hw` (1, Y X, C), query y X + x | `encoder.queries.xy` (X Y, C), row x Y + y | transpose |
| `lifter.tpv_zh` (1, Z Y, C), query z Y + y | `encoder.queries.yz` (Y Z, C), row y Z + z | transpose |
| `lifter.tpv_wz` (1, X Z, C) | `encoder.queries.xz` (X Z, C) | drop the batch axis |
| `encoder.level_embeds`, `encoder.cams_embeds` | same | copy |
| `encoder.positional_encoding.position_layer_{hw,zh,wz}.*` | `encoder.pos_proj.{xy,yz,xz}.*` | copy |
| `encoder.layers.L.attentions.0.*` (cross-plane) | `encoder.layers.L.self_attn.*` | level rows, see below |
| `....attentions.1.attn_{hw,zh,wz}.deformable_attention.*` | `....cross_attn.{xy,yz,xz}.*` | copy |
| `....attentions.1.attn_{hw,zh,wz}.output_proj.*` | `....cross_attn.{xy,yz,xz}.output_proj.*` | copy |
| `....ffns.0.layers.0.0.*` / `....ffns.0.layers.1.*` | `....ffn.0.*` / `....ffn.3.*` | copy |
| `encoder.layers.L.norms.{0,1,2}.*` | same | copy |
| `head.model.field.density_net.{1,3}.*` | `field.decoder.{1,3}.*` | rows 1..3 (colour) BGR -> RGB |
| `head.model.field.deviation_network.variance` (1,) | `renderer.neus_alpha.variance` () | reshape |
| `head.model.field.aabb`, `head.model.field_background` | none | checked (the scene box; 1), dropped |
| `head.model.device_indicator_param` (0,) | `device_indicator_param` (0,) | checked (empty), ours kept |

Cross-plane attention rows (head, level, point, (x, y)): the official levels [hw, zh, wz] become ours
[xy, xz, yz], and the (x, y) offset components swap on xy and yz, whose images are the official ones transposed.

The planes: official hw = our xy transposed ((Y, X) images), zh = yz transposed, wz = xz; the official decoded
volume `density_color` is (B, K, Y, X, Z) with channels [SDF, B, G, R raw colour, 21 logits], ours (B, K, X, Y, Z)
with [SDF, R, G, B, logits]. `encode_features` runs the encoder and the field on given FPN features and the official
per-camera `lidar2img` / `img_shape` and returns both layouts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from selfocc_ns.model.field_grid import FieldGrid
from selfocc_ns.model.planes import TPVPlanes

AABB_KEY = "head.model.field.aabb"
BACKGROUND_KEY = "head.model.field_background"
DEVICE_KEY = "head.model.device_indicator_param"
OUR_DEVICE_KEY = "device_indicator_param"
FROZEN_KEYS = (AABB_KEY, BACKGROUND_KEY, DEVICE_KEY)
"""Official entries that carry no learned value: the scene box, the dummy background model, an empty tensor."""

OFFICIAL_PLANE = {"xy": "hw", "yz": "zh", "xz": "wz"}
"""Our plane -> the official plane (h = y, w = x, d = z)."""
SELF_ATTN_LEVELS = (0, 2, 1)
"""Our cross-plane levels [xy, xz, yz] in the official level order [hw, zh, wz]."""
SELF_ATTN_SWAPPED = (True, False, True)
"""Per our level: its image is the transpose of the official one, so the (x, y) offset components swap."""


class OfficialCheckpointError(ValueError):
    """An official state dict that does not fit the model: every offending key is listed."""


@dataclass(frozen=True)
class OfficialLayout:
    """What the conversion needs from a model config: the TPV grid, the cross-plane attention and the colour head."""

    grid_xyz: Tuple[int, int, int]
    num_heads: int
    num_points_self: int
    has_rgb: bool
    range_m: Tuple[float, float, float, float, float, float]

    @classmethod
    def of(cls, model_config) -> "OfficialLayout":
        """The layout of a `SelfOccModelConfig`; refuses configs whose weights mean something else than the
        official ones (see `convention_mismatches`)."""
        mismatches = convention_mismatches(model_config)
        if mismatches:
            raise OfficialCheckpointError(
                "the model is not configured with the official conventions, so official weights would compute "
                "something else:\n  " + "\n  ".join(mismatches)
            )
        encoder = model_config.encoder
        return cls(tuple(model_config.grid_xyz), encoder.num_heads, encoder.num_points_self,
                   bool(model_config.field.use_rgb), tuple(model_config.range_m))


def convention_mismatches(model_config) -> List[str]:
    """Config values under which the official weights would not be the official computation (the conversion
    changes layouts only; see configs/common.official_conventions)."""
    wanted = [
        ("encoder.representation", model_config.encoder.representation, "tpv"),
        ("encoder.self_attn_reference", model_config.encoder.self_attn_reference, "official"),
        ("encoder.pe_layout", model_config.encoder.pe_layout, "interleaved"),
        ("field.sdf_prior", model_config.field.sdf_prior, "none"),
        ("field.sdf_output_scale_m", model_config.field.sdf_output_scale_m, 1.0),
    ]
    if model_config.field.use_rgb:
        wanted.append(("field.rgb_activation", model_config.field.rgb_activation, "sh0"))
    return [f"{name} is {value!r}, the official value is {official!r}" for name, value, official in wanted
            if value != official]


# ----------------------------------------------------------------------------------------------
# Tensor layouts (each pair is exact and mutually inverse)
# ----------------------------------------------------------------------------------------------


def plane_queries_to_ours(official: Float[Tensor, "1 Q C"], plane: str, grid_xyz: Sequence[int]) -> Tensor:
    """Official lifter queries of a plane -> our row-major plane queries (xy: (X Y, C), yz: (Y Z, C), xz: (X Z, C))."""
    nx, ny, nz = grid_xyz
    flat = official[0]
    if plane == "xy":
        return flat.reshape(ny, nx, -1).transpose(0, 1).reshape(nx * ny, -1)
    if plane == "yz":
        return flat.reshape(nz, ny, -1).transpose(0, 1).reshape(ny * nz, -1)
    return flat.clone()


def plane_queries_to_official(ours: Float[Tensor, "Q C"], plane: str, grid_xyz: Sequence[int]) -> Tensor:
    """Inverse of `plane_queries_to_ours`: (1, Q, C) in the official query order of that plane."""
    nx, ny, nz = grid_xyz
    if plane == "xy":
        return ours.reshape(nx, ny, -1).transpose(0, 1).reshape(1, ny * nx, -1)
    if plane == "yz":
        return ours.reshape(ny, nz, -1).transpose(0, 1).reshape(1, nz * ny, -1)
    return ours[None].clone()


def self_attn_offsets_to_ours(official: Tensor, num_heads: int, num_points: int) -> Tensor:
    """Cross-plane `sampling_offsets` weight or bias, rows (head, level, point, xy): official levels [hw, zh, wz]
    -> ours [xy, xz, yz], (x, y) swapped on the levels whose image is transposed."""
    rows = official.reshape(num_heads, 3, num_points, 2, -1)
    levels = [rows[:, lo].flip(2) if swap else rows[:, lo] for lo, swap in zip(SELF_ATTN_LEVELS, SELF_ATTN_SWAPPED)]
    return torch.stack(levels, dim=1).reshape(official.shape)


def self_attn_offsets_to_official(ours: Tensor, num_heads: int, num_points: int) -> Tensor:
    """Inverse of `self_attn_offsets_to_ours`."""
    rows = ours.reshape(num_heads, 3, num_points, 2, -1)
    levels: List[Optional[Tensor]] = [None, None, None]
    for ours_level, (lo, swap) in enumerate(zip(SELF_ATTN_LEVELS, SELF_ATTN_SWAPPED)):
        levels[lo] = rows[:, ours_level].flip(2) if swap else rows[:, ours_level]
    return torch.stack(levels, dim=1).reshape(ours.shape)  # type: ignore[arg-type]


def self_attn_weights_reorder(weights: Tensor, num_heads: int, num_points: int) -> Tensor:
    """Cross-plane `attention_weights` weight or bias, rows (head, level, point): levels [0, 2, 1], its own inverse."""
    rows = weights.reshape(num_heads, 3, num_points, -1)
    return rows[:, list(SELF_ATTN_LEVELS)].reshape(weights.shape)


def colour_rows_reorder(values: Tensor, has_rgb: bool) -> Tensor:
    """Decoder output rows (or volume channels) [SDF, c0, c1, c2, ...]: colour BGR <-> RGB, its own inverse."""
    if not has_rgb:
        return values.clone()
    order = [0, 3, 2, 1, *range(4, values.shape[0])]
    return values[order]


# ----------------------------------------------------------------------------------------------
# Key names
# ----------------------------------------------------------------------------------------------

_Rule = Tuple[str, str]
"""(official key regex, our key template): official group k becomes our \\k. `_inverse_rule` reads it backwards."""

_ATTN_PARTS = r"(sampling_offsets|attention_weights|value_proj|output_proj)"
_IMAGE_ATTN_PARTS = r"(sampling_offsets|attention_weights|value_proj)"
_PARAM = r"(weight|bias)"
_RENAMES: List[_Rule] = [
    (r"img_backbone\.(.+)", r"image_encoder.backbone.\1"),
    (rf"img_neck\.lateral_convs\.(\d+)\.conv\.{_PARAM}", r"image_encoder.neck.inner_blocks.\1.0.\2"),
    (rf"img_neck\.fpn_convs\.(\d+)\.conv\.{_PARAM}", r"image_encoder.neck.layer_blocks.\1.0.\2"),
    *[(rf"lifter\.tpv_{official}", f"encoder.queries.{ours}") for ours, official in OFFICIAL_PLANE.items()],
    (r"encoder\.(level_embeds|cams_embeds)", r"encoder.\1"),
    *[(rf"encoder\.positional_encoding\.position_layer_{official}\.{_PARAM}", f"encoder.pos_proj.{ours}.\\1")
      for ours, official in OFFICIAL_PLANE.items()],
    (rf"encoder\.layers\.(\d+)\.attentions\.0\.{_ATTN_PARTS}\.{_PARAM}", r"encoder.layers.\1.self_attn.\2.\3"),
    *[(rf"encoder\.layers\.(\d+)\.attentions\.1\.attn_{official}\.deformable_attention\.{_IMAGE_ATTN_PARTS}"
       rf"\.{_PARAM}", f"encoder.layers.\\1.cross_attn.{ours}.\\2.\\3") for ours, official in OFFICIAL_PLANE.items()],
    *[(rf"encoder\.layers\.(\d+)\.attentions\.1\.attn_{official}\.output_proj\.{_PARAM}",
       f"encoder.layers.\\1.cross_attn.{ours}.output_proj.\\2") for ours, official in OFFICIAL_PLANE.items()],
    (rf"encoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.{_PARAM}", r"encoder.layers.\1.ffn.0.\2"),
    (rf"encoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.{_PARAM}", r"encoder.layers.\1.ffn.3.\2"),
    (rf"encoder\.layers\.(\d+)\.norms\.(\d+)\.{_PARAM}", r"encoder.layers.\1.norms.\2.\3"),
    (rf"head\.model\.field\.density_net\.(1|3)\.{_PARAM}", r"field.decoder.\1.\2"),
    (r"head\.model\.field\.deviation_network\.variance", r"renderer.neus_alpha.variance"),
]

_GROUP = re.compile(r"\((?:[^()])*\)")
"""A regex group without nested groups (all groups of `_RENAMES` are)."""
_BACKREF = re.compile(r"\\(\d)")


def _inverse_rule(rule: _Rule) -> _Rule:
    """(our key regex, official key template) of a rule: each \\k of our template becomes official group k's
    pattern, each official group becomes a reference to the group of our regex that captured it."""
    official_regex, our_template = rule
    groups = _GROUP.findall(official_regex)
    used = [int(k) for k in _BACKREF.findall(our_template)]
    pieces = _BACKREF.split(our_template)  # literal, group number, literal, ...
    our_regex = "".join(re.escape(piece) if i % 2 == 0 else groups[int(piece) - 1] for i, piece in enumerate(pieces))
    counter = iter(range(1, len(groups) + 1))
    official_template = _GROUP.sub(lambda _: f"\\{used.index(next(counter)) + 1}", official_regex)
    return our_regex, official_template.replace("\\.", ".")


_TO_OURS = [(re.compile(regex + r"\Z"), template) for regex, template in _RENAMES]
_TO_OFFICIAL = [(re.compile(regex + r"\Z"), template) for regex, template in map(_inverse_rule, _RENAMES)]


def _rename(key: str, rules) -> Optional[str]:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return match.expand(template)
    return None


def our_key(official_key: str) -> Optional[str]:
    """Our state-dict key of an official one (None for the frozen entries and unknown keys)."""
    return _rename(official_key, _TO_OURS)


def official_key(key: str) -> Optional[str]:
    """The official state-dict key of one of ours (None for keys without an official counterpart)."""
    return _rename(key, _TO_OFFICIAL)


def _transform(key: str, layout: OfficialLayout, to_ours: bool) -> Callable[[Tensor], Tensor]:
    """The tensor transform of our key `key` in the direction asked for."""
    match = re.fullmatch(r"encoder\.queries\.(xy|yz|xz)", key)
    if match:
        plane = match.group(1)
        if to_ours:
            return lambda t: plane_queries_to_ours(t, plane, layout.grid_xyz)
        return lambda t: plane_queries_to_official(t, plane, layout.grid_xyz)
    heads, points = layout.num_heads, layout.num_points_self
    if re.fullmatch(r"encoder\.layers\.\d+\.self_attn\.sampling_offsets\.(weight|bias)", key):
        if to_ours:
            return lambda t: self_attn_offsets_to_ours(t, heads, points)
        return lambda t: self_attn_offsets_to_official(t, heads, points)
    if re.fullmatch(r"encoder\.layers\.\d+\.self_attn\.attention_weights\.(weight|bias)", key):
        return lambda t: self_attn_weights_reorder(t, heads, points)
    if re.fullmatch(r"field\.decoder\.3\.(weight|bias)", key):
        return lambda t: colour_rows_reorder(t, layout.has_rgb)
    if key == "renderer.neus_alpha.variance":
        return (lambda t: t.reshape(())) if to_ours else (lambda t: t.reshape(1))
    return lambda t: t.clone()


def official_aabb(range_m: Sequence[float]) -> Tensor:
    """The official field aabb of a scene box: [[x_min, y_min, z_min], [x_max, y_max, z_max]], float32."""
    return torch.tensor([list(range_m[:3]), list(range_m[3:])], dtype=torch.float32)


# ----------------------------------------------------------------------------------------------
# State dicts
# ----------------------------------------------------------------------------------------------


def unwrap_state_dict(loaded) -> Dict[str, Tensor]:
    """The state dict of a loaded official checkpoint: the bare dict or `{'state_dict': ...}` (as the official
    train.py / eval scripts accept); a uniform DDP `module.` prefix is removed."""
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else loaded
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise OfficialCheckpointError("expected a state dict (name -> tensor) or {'state_dict': state dict}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _renamed(state_dict: Mapping[str, Tensor], skipped: Sequence[str], rename: Callable[[str], Optional[str]],
             transform: Callable[[str, str, Tensor], Tensor], unknown_message: str) -> Dict[str, Tensor]:
    """Every entry of `state_dict` but `skipped`, under its `rename`d key, as `transform(key, new_key, value)`;
    the keys `rename` does not know are listed in one error."""
    converted: Dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in skipped:
            continue
        new_key = rename(key)
        if new_key is None:
            unknown.append(key)
            continue
        converted[new_key] = transform(key, new_key, value)
    if unknown:
        raise OfficialCheckpointError(f"{unknown_message}:\n  " + "\n  ".join(unknown))
    return converted


def official_to_selfocc(state_dict: Mapping[str, Tensor], model_config) -> Dict[str, Tensor]:
    """Official state dict -> this package's `SelfOccModel.state_dict()` for `model_config` (layout changes only).

    The frozen entries (`FROZEN_KEYS`) are dropped, our empty `device_indicator_param` is added. Unknown keys
    raise; use `check_official_state_dict` first for a full report against a model.
    """
    layout = OfficialLayout.of(model_config)
    converted = _renamed(state_dict, FROZEN_KEYS, our_key,
                         lambda _, ours, value: _transform(ours, layout, to_ours=True)(value), "unknown official keys")
    converted[OUR_DEVICE_KEY] = torch.empty(0)
    return converted


def selfocc_to_official(state_dict: Mapping[str, Tensor], model_config) -> Dict[str, Tensor]:
    """Inverse of `official_to_selfocc`: our state dict -> the official one, frozen entries included (the aabb
    from `range_m`, a background of 1, an empty device indicator)."""
    layout = OfficialLayout.of(model_config)
    converted = _renamed(state_dict, (OUR_DEVICE_KEY,), official_key,
                         lambda ours, _, value: _transform(ours, layout, to_ours=False)(value),
                         "keys without an official counterpart")
    converted[BACKGROUND_KEY] = torch.ones(1)
    converted[DEVICE_KEY] = torch.empty(0)
    converted[AABB_KEY] = official_aabb(layout.range_m)
    return converted


def expected_official_entries(model) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of the official state dict that fits `model` (a `SelfOccModel`), built from the
    model's own state dict."""
    official = selfocc_to_official(model.state_dict(), model.config)
    return {key: (tuple(value.shape), value.dtype) for key, value in official.items()}


def check_official_state_dict(state_dict: Mapping[str, Tensor], model) -> None:
    """Raise `OfficialCheckpointError` listing every unknown, missing, mis-shaped or mis-typed key (with the
    expected shape) and every frozen entry with another value than the model's (aabb = its scene box)."""
    expected = expected_official_entries(model)
    problems = [f"unknown key {key} {tuple(value.shape)}" for key, value in state_dict.items() if key not in expected]
    problems += [f"missing key {key} (expected shape {list(shape)}, {dtype})" for key, (shape, dtype) in
                 expected.items() if key not in state_dict]
    for key, value in state_dict.items():
        if key not in expected:
            continue
        shape, dtype = expected[key]
        if tuple(value.shape) != shape:
            problems.append(f"key {key} has shape {list(value.shape)}, expected shape {list(shape)}")
        elif value.dtype != dtype:
            problems.append(f"key {key} has dtype {value.dtype}, expected {dtype}")
    aabb = state_dict.get(AABB_KEY)
    if aabb is not None and aabb.shape == (2, 3):
        wanted = official_aabb(model.config.range_m)
        if not torch.allclose(aabb.float(), wanted, atol=1e-4, rtol=0):
            problems.append(f"key {AABB_KEY} is {aabb.tolist()}, but the model's scene box (range_m) is "
                            f"{wanted.tolist()}: the checkpoint belongs to another preset or reference frame")
    background = state_dict.get(BACKGROUND_KEY)
    if background is not None and background.shape == (1,) and float(background) != 1.0:
        problems.append(f"key {BACKGROUND_KEY} is {float(background)}, expected the dummy background 1.0")
    if problems:
        raise OfficialCheckpointError(
            f"the official state dict does not fit this model ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )


def load_official_state_dict(model, state_dict: Mapping[str, Tensor]) -> None:
    """Check, convert and load an official state dict into `model` (nothing is loaded if a check fails)."""
    check_official_state_dict(state_dict, model)
    model.load_state_dict(official_to_selfocc(state_dict, model.config), strict=True)


# ----------------------------------------------------------------------------------------------
# Outputs in the official layouts, and the feature-level entry point
# ----------------------------------------------------------------------------------------------


def planes_to_official(planes: TPVPlanes) -> Tuple[Tensor, Tensor, Tensor]:
    """Our planes -> the official encoder outputs tpv_hw (B, Y X, C), tpv_zh (B, Z Y, C), tpv_wz (B, X Z, C)."""
    assert planes.xz is not None and planes.yz is not None, "BEV planes have no official TPV layout"
    hw = planes.xy.permute(0, 3, 2, 1).flatten(1, 2)
    zh = planes.yz.permute(0, 3, 2, 1).flatten(1, 2)
    wz = planes.xz.permute(0, 2, 3, 1).flatten(1, 2)
    return hw, zh, wz


def planes_from_official(tpv_hw: Tensor, tpv_zh: Tensor, tpv_wz: Tensor, grid_xyz: Sequence[int]) -> TPVPlanes:
    """Inverse of `planes_to_official`."""
    nx, ny, nz = grid_xyz
    batch, _, channels = tpv_hw.shape
    xy = tpv_hw.reshape(batch, ny, nx, channels).permute(0, 3, 2, 1)
    yz = tpv_zh.reshape(batch, nz, ny, channels).permute(0, 3, 2, 1)
    xz = tpv_wz.reshape(batch, nx, nz, channels).permute(0, 3, 1, 2)
    return TPVPlanes(xy.contiguous(), xz.contiguous(), yz.contiguous())


def grid_to_official(values: Float[Tensor, "B K X Y Z"], has_rgb: bool) -> Float[Tensor, "B K Y X Z"]:
    """Our decoded grid -> the official `density_color` (B, K, Y, X, Z), colour channels in BGR order."""
    return colour_rows_reorder(values.transpose(0, 1), has_rgb).transpose(0, 1).transpose(2, 3)


@dataclass
class OfficialFeatureOutputs:
    """`encode_features`: the encoder's planes and the decoded grid, in the official layouts and in ours."""

    tpv_hw: Float[Tensor, "B YX C"]
    tpv_zh: Float[Tensor, "B ZY C"]
    tpv_wz: Float[Tensor, "B XZ C"]
    density_color: Float[Tensor, "B K Y X Z"]
    """The official decoded volume: channel 0 SDF (metres), 1..3 raw colour B, G, R (before relu(C0 f + 0.5)),
    then the semantic logits; h (y) first, then w (x), then z."""
    planes: TPVPlanes
    grid: FieldGrid

    @property
    def sdf(self) -> Float[Tensor, "B 1 Y X Z"]:
        return self.density_color[:, :1]


@torch.no_grad()
def encode_features(
    model,
    mlvl_feats: Sequence[Float[Tensor, "B N C hl wl"]],
    lidar2img: Float[Tensor, "B N 4 4"],
    img_shape: Sequence[int],
) -> OfficialFeatureOutputs:
    """Run a model's TPV encoder and field on multi-level image features, as the official code does from its
    FPN outputs on: `mlvl_feats` are the 4 FPN levels (B, N cameras, C, h_l, w_l), `lidar2img` the official
    per-camera metas (full-resolution K times world-to-camera, into the reference frame: ego for occ, LiDAR for
    the depth presets) and `img_shape` (H, W, ...) the image size those matrices refer to (the pre-resize crop,
    e.g. 768 x 1600). The model runs in eval mode (no dropout) and is put back in its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        feats = list(mlvl_feats)
        device = feats[0].device
        matrices = torch.as_tensor(lidar2img, dtype=torch.float32, device=device)
        if matrices.dim() == 3:
            matrices = matrices[None]
        planes = model.encoder(feats, matrices, (int(img_shape[0]), int(img_shape[1])))
        grid = model.field.decode(planes)
    finally:
        model.train(was_training)
    hw, zh, wz = planes_to_official(planes)
    density_color = grid_to_official(grid.values, grid.rgb_channels > 0)
    return OfficialFeatureOutputs(hw, zh, wz, density_color, planes, grid)


def encode_features_from_metas(
    model, mlvl_feats: Sequence[Float[Tensor, "B N C hl wl"]], metas: Sequence[Mapping]
) -> OfficialFeatureOutputs:
    """`encode_features` with the official `img_metas` list (one dict per batch item with 'lidar2img' (N, 4, 4)
    and 'img_shape'; the first item's img_shape is used, as the official point_sampling does)."""
    lidar2img = torch.stack([torch.as_tensor(meta["lidar2img"], dtype=torch.float32) for meta in metas])
    return encode_features(model, mlvl_feats, lidar2img, metas[0]["img_shape"])
