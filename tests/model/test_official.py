"""The official state dict <-> this package's model: every manifest key maps to exactly one of our keys with the
exact shape, the conversion round-trips bit for bit, bad checkpoints name their keys, and the official output
layouts (planes, decoded volume) are exact re-arrangements of ours."""

from __future__ import annotations

import re

import pytest
import torch

from selfocc_ns.model import official
from selfocc_ns.model.planes import TPVPlanes
from selfocc_ns.scripts.import_official import build_model

from official_state import PRESETS, manifest_keys, preset_model_config, random_official_state_dict


@pytest.fixture(scope="module")
def preset_models():
    """The three presets' models (built once: ResNet-50 + 257 x 257 planes each)."""
    torch.manual_seed(0)
    return {preset: build_model(preset_model_config(preset)) for preset in PRESETS}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_manifest_key_converts_with_its_exact_shape_and_back_bit_for_bit(preset_models, preset) -> None:
    model = preset_models[preset]
    config = model.config
    manifest = manifest_keys(preset)
    assert len(manifest) == 521
    state = random_official_state_dict(preset, config.range_m)

    # The table built from the model is the manifest: same keys, shapes and dtypes.
    expected = official.expected_official_entries(model)
    assert {name: (shape, str(dtype).replace("torch.", "")) for name, (shape, dtype) in expected.items()} == {
        name: (shape, dtype) for name, shape, dtype in manifest
    }
    official.check_official_state_dict(state, model)

    converted = official.official_to_selfocc(state, config)
    ours = model.state_dict()
    assert set(converted) ^ set(ours) == set(), "zero missing and zero unexpected keys"
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert {k: v.dtype for k, v in converted.items()} == {k: v.dtype for k, v in ours.items()}
    missing, unexpected = model.load_state_dict(converted, strict=True)
    assert missing == [] and unexpected == []

    back = official.selfocc_to_official(model.state_dict(), config)
    assert set(back) == set(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name


def test_conversion_moves_each_value_where_the_official_layout_says(preset_models) -> None:
    """Spot values: query (ix, iy) of the xy plane is official hw query iy X + ix; zh query iz Y + iy is our yz
    row iy Z + iz; cross-plane offset rows: our level 0 (xy) is official level 0 (hw) with x and y swapped, our
    level 1 (xz) official level 2 (wz), our level 2 (yz) official level 1 (zh) swapped; colour rows BGR -> RGB."""
    model = preset_models["novel-depth"]
    config = model.config
    nx, ny, nz = config.grid_xyz
    state = random_official_state_dict("novel-depth", config.range_m, seed=1)
    ours = official.official_to_selfocc(state, config)
    ix, iy, iz = 200, 17, 29
    assert torch.equal(ours["encoder.queries.xy"][ix * ny + iy], state["lifter.tpv_hw"][0, iy * nx + ix])
    assert torch.equal(ours["encoder.queries.yz"][iy * nz + iz], state["lifter.tpv_zh"][0, iz * ny + iy])
    assert torch.equal(ours["encoder.queries.xz"][ix * nz + iz], state["lifter.tpv_wz"][0, ix * nz + iz])

    heads, points = config.encoder.num_heads, config.encoder.num_points_self
    off = state["encoder.layers.2.attentions.0.sampling_offsets.bias"].view(heads, 3, points, 2)
    mine = ours["encoder.layers.2.self_attn.sampling_offsets.bias"].view(heads, 3, points, 2)
    head, point = 4, 7
    assert mine[head, 0, point].tolist() == off[head, 0, point].flip(0).tolist()
    assert mine[head, 1, point].tolist() == off[head, 2, point].tolist()
    assert mine[head, 2, point].tolist() == off[head, 1, point].flip(0).tolist()
    weights = state["encoder.layers.2.attentions.0.attention_weights.weight"].view(heads, 3, points, -1)
    mine_w = ours["encoder.layers.2.self_attn.attention_weights.weight"].view(heads, 3, points, -1)
    assert torch.equal(mine_w[:, 1], weights[:, 2]) and torch.equal(mine_w[:, 2], weights[:, 1])

    rows = state["head.model.field.density_net.3.weight"]
    assert torch.equal(ours["field.decoder.3.weight"], rows[[0, 3, 2, 1]])
    assert ours["renderer.neus_alpha.variance"].shape == ()
    assert float(ours["renderer.neus_alpha.variance"]) == float(state["head.model.field.deviation_network.variance"])
    pairs = {
        "image_encoder.neck.inner_blocks.2.0.weight": "img_neck.lateral_convs.2.conv.weight",
        "image_encoder.neck.layer_blocks.3.0.bias": "img_neck.fpn_convs.3.conv.bias",
        "encoder.layers.1.ffn.3.weight": "encoder.layers.1.ffns.0.layers.1.weight",
        "encoder.layers.3.cross_attn.yz.sampling_offsets.weight":
            "encoder.layers.3.attentions.1.attn_zh.deformable_attention.sampling_offsets.weight",
        "encoder.pos_proj.xz.weight": "encoder.positional_encoding.position_layer_wz.weight",
    }
    for mine_key, official_name in pairs.items():
        assert torch.equal(ours[mine_key], state[official_name]), mine_key


def _renamed(state, old, new):
    return {(new if k == old else k): v for k, v in state.items()}


BAD_CASES = {
    "unknown": (lambda s: {**s, "encoder.layers.9.norms.0.weight": torch.zeros(96)},
                [r"unknown key encoder\.layers\.9\.norms\.0\.weight \(96,\)"]),
    "missing": (lambda s: {k: v for k, v in s.items() if k != "img_neck.fpn_convs.1.conv.weight"},
                [r"missing key img_neck\.fpn_convs\.1\.conv\.weight \(expected shape \[96, 96, 3, 3\], "
                 r"torch\.float32\)"]),
    "misshaped": (lambda s: {**s, "lifter.tpv_zh": torch.zeros(1, 10, 96)},
                  [r"key lifter\.tpv_zh has shape \[1, 10, 96\], expected shape \[1, 7967, 96\]"]),
    "dtype": (lambda s: {**s, "img_backbone.bn1.num_batches_tracked": torch.zeros((), dtype=torch.float32)},
              [r"key img_backbone\.bn1\.num_batches_tracked has dtype torch\.float32, expected torch\.int64"]),
    "renamed": (lambda s: _renamed(s, "encoder.cams_embeds", "encoder.camera_embeds"),
                [r"unknown key encoder\.camera_embeds",
                 r"missing key encoder\.cams_embeds \(expected shape \[6, 96\]"]),
    "aabb": (lambda s: {**s, "head.model.field.aabb": torch.tensor([[-40.0, -40, -1], [40, 40, 5.4]])},
             [r"key head\.model\.field\.aabb is .*scene box"]),
    "background": (lambda s: {**s, "head.model.field_background": torch.zeros(1)},
                   [r"key head\.model\.field_background is 0\.0"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_checkpoints_raise_one_error_naming_each_key(preset_models, case) -> None:
    model = preset_models["depth"]
    corrupt, patterns = BAD_CASES[case]
    state = corrupt(random_official_state_dict("depth", model.config.range_m))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(official.OfficialCheckpointError) as error:
        official.load_official_state_dict(model, state)
    for pattern in patterns:
        assert re.search(pattern, str(error.value)), (pattern, str(error.value))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "nothing may be loaded from a bad checkpoint"


def test_all_problems_are_reported_at_once(preset_models) -> None:
    model = preset_models["depth"]
    state = random_official_state_dict("depth", model.config.range_m)
    state.pop("encoder.level_embeds")
    state["encoder.cams_embeds"] = torch.zeros(5, 96)
    state["extra.key"] = torch.zeros(2)
    with pytest.raises(official.OfficialCheckpointError, match=r"\(3 problems\)") as error:
        official.check_official_state_dict(state, model)
    assert "encoder.level_embeds" in str(error.value) and "extra.key" in str(error.value)


def test_wrapped_and_ddp_checkpoints_unwrap_and_other_objects_are_refused() -> None:
    state = {"a.weight": torch.zeros(2)}
    assert official.unwrap_state_dict(state) == state
    assert official.unwrap_state_dict({"state_dict": state, "epoch": 11}) == state
    assert official.unwrap_state_dict({"module.a.weight": state["a.weight"]}) == state
    with pytest.raises(official.OfficialCheckpointError, match="expected a state dict"):
        official.unwrap_state_dict([1, 2])
    with pytest.raises(official.OfficialCheckpointError, match="expected a state dict"):
        official.unwrap_state_dict({"state_dict": {"a": 3}})


def test_configs_with_other_conventions_are_refused(preset_models) -> None:
    import dataclasses

    config = preset_models["novel-depth"].config
    changed = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, pe_layout="blocked"),
                                  field=dataclasses.replace(config.field, rgb_activation="relu"))
    with pytest.raises(official.OfficialCheckpointError) as error:
        official.official_to_selfocc({}, changed)
    assert "encoder.pe_layout is 'blocked'" in str(error.value)
    assert "field.rgb_activation is 'relu'" in str(error.value)


def test_key_renames_are_mutual_inverses(preset_models) -> None:
    for preset, model in preset_models.items():
        for key in model.state_dict():
            if key == official.OUR_DEVICE_KEY:
                continue
            name = official.official_key(key)
            assert name is not None and official.our_key(name) == key, (preset, key, name)
    assert official.our_key("lifter.tpv_hwx") is None and official.official_key("encoder.queries.zz") is None


def test_official_plane_and_volume_layouts_are_exact_rearrangements() -> None:
    generator = torch.Generator().manual_seed(0)
    nx, ny, nz, channels = 5, 4, 3, 2
    planes = TPVPlanes(torch.randn(1, channels, nx, ny, generator=generator),
                       torch.randn(1, channels, nx, nz, generator=generator),
                       torch.randn(1, channels, ny, nz, generator=generator))
    hw, zh, wz = official.planes_to_official(planes)
    ix, iy, iz = 3, 2, 1
    assert torch.equal(hw[0, iy * nx + ix], planes.xy[0, :, ix, iy])
    assert torch.equal(zh[0, iz * ny + iy], planes.yz[0, :, iy, iz])
    assert torch.equal(wz[0, ix * nz + iz], planes.xz[0, :, ix, iz])
    again = official.planes_from_official(hw, zh, wz, (nx, ny, nz))
    assert all(torch.equal(a, b) for a, b in zip((again.xy, again.xz, again.yz), (planes.xy, planes.xz, planes.yz)))

    values = torch.randn(1, 6, nx, ny, nz, generator=generator)  # SDF, R, G, B, 2 logits
    density_color = official.grid_to_official(values, has_rgb=True)
    assert density_color.shape == (1, 6, ny, nx, nz)
    assert torch.equal(density_color[0, :, iy, ix, iz], values[0, [0, 3, 2, 1, 4, 5], ix, iy, iz])
    assert torch.equal(official.grid_to_official(values, has_rgb=False)[0, :, iy, ix, iz], values[0, :, ix, iy, iz])


def test_encode_features_returns_the_model_planes_and_grid_in_both_layouts() -> None:
    """encode_features = the model's encoder + field on given FPN features and official metas, in eval mode."""
    from torch import nn

    from selfocc_ns.configs.common import official_conventions
    from selfocc_ns.model.field import SelfOccFieldConfig
    from selfocc_ns.model.selfocc import SelfOccModelConfig
    from selfocc_ns.model.tpv import TPVEncoderConfig

    config = official_conventions(SelfOccModelConfig(
        range_m=(-40.0, -40.0, -1.0, 40.0, 40.0, 5.4), grid_xyz=(9, 7, 5),
        encoder=TPVEncoderConfig(num_layers=1, num_heads=2, ffn_dim=8, num_cams=2, num_points_cross=(4, 4, 2),
                                 points_in_pillar=(4, 4, 2), num_points_self=3, pe_num_freqs=4, dropout=0.5),
        field=SelfOccFieldConfig(hidden_dim=8, num_semantic_classes=3),
    ))
    torch.manual_seed(0)
    holder = nn.Module()
    holder.encoder = config.encoder.setup(scene=config.scene, dim=8)
    holder.field = config.field.setup(scene=config.scene, feature_dim=8)
    holder.train()
    feats = [torch.randn(1, 2, 8, 32 // s, 64 // s) for s in (4, 8, 16, 32)]
    lidar2img = torch.tensor([[[30.0, -10, 0, 32], [0, -5, -30, 16], [1, 0, 0, 0], [0, 0, 0, 1]],
                              [[-30.0, 10, 0, 32], [0, 5, -30, 16], [-1, 0, 0, 0], [0, 0, 0, 1]]])
    out = official.encode_features(holder, feats, lidar2img, (32, 64, 3))
    assert holder.training, "the model's mode is restored"
    from_metas = official.encode_features_from_metas(holder, feats, [{"lidar2img": lidar2img.numpy(),
                                                                      "img_shape": (32, 64, 3)}])
    assert torch.equal(from_metas.density_color, out.density_color)
    holder.eval()
    with torch.no_grad():
        planes = holder.encoder(feats, lidar2img[None], (32, 64))
        grid = holder.field.decode(planes)
    assert torch.equal(out.planes.xy, planes.xy) and torch.equal(out.grid.values, grid.values)
    assert torch.equal(out.tpv_hw, official.planes_to_official(planes)[0])
    assert out.density_color.shape == (1, 1 + 3 + 3, 7, 9, 5)
    assert torch.equal(out.sdf[0, 0, 2, 6, 4], grid.values[0, 0, 6, 2, 4])
    assert torch.equal(out.density_color[0, 1, 2, 6, 4], grid.values[0, 3, 6, 2, 4])  # official channel 1 = blue
