"""What nerfstudio's `ns-render dataset` / `spiral` insist on: a `VanillaDataManager(Config)`.

nerfstudio 1.1.5 asserts `isinstance(config.pipeline.datamanager, (VanillaDataManagerConfig, ...))`
(`ns-render dataset`) and `isinstance(pipeline.datamanager, (VanillaDataManager, ...))` (`ns-render spiral`).
SelfOcc's datamanager is no ray-batch datamanager, so these bases carry only the types:

- `VanillaCompatibleConfig` redeclares every field `VanillaDataManagerConfig` adds as `tyro.conf.Suppress`ed
  (hidden from the CLI: SelfOcc would not honour them), with the same defaults, so nerfstudio's code that
  sets some of them (`eval_num_images_to_sample_from = -1`, ...) still works;
- `VanillaCompatible.__init__` skips `VanillaDataManager.__init__` (ray samplers, image caches) and runs
  `DataManager.__init__` only; `setup_eval` provides `eval_dataloader` (nerfstudio's
  `FixedIndicesEvalDataloader` over the eval cameras), which `ns-render spiral` reads its first camera from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple

import tyro
from nerfstudio.data.datamanagers.base_datamanager import DataManager, VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.data.utils.nerfstudio_collate import nerfstudio_collate


@dataclass
class VanillaCompatibleConfig(VanillaDataManagerConfig):
    """`VanillaDataManagerConfig` with its ray-batch fields hidden (see the module docstring)."""

    train_num_rays_per_batch: tyro.conf.Suppress[int] = 1024
    train_num_images_to_sample_from: tyro.conf.Suppress[int] = -1
    train_num_times_to_repeat_images: tyro.conf.Suppress[int] = -1
    eval_num_rays_per_batch: tyro.conf.Suppress[int] = 1024
    eval_num_images_to_sample_from: tyro.conf.Suppress[int] = -1
    eval_num_times_to_repeat_images: tyro.conf.Suppress[int] = -1
    eval_image_indices: tyro.conf.Suppress[Optional[Tuple[int, ...]]] = (0,)
    collate_fn: tyro.conf.Suppress[Callable[[Any], Any]] = staticmethod(nerfstudio_collate)
    camera_res_scale_factor: tyro.conf.Suppress[float] = 1.0
    patch_size: tyro.conf.Suppress[int] = 1
    pixel_sampler: tyro.conf.Suppress[PixelSamplerConfig] = field(default_factory=PixelSamplerConfig)


class VanillaCompatible(VanillaDataManager):
    """A `VanillaDataManager` by type only (see the module docstring); subclasses set the datasets."""

    def __init__(self) -> None:
        DataManager.__init__(self)  # not VanillaDataManager's: no ray samplers or image caches

    def setup_eval(self) -> None:
        from nerfstudio.data.utils.dataloaders import FixedIndicesEvalDataloader

        self.eval_dataloader = FixedIndicesEvalDataloader(input_dataset=self.eval_dataset, device=self.device,
                                                          num_workers=0)
