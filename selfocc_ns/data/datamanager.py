"""The SelfOcc datamanager: multi-camera temporal samples for nerfstudio's trainer.

`next_train(step)` returns `(SelfOccBatch, {})`: the batch is the model input (nerfstudio passes only
the first element to `Model.forward`). Samples are loaded by background `DataLoader` workers; the order
is a pure function of (seed, step, global rank): `StepSampler` shards the samples between ranks with
`torch.utils.data.DistributedSampler` (one permutation per epoch via `set_epoch`) and the frame draws of
a step are seeded from (seed, step, rank, item), so a run resumed at step k replays the batches of k, k+1...
The time each step waits for its batch is measured (`data_wait_s`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Tuple, Type, Union

import torch
import torch.distributed as dist
from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from selfocc_ns.data.batch import SelfOccBatch
from selfocc_ns.data.dataset import ImageGeometryConfig, SelfOccSampleDataset, collate_samples
from selfocc_ns.data.frames import ReferenceFrame, SelfOccIndex
from selfocc_ns.data.label_maps import SemanticLabelSpace
from selfocc_ns.data.nuscenes import SelfOccNuScenesDataParserConfig
from selfocc_ns.data.sampling import FrameSamplingConfig
from selfocc_ns.data.vanilla_compat import VanillaCompatible, VanillaCompatibleConfig


@dataclass
class SelfOccDataManagerConfig(VanillaCompatibleConfig):
    """Surround-view temporal samples for SelfOcc (docs/architecture.md)."""

    _target: Type = field(default_factory=lambda: SelfOccDataManager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=SelfOccNuScenesDataParserConfig)
    """The dataparser (`nuscenes-data`)."""
    batch_size: int = 1
    """Input keyframes per step and device (official: 1 per GPU, 8 GPUs)."""
    num_workers: int = 2
    """Background loader processes (0 loads in the training process)."""
    prefetch_factor: int = 2
    """Batches each worker loads ahead."""
    seed: int = 42
    """Seed of the sample order and of the anchor/source draws."""
    geometry: ImageGeometryConfig = field(default_factory=ImageGeometryConfig)
    """Image crops and the network's input scale."""
    sampling: FrameSamplingConfig = field(default_factory=FrameSamplingConfig)
    """Which frames a training step uses: the anchor and, per camera, two sources."""
    use_semantics: Literal["auto", "on", "off"] = "auto"
    """Load 2D labels of the anchor images: 'auto' follows the model's semantic loss."""
    reference_frame: ReferenceFrame = "ego"
    """Frame of all poses, LiDAR and the scene box: the keyframe's ego pose or its LIDAR_TOP frame (official depth)."""
    photometric_augmentation: bool = False
    """Official photometric distortion of the training input images (brightness, contrast, saturation, hue)."""
    loss_image_scale: float = 1.0 / 255.0
    """Anchor / source (loss) images are pixel values times this (official 1/256)."""
    unlabelled_anchors: Literal["skip", "refuse"] = "skip"
    """Anchors without 2D labels: 'skip' leaves them out of the semantic loss (one warning), 'refuse' stops at start-up."""


class StepSampler(Sampler):
    """Yields (sample index, step, item) for steps start_step, start_step + 1, ... forever.

    Sample order: per epoch, `DistributedSampler(shuffle=True, seed)` with `set_epoch(epoch)` restricted to
    this global rank, so ranks see disjoint shards and every rank agrees on the epoch boundaries.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int, world_size: int, start_step: int = 0):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size, self.start_step = seed, rank, world_size, start_step
        self._sharder = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.steps_per_epoch = max(1, math.ceil(len(self._sharder) / batch_size))

    def epoch_order(self, epoch: int) -> List[int]:
        self._sharder.set_epoch(epoch)
        return list(iter(self._sharder))

    def __iter__(self) -> Iterator[Tuple[int, int, int]]:
        step = self.start_step
        cached_epoch, order = -1, []
        while True:
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self.epoch_order(epoch)
            for item in range(self.batch_size):
                yield order[(position * self.batch_size + item) % len(order)], step, item
            step += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62


def global_rank(local_rank: int) -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else local_rank


class SelfOccDataManager(VanillaCompatible):
    """Keeps nerfstudio's `InputDataset`s for bookkeeping (viewer, cameras) and feeds SelfOcc batches."""

    config: SelfOccDataManagerConfig

    def __init__(
        self,
        config: SelfOccDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        use_semantics: Optional[bool] = None,
        **kwargs,
    ):
        self.config = config
        self.device = device
        self.world_size = max(1, world_size)
        self.local_rank = local_rank
        self.rank = global_rank(local_rank)
        self.test_mode = test_mode
        self.data_wait_s = 0.0
        self.train_rays_per_batch = 1  # the pipeline sets it from the model's ray lattice
        self._use_semantics = use_semantics
        self.semantic_label_space: SemanticLabelSpace = "occ3d"  # the pipeline sets the model's
        self.dataparser = config.dataparser.setup()
        self.includes_time = False
        self.train_dataparser_outputs = self.dataparser.get_dataparser_outputs(split="train")
        self.train_dataset = InputDataset(self.train_dataparser_outputs)
        eval_split = "val" if test_mode == "val" else "test"
        self.eval_dataparser_outputs = self.dataparser.get_dataparser_outputs(split=eval_split)
        self.eval_dataset = InputDataset(self.eval_dataparser_outputs)
        self._train_iter: Optional[Iterator] = None
        self._train_next_step: Optional[int] = None
        self._eval_image_count = 0
        super().__init__()

    # -- bookkeeping ---------------------------------------------------------------------------------
    @property
    def train_index(self) -> SelfOccIndex:
        return self.train_dataparser_outputs.metadata["selfocc"]

    @property
    def eval_index(self) -> SelfOccIndex:
        return self.eval_dataparser_outputs.metadata["selfocc"]

    def set_use_semantics(self, use: bool) -> None:
        """The model says whether it trains a semantic head (for `use_semantics: auto`); labels are checked then."""
        self._use_semantics = use
        if self.use_semantics and self.test_mode == "val":  # training (eval_setup's modes need no anchor labels)
            from selfocc_ns.data.validate import check_label_coverage

            check_label_coverage(self.train_index, strict=self.config.unlabelled_anchors == "refuse")

    def set_semantic_label_space(self, label_space: SemanticLabelSpace) -> None:
        """The model says which label space its semantic head speaks (the 2D labels are checked against it)."""
        self.semantic_label_space = label_space

    @property
    def use_semantics(self) -> bool:
        if self.config.use_semantics != "auto":
            return self.config.use_semantics == "on"
        return bool(self._use_semantics)

    def make_dataset(
        self, split: Literal["train", "eval"], mode: Literal["train", "eval"], novel_views: bool = False
    ) -> SelfOccSampleDataset:
        """Samples of a split; `mode` 'train' draws anchors and sources, 'eval' loads the truth (LiDAR, Occ3D
        gts and, with `novel_views`, the neighbour frames' cameras and LiDAR for novel-depth evaluation).
        Photometric augmentation (if on) applies to the training split's training draws only."""
        index = self.train_index if split == "train" else self.eval_index
        return SelfOccSampleDataset(
            index,
            self.config.geometry,
            self.config.sampling,
            mode=mode,
            use_semantics=self.use_semantics,
            seed=self.config.seed,
            rank=self.rank,
            novel_views=novel_views and mode == "eval",
            reference_frame=self.config.reference_frame,
            photometric_augmentation=self.config.photometric_augmentation and split == "train" and mode == "train",
            loss_image_scale=self.config.loss_image_scale,
            semantic_label_space=self.semantic_label_space,
            skip_unlabelled=self.config.unlabelled_anchors == "skip",
        )

    def _loader(self, dataset, sampler, batch_size: int) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_samples,
            prefetch_factor=self.config.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
        )

    # -- nerfstudio DataManager API ------------------------------------------------------------------
    def setup_train(self):
        n = len(self.train_index.samples)
        CONSOLE.print(
            f"[bold]selfocc[/bold] train: {n} keyframes of {len(self.train_index.scenes)} scene(s) "
            f"({self.train_index.split}), {sum(len(s.frames) for s in self.train_index.scenes)} frames incl. sweeps; "
            f"rank {self.rank}/{self.world_size}"
        )
        if self.train_index.skipped:
            CONSOLE.print(f"selfocc: left out while indexing: {self.train_index.skipped}")

    def setup_eval(self):
        super().setup_eval()  # nerfstudio's eval_dataloader (ns-render spiral starts from its first camera)
        CONSOLE.print(f"selfocc eval: {len(self.eval_index.samples)} keyframes ({self.eval_index.split})")

    def next_train(self, step: int) -> Tuple[SelfOccBatch, Dict]:
        if self._train_iter is None or self._train_next_step != step:
            # (Re)start the stream at this step: first call, resume, or a skipped step.
            sampler = StepSampler(
                len(self.train_index.samples), self.config.batch_size, self.config.seed, self.rank, self.world_size, step
            )
            self._train_iter = iter(self._loader(self.make_dataset("train", "train"), sampler, self.config.batch_size))
        start = time.perf_counter()
        batch: SelfOccBatch = next(self._train_iter)
        self.data_wait_s = time.perf_counter() - start
        batch.step, batch.rank = step, self.rank  # seeds the model's per-step lattices and jitter
        self._train_next_step = step + 1
        self.train_count += 1
        return batch.to(self.device), {"data_wait_s": self.data_wait_s}

    def next_eval(self, step: int) -> Tuple[SelfOccBatch, Dict]:
        """An eval-split sample with training-style draws (for the eval loss)."""
        dataset = self.make_dataset("eval", "train")
        sample = (step // max(1, self.world_size) * self.world_size + self.rank) % len(dataset)
        batch = collate_samples([dataset[(sample, step, 0)]])
        batch.step, batch.rank = step, self.rank
        self.eval_count += 1
        return batch.to(self.device), {}

    def next_eval_image(self, step: int) -> Tuple[SelfOccBatch, Dict]:
        """The next eval keyframe with its LiDAR / Occ3D truth (anchor = the keyframe itself)."""
        dataset = self.make_dataset("eval", "eval")
        sample = (self._eval_image_count * self.world_size + self.rank) % len(dataset)
        self._eval_image_count += 1
        return collate_samples([dataset[(sample, step, 0)]]).to(self.device), {}

    def iter_eval_batches(self, indices: Optional[List[int]] = None, novel_views: bool = False) -> Iterator[SelfOccBatch]:
        """Every eval keyframe of this rank's shard (or the given sample indices), loaded in the background;
        `novel_views` adds the neighbour frames novel-depth evaluation renders."""
        dataset = self.make_dataset("eval", "eval", novel_views)
        if indices is None:
            indices = list(range(self.rank, len(dataset), self.world_size))
        keys = [(i, 0, 0) for i in indices]
        for batch in self._loader(dataset, keys, 1):
            yield batch.to(self.device)

    def get_train_rays_per_batch(self) -> int:
        return self.train_rays_per_batch

    def get_eval_rays_per_batch(self) -> int:
        return 1

    def get_datapath(self):
        return self.config.dataparser.data_dir

    def get_param_groups(self) -> Dict[str, List[torch.nn.Parameter]]:
        return {}
