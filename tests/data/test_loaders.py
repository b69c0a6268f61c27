"""The run's loaders: the config's augmentation reaches the train split, and only it."""

from __future__ import annotations

import pytest
import torch

from seglib.core.config import TrainConfig
from seglib.data.copy_paste import CopyPaste
from seglib.data.loaders import make_loaders

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def test_make_loaders_hands_copy_paste_and_scale_jitter_to_the_train_split(synthetic_subset):
    cfg = TrainConfig.smoke(num_workers=0, batch_size=2)
    train, _ = make_loaders(cfg, synthetic_subset, torch.device("cpu"))
    assert train.dataset.copy_paste is None and train.dataset.transforms.scale_range is None
    cfg = cfg.replace(
        copy_paste_prob=0.3,
        copy_paste_max_instances=4,
        copy_paste_scale=(0.5, 1.5),
        scale_jitter="standard",
    )
    train, val = make_loaders(cfg, synthetic_subset, torch.device("cpu"))
    assert train.dataset.copy_paste == CopyPaste(0.3, 4, (0.5, 1.5))
    assert train.dataset.transforms.scale_range == (0.8, 1.25)
    assert val.dataset.copy_paste is None and val.dataset.transforms is None
    train.batch_sampler.set_epoch(0)
    images, targets = next(iter(train))
    assert len(images) == len(targets) == 2
    assert all(t["masks"].shape[1:] == i.shape[1:] for i, t in zip(images, targets, strict=True))
