"""The run's data loaders: which images go into which batch, and the seed each is augmented with.

``make_loaders`` builds the train and val DataLoaders of a run.
``GroupedBatchSampler`` batches images of one aspect group together (less padding on the
GPU). Given a ``seed`` it also hands every image its own augmentation seed,
``sample_seed(seed, epoch, index, rank)``: the batches become lists of ``(index, seed)``
pairs, which ``CocoSubsetDataset`` accepts as keys. Augmentation randomness then depends
on nothing else: not on DataLoader worker processes (whose generators persistent workers
draw once, at the first epoch), not on how many images were loaded before, not on whether
the process was restarted. That is what makes a resumed run match an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from seglib.core.config import SCALE_JITTERS, TrainConfig
from seglib.core.distributed import rank_and_world
from seglib.core.runtime import derived_seed
from seglib.data.copy_paste import CopyPaste
from seglib.data.dataset import collate_fn, open_split
from seglib.data.transforms import train_transforms


def sample_seed(seed: int, epoch: int, index: int, rank: int = 0) -> int:
    """A 32-bit seed for augmenting image ``index`` in ``epoch`` (0-based) on DDP ``rank``."""
    return derived_seed(seed, epoch, index, rank)


class GroupedBatchSampler(Sampler[list[Any]]):
    """Batches drawn from ``sampler`` with, where possible, one aspect group per batch.

    Groups fill as indices arrive and a batch is yielded when its group holds ``batch_size``;
    leftovers are batched together at the end, so no image is dropped and the length is
    always ceil(len(sampler) / batch_size) (equal on every DDP rank).

    Args:
        sampler: yields dataset indices; reshuffled by ``set_epoch`` when it has one.
        group_ids: the group of each dataset index (None: a single group).
        seed: when given, batches hold ``(index, sample_seed(seed, epoch, index, rank))``
            pairs instead of bare indices.
        rank: this process's DDP rank, so that every rank draws its own augmentations.

    ``set_epoch(epoch, skip)`` reshuffles (forwarded to the sampler) and leaves the first
    ``skip`` batches out of the next pass only, which is how a resumed run continues in the
    middle of an epoch.
    """

    def __init__(
        self,
        sampler: Sampler[int],
        group_ids: Sequence[int] | None,
        batch_size: int,
        *,
        seed: int | None = None,
        rank: int = 0,
    ) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids) if group_ids is not None else None
        self.batch_size = batch_size
        self.seed, self.rank = seed, rank
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def _batches(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for idx in self.sampler:
            group = self.group_ids[idx] if self.group_ids is not None else 0
            bucket = buckets.setdefault(group, [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[group] = []
        rest = [i for bucket in buckets.values() for i in bucket]
        for start in range(0, len(rest), self.batch_size):
            yield rest[start : start + self.batch_size]

    def __iter__(self) -> Iterator[list[Any]]:
        skip, self.skip = self.skip, 0
        for n, batch in enumerate(self._batches()):
            if n < skip:
                continue
            if self.seed is None:
                yield batch
            else:
                yield [(i, sample_seed(self.seed, self.epoch, i, self.rank)) for i in batch]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


def aspect_groups(dataset: Any) -> list[int]:
    """0 for landscape or square images, 1 for portrait, from ``get_height_and_width``."""
    return [int(h > w) for h, w in (dataset.get_height_and_width(i) for i in range(len(dataset)))]


def train_split(cfg: TrainConfig, data_dir: str | Path) -> Any:
    """The train split as training sees it: Copy-Paste when ``copy_paste_prob`` > 0, then
    ``train_transforms`` with its flip, crop, ``scale_jitter`` and colour jitter.

    Raises:
        ValueError: the split's categories are not ``cfg.categories`` in that order.
    """
    transforms = train_transforms(cfg.aug_strength, cfg.hflip_prob, SCALE_JITTERS[cfg.scale_jitter])
    copy_paste = None
    if cfg.copy_paste_prob > 0:
        copy_paste = CopyPaste(
            cfg.copy_paste_prob, cfg.copy_paste_max_instances, cfg.copy_paste_scale
        )
    train_ds = open_split(data_dir, "train", transforms, cfg.min_box_size, copy_paste)
    if tuple(train_ds.class_names) != cfg.categories:
        raise ValueError(
            f"{Path(data_dir) / 'train.json'} has categories {train_ds.class_names} but the config "
            f"has {list(cfg.categories)}; build the subset with the same categories in the same order."
        )
    return train_ds


def make_loaders(
    cfg: TrainConfig, data_dir: str | Path, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    """Train loader (``train_split``: augmented; shuffled per epoch, aspect-grouped) and val
    loader (batch 2).

    The train loader's ``batch_sampler`` is a ``GroupedBatchSampler`` that gives every image
    its augmentation seed: call ``loader.batch_sampler.set_epoch(epoch, skip)`` before each
    epoch. Under torchrun each rank gets its DistributedSampler shard of the train split;
    ``seglib.evaluation.prediction.evaluate`` shards the val split itself.

    Raises:
        ValueError: the split's categories are not ``cfg.categories`` in that order.
    """
    train_ds = train_split(cfg, data_dir)
    val_ds = open_split(data_dir, "val")
    rank, world = rank_and_world()
    # DistributedSampler with one replica is a seeded per-epoch shuffle: the same order
    # after a resume, with no generator state to save.
    sampler = DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed
    )
    groups = aspect_groups(train_ds) if cfg.aspect_ratio_grouping else None
    batches = GroupedBatchSampler(sampler, groups, cfg.batch_size, seed=cfg.seed, rank=rank)
    common = dict(
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # worker seeds come from here, not the global RNG
    )
    train_loader = DataLoader(
        train_ds, batch_sampler=batches, persistent_workers=cfg.num_workers > 0, **common
    )
    val_loader = DataLoader(val_ds, batch_size=2, shuffle=False, **common)
    return train_loader, val_loader
