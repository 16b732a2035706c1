"""Image encoder: FPN shapes/strides, ImageNet normalisation, frozen stem, local weight loading."""

from __future__ import annotations

import pytest
import timm
import torch

from selfocc_ns.model.backbone import ImageEncoder, ImageEncoderConfig


@pytest.mark.parametrize("backbone", ["resnet18", "tv_resnet50"])
def test_fpn_levels_have_strides_4_to_32_and_fpn_channels(backbone: str) -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(backbone=backbone, pretrained=False, fpn_channels=16)).eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        levels = encoder(images)
    assert encoder.strides == [4, 8, 16, 32]
    assert [tuple(level.shape) for level in levels] == [(2, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert all(torch.isfinite(level).all() for level in levels)


def test_images_are_normalised_with_the_imagenet_statistics() -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder(ImageEncoderConfig(backbone="resnet18", pretrained=False, fpn_channels=8)).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = encoder.neck(
            {str(i): f for i, f in enumerate(encoder.backbone((images - mean) / std))}
        )
        got = encoder(images)
    for a, b in zip(got, expected.values()):
        torch.testing.assert_close(a, b)


def test_stem_is_frozen_like_mmdet_and_param_groups_partition_the_trainable_parameters() -> None:
    encoder = ImageEncoder(ImageEncoderConfig(backbone="resnet18", pretrained=False, fpn_channels=8))
    encoder.train()
    assert not encoder.backbone.bn1.training and encoder.backbone.layer1.training
    assert not any(p.requires_grad for p in encoder.backbone.conv1.parameters())
    backbone_ids = {id(p) for p in encoder.backbone_parameters()}
    neck_ids = {id(p) for p in encoder.neck_parameters()}
    trainable_ids = {id(p) for p in encoder.parameters() if p.requires_grad}
    assert backbone_ids.isdisjoint(neck_ids) and backbone_ids | neck_ids == trainable_ids
    assert id(encoder.backbone.conv1.weight) not in backbone_ids
    # The frozen stem gets no gradient, the first stage does.
    # (a plain sum would be blind: the sum of a train-mode BN output does not depend on its input)
    torch.manual_seed(0)
    level = encoder(torch.rand(2, 3, 32, 32))[0]
    (level * torch.randn_like(level)).sum().backward()
    assert encoder.backbone.conv1.weight.grad is None
    # (timm zero-initialises each block's last BN gamma, so that gamma is where the first gradient lands)
    assert encoder.backbone.layer1[0].bn2.weight.grad.abs().sum() > 0


def test_local_weights_file_round_trips_exactly(tmp_path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():  # make BN buffers non-default so they are checked too
        source.bn1.running_mean.uniform_(-1.0, 1.0)
    weights_path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights_path)

    torch.manual_seed(2)  # a different random init, which loading must overwrite
    encoder = ImageEncoder(
        ImageEncoderConfig(backbone="resnet18", pretrained=False, weights_path=weights_path, fpn_channels=8)
    )
    saved = source.state_dict()
    loaded = encoder.backbone.state_dict()
    assert set(loaded) == set(saved) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key


def test_missing_or_foreign_weights_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="weights_path"):
        ImageEncoder(ImageEncoderConfig(backbone="resnet18", weights_path=tmp_path / "nope.pth"))
    foreign = {f"backbone.{k}": v for k, v in timm.create_model("resnet18").state_dict().items()}
    torch.save(foreign, tmp_path / "mmdet_style.pth")
    with pytest.raises(ValueError, match="lacks"):
        ImageEncoder(ImageEncoderConfig(backbone="resnet18", weights_path=tmp_path / "mmdet_style.pth"))


def test_syncbn_conversion_keeps_the_stem_frozen() -> None:
    """`SyncBatchNorm.convert_sync_batchnorm` replaces every BN module (the official SyncBN under DDP); the frozen
    stem BN is looked up by name, so it stays in eval mode and without gradients after the conversion."""
    encoder = ImageEncoder(ImageEncoderConfig(backbone="resnet18", pretrained=False, fpn_channels=8))
    stem_weight = encoder.backbone.bn1.weight
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
    assert isinstance(converted.backbone.bn1, torch.nn.SyncBatchNorm)
    assert isinstance(converted.backbone.layer1[0].bn1, torch.nn.SyncBatchNorm)
    converted.train()
    assert not converted.backbone.bn1.training and converted.backbone.layer1[0].bn1.training
    assert converted.backbone.bn1.weight is stem_weight and not stem_weight.requires_grad
    assert converted.frozen_modules()[1] is converted.backbone.bn1


def test_pipeline_syncbn_is_refused_politely_on_the_cpu(capsys) -> None:
    from selfocc_ns.pipeline import sync_batchnorm

    encoder = ImageEncoder(ImageEncoderConfig(backbone="resnet18", pretrained=False, fpn_channels=8))
    assert sync_batchnorm(encoder, on_cuda=False) is encoder
    assert isinstance(encoder.backbone.bn1, torch.nn.BatchNorm2d)
    assert not isinstance(encoder.backbone.bn1, torch.nn.SyncBatchNorm)
    assert "needs CUDA" in capsys.readouterr().out
    converted = sync_batchnorm(encoder, on_cuda=True)  # conversion itself needs no GPU
    assert isinstance(converted.backbone.layer2[0].bn2, torch.nn.SyncBatchNorm) and not converted.backbone.bn1.training
