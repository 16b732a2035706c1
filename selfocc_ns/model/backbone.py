"""Image encoder: a timm backbone (ResNet-50 with torchvision's ImageNet weights by default) + FPN neck.

Faithful to the official SelfOcc config: mmdet ResNet-50, out_indices (0, 1, 2, 3) (strides 4..32),
``frozen_stages=0`` (the stem conv1/bn1 frozen, its BN kept in eval mode), ``norm_eval=False``, and an
FPN from [256, 512, 1024, 2048] to 96 channels with 4 outputs (no extra levels, since num_outs equals
the number of inputs). Here the backbone comes from ``timm.create_model(..., features_only=True)``,
whose out_indices count the stem as index 0, so the same four stages are (1, 2, 3, 4).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Type

import timm
import torch
from jaxtyping import Float
from nerfstudio.configs.base_config import InstantiateConfig
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork


@dataclass
class ImageEncoderConfig(InstantiateConfig):
    """Configuration of the image backbone + FPN neck."""

    _target: Type = field(default_factory=lambda: ImageEncoder)
    backbone: str = "tv_resnet50"
    """timm 0.6.x model name; `tv_resnet50` is torchvision's ImageNet ResNet-50 (the official checkpoint)."""
    pretrained: bool = True
    """Load ImageNet weights through timm's own download/cache (tests use False)."""
    weights_path: Optional[Path] = None
    """A local checkpoint (state dict in timm/torchvision key names) loaded through timm's own loading, no
    download. When set it is used whatever `pretrained` says."""
    out_indices: Tuple[int, ...] = (1, 2, 3, 4)
    """timm feature indices (0 is the stem); (1, 2, 3, 4) are the ResNet stages at strides 4, 8, 16, 32."""
    fpn_channels: int = 96
    """Output channels of every FPN level (the TPV feature dim)."""
    frozen_stages: int = 0
    """mmdet semantics: -1 trains everything, 0 freezes the stem (conv1 + bn1, BN in eval mode), k > 0 also
    freezes stages 1..k. The official config uses 0."""


def _frozen_module_names(frozen_stages: int) -> List[str]:
    """Names of the timm ResNet modules frozen by mmdet's `frozen_stages` rule."""
    if frozen_stages < 0:
        return []
    return ["conv1", "bn1"] + [f"layer{i}" for i in range(1, frozen_stages + 1)]


class ImageEncoder(nn.Module):
    """Backbone + FPN: images in [0, 1] -> one 96-channel feature map per stride (4, 8, 16, 32)."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _create_backbone(config)
        pretrained_cfg = self.backbone.pretrained_cfg
        # The ImageNet statistics the backbone's weights were trained with (timm records them per model).
        self.register_buffer("pixel_mean", torch.tensor(pretrained_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pretrained_cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.strides: List[int] = list(self.backbone.feature_info.reduction())
        self.neck = FeaturePyramidNetwork(self.backbone.feature_info.channels(), config.fpn_channels)
        for module in self.neck.modules():
            if isinstance(module, nn.Conv2d):
                # mmdet's FPN initialises its convs xavier-uniform with zero bias.
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Names, not modules: `SyncBatchNorm.convert_sync_batchnorm` replaces the BN modules (keeping their
        # parameters and so requires_grad), and the frozen ones must stay in eval mode after that too.
        self._frozen_names = _frozen_module_names(config.frozen_stages)
        for module in self.frozen_modules():
            module.requires_grad_(False)
        self.train()

    def frozen_modules(self) -> List[nn.Module]:
        """The backbone modules frozen by `frozen_stages` (looked up now, so a converted BN is found)."""
        return [getattr(self.backbone, name) for name in getattr(self, "_frozen_names", [])]

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        # Frozen parts keep their BN statistics fixed, as mmdet's ResNet does.
        for module in self.frozen_modules():
            module.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable backbone parameters (the model gives them lr x 0.1); frozen ones are left out."""
        return (p for p in self.backbone.parameters() if p.requires_grad)

    def neck_parameters(self) -> Iterator[nn.Parameter]:
        """FPN parameters (full lr)."""
        return iter(self.neck.parameters())

    def forward(self, images: Float[Tensor, "BN 3 h w"]) -> List[Float[Tensor, "BN C hl wl"]]:
        """Images in [0, 1] -> FPN features at strides 4, 8, 16, 32 (spatial size ceil(h / stride))."""
        normalised = (images - self.pixel_mean) / self.pixel_std
        stage_features = self.backbone(normalised)
        pyramid = self.neck(OrderedDict((str(i), f) for i, f in enumerate(stage_features)))
        return list(pyramid.values())


def _create_backbone(config: ImageEncoderConfig) -> nn.Module:
    """timm feature extractor, random, ImageNet (timm's cache) or a local file (timm's file loading)."""
    kwargs = dict(features_only=True, out_indices=tuple(config.out_indices))
    if config.weights_path is None:
        return timm.create_model(config.backbone, pretrained=config.pretrained, **kwargs)
    weights_path = Path(config.weights_path).expanduser()
    if not weights_path.is_file():
        raise FileNotFoundError(f"ImageEncoderConfig.weights_path does not exist or is not a file: {weights_path}")
    # timm loads a pretrained_cfg 'file' instead of its url; the rest of the cfg (mean/std, classifier name)
    # stays the model's own.
    pretrained_cfg = copy.deepcopy(timm.models.get_pretrained_cfg(config.backbone) or {})
    pretrained_cfg.update(file=str(weights_path), url="", hf_hub_id="")
    backbone = timm.create_model(config.backbone, pretrained=True, pretrained_cfg=pretrained_cfg, **kwargs)
    _check_all_weights_loaded(backbone, weights_path)
    return backbone


def _check_all_weights_loaded(backbone: nn.Module, weights_path: Path) -> None:
    """timm loads feature extractors non-strictly (the classifier is dropped), so a checkpoint with foreign
    key names would silently leave the backbone random: refuse that."""
    file_keys = set(timm.models.helpers.load_state_dict(str(weights_path)).keys())
    missing = sorted(set(backbone.state_dict().keys()) - file_keys)
    if missing:
        raise ValueError(
            f"{weights_path} lacks {len(missing)} backbone weights (e.g. {missing[:3]}); expected a state dict "
            "with timm/torchvision ResNet key names (conv1.weight, layer1.0.conv1.weight, ...)"
        )
