"""Model builder, weight cache lookup, zero-shot mapping and checkpoints (all offline)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from seglib.config import TrainConfig
from seglib.model import (
    CheckpointError,
    MissingWeightsError,
    ZeroShotMaskRCNN,
    build_model,
    build_zero_shot_model,
    load_checkpoint,
    load_model_state,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
    weights_file,
)

CATEGORIES = [
    {"id": 1, "name": "cake", "supercategory": "food", "coco_id": 61},
    {"id": 2, "name": "car", "supercategory": "vehicle", "coco_id": 3},
    {"id": 3, "name": "dog", "supercategory": "animal", "coco_id": 18},
    {"id": 4, "name": "person", "supercategory": "person", "coco_id": 1},
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """Any download attempt fails the test; TORCH_HOME points at an empty folder."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return TrainConfig.smoke()


def _heads(model) -> tuple[int, int, int]:
    rh = model.roi_heads
    return (
        rh.box_predictor.cls_score.out_features,
        rh.box_predictor.bbox_pred.out_features,
        rh.mask_predictor.mask_fcn_logits.out_channels,
    )


def _images(n: int = 1, size: int = 96, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size + 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_build_none_replaces_heads_and_trains_everything(arch, cfg):
    model = build_model(5, "none", arch, cfg)
    assert _heads(model) == (5, 20, 5)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert model.transform.min_size == (cfg.min_size,) and model.transform.max_size == cfg.max_size
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == cfg.box_batch_size_per_image


def _save_random_coco(arch: str, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    state = build_model(91, "none", arch, cfg).state_dict()
    path = weights_file("coco", arch)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_coco_weights_load_from_torch_home_cache(arch, tmp_path):
    cfg = TrainConfig.smoke(trainable_backbone_layers=3)
    path = weights_file("coco", arch)
    assert path.parent == tmp_path / "torch-home" / "hub" / "checkpoints"
    assert (
        path.name
        == {
            "v1": "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
            "v2": "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        }[arch]
    )
    saved = _save_random_coco(arch, cfg)
    model = build_model(5, "coco", arch, cfg)
    assert _heads(model) == (5, 20, 5)
    state = model.state_dict()
    for key in (
        "backbone.body.layer4.2.conv3.weight",
        "rpn.head.conv.0.0.weight",
        "roi_heads.mask_head.0.0.weight",
    ):
        assert torch.equal(state[key], saved[key]), key
    trainable = {
        n.split(".")[2]
        for n, p in model.backbone.body.named_parameters(prefix="backbone.body")
        if p.requires_grad
    }
    assert trainable == {"layer2", "layer3", "layer4"}
    frozen_bn = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert bool(frozen_bn) == (arch == "v1")  # torchvision's v2 recipe keeps BatchNorm2d
    if arch == "v1":
        assert all(m.eps == 0.0 for m in frozen_bn)  # legacy COCO_V1 weights


def test_imagenet_backbone_only(tmp_path, cfg):
    resnet = torchvision.models.resnet50().state_dict()
    path = weights_file("imagenet", "v1")
    assert path.name == "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(resnet, path)
    model = build_model(5, "imagenet", "v1", cfg.replace(trainable_backbone_layers=0))
    body = model.backbone.body.state_dict()
    assert torch.equal(body["layer3.1.conv2.weight"], resnet["layer3.1.conv2.weight"])
    assert torch.equal(body["bn1.running_var"], resnet["bn1.running_var"])
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())


@pytest.mark.parametrize("kind", ["coco", "imagenet"])
def test_missing_weights_error_says_what_where_and_how(kind, tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        build_model(5, kind, "v1")
    msg = str(info.value)
    expected = weights_file(kind, "v1")
    assert expected.name in msg and str(expected.parent) in msg
    assert "https://download.pytorch.org/models/" in msg
    assert "fetch-weights" in msg and "--weights none" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_bad_arguments_raise_value_error(cfg):
    with pytest.raises(ValueError, match="arch"):
        build_model(5, "none", "v3", cfg)
    with pytest.raises(ValueError, match="weights"):
        build_model(5, "resnet", "v1", cfg)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(1, "none", "v1", cfg)


def test_local_weight_file_and_class_count_mismatch(tmp_path, cfg):
    source = build_model(5, "none", "v1", cfg)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = build_model(5, str(path), "v1", cfg)
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(model.state_dict()[key], source.state_dict()[key])
    with pytest.raises(CheckpointError, match=r"5 classes .*model has 3"):
        build_model(3, str(path), "v1", cfg)


def test_a_coco_trained_local_file_starts_a_k_class_run(tmp_path, cfg):
    source = build_model(91, "none", "v1", cfg).state_dict()
    path = tmp_path / "maskrcnn_coco_by_hand.pth"
    torch.save(source, path)
    model = build_model(5, str(path), "v1", cfg)
    assert _heads(model) == (5, 20, 5)
    key = "backbone.body.layer4.0.conv1.weight"
    assert torch.equal(model.state_dict()[key], source[key])


def test_checkpoint_class_map_must_match_the_data(tmp_path, cfg):
    from seglib.model import check_class_map

    model = build_model(5, "none", "v1", cfg)
    path = save_checkpoint(
        tmp_path / "ckpt.pt", model=model, cfg=cfg, categories=CATEGORIES, epoch=1, iteration=1
    )
    model_from_checkpoint(path, categories=[dict(c) for c in CATEGORIES])  # same map: fine
    reordered = [dict(c, id=i + 1) for i, c in enumerate(reversed(CATEGORIES))]
    with pytest.raises(CheckpointError, match="person") as err:
        model_from_checkpoint(path, categories=reordered)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError):
        check_class_map(CATEGORIES, CATEGORIES[:3])


def test_load_model_state_names_both_class_counts(cfg):
    small = build_model(3, "none", "v1", cfg)
    with pytest.raises(CheckpointError) as info:
        load_model_state(small, build_model(5, "none", "v1", cfg).state_dict(), source="best.pt")
    msg = str(info.value)
    assert "best.pt" in msg and "5 classes" in msg and "has 3" in msg


def test_checkpoint_round_trip(tmp_path, cfg):
    cfg = cfg.replace(detections_per_img=10)  # pasting 50 random masks dominates the time
    torch.manual_seed(0)
    model = build_model(5, "none", "v1", cfg)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    path = save_checkpoint(
        tmp_path / "run" / "last.pt",
        model=model,
        cfg=cfg,
        categories=CATEGORIES,
        epoch=3,
        iteration=42,
        optimizer=optimizer,
        best_metric=0.25,
        extra={"history": [{"epoch": 1, "loss": 1.5}]},
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left
    raw = torch.load(path, weights_only=True)  # the contract: loadable without pickle trust
    assert raw["epoch"] == 3 and raw["iteration"] == 42 and raw["best_metric"] == 0.25
    assert raw["num_classes"] == 5 and raw["categories"] == CATEGORIES
    assert set(raw["versions"]) == {"seglib", "torch", "torchvision"}
    assert raw["extra"]["history"][0]["loss"] == 1.5
    assert TrainConfig.from_dict(raw["config"]) == cfg

    rebuilt, cfg2, categories = model_from_checkpoint(path)
    assert cfg2 == cfg and categories == CATEGORIES and not rebuilt.training
    model.eval()
    images = _images(2)
    with torch.inference_mode():
        a, b = model(images), rebuilt(images)
    for out_a, out_b in zip(a, b, strict=True):
        assert out_a.keys() == out_b.keys()
        for k in out_a:
            assert torch.equal(out_a[k], out_b[k]), k


def test_checkpoint_restores_rng_state(tmp_path, cfg):
    model = build_model(5, "none", "v1", cfg)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, cfg=cfg, categories=CATEGORIES, epoch=0, iteration=0
    )
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="not a seglib checkpoint"):
        load_checkpoint(plain)


def test_truncated_checkpoint_is_reported(tmp_path, cfg):
    path = save_checkpoint(
        tmp_path / "last.pt",
        model=build_model(3, "none", "v1", cfg),
        cfg=cfg.replace(categories=("cake", "car")),
        categories=CATEGORIES[:2],
        epoch=1,
        iteration=1,
    )
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        model_from_checkpoint(path)


class _FixedDetector(nn.Module):
    """Stands in for a 91-class model: returns the same detections for every image."""

    def forward(self, images):
        labels = torch.tensor([1, 3, 18, 61, 2, 5, 90])
        n = len(labels)
        return [
            {
                "boxes": torch.arange(n * 4, dtype=torch.float32).reshape(n, 4),
                "labels": labels,
                "scores": torch.linspace(0.9, 0.3, n),
                "masks": torch.rand(n, 1, 8, 8),
            }
            for _ in images
        ]


def test_zero_shot_maps_coco_ids_to_subset_labels():
    model = build_zero_shot_model(CATEGORIES, model=_FixedDetector())
    (out,) = model([torch.rand(3, 8, 8)])
    # COCO person 1 -> 4, car 3 -> 2, dog 18 -> 3, cake 61 -> 1; bicycle 2, bus 5, 90 dropped
    assert out["labels"].tolist() == [4, 2, 3, 1]
    assert torch.allclose(out["scores"], torch.linspace(0.9, 0.3, 7)[:4])
    assert out["boxes"].shape == (4, 4) and out["masks"].shape == (4, 1, 8, 8)
    with pytest.raises(RuntimeError, match="evaluation only"):
        model.train()([torch.rand(3, 8, 8)])
    with pytest.raises(ValueError, match="coco_id"):
        ZeroShotMaskRCNN(_FixedDetector(), [{"id": 1, "name": "thing"}])


def test_zero_shot_reads_coco_weights_from_cache(tmp_path, cfg):
    _save_random_coco("v1", cfg)
    model = build_zero_shot_model(CATEGORIES, cfg=cfg.replace(trainable_backbone_layers=3))
    assert _heads(model.model) == (91, 364, 91)  # unmodified COCO heads
    with torch.inference_mode():
        outputs = model(_images(1))
    assert set(outputs[0]["labels"].tolist()) <= {1, 2, 3, 4}


def test_zero_shot_baseline_uses_cached_coco_weights_or_warns_about_its_stand_in(tmp_path, cfg):
    from seglib.model import zero_shot_baseline

    with pytest.warns(UserWarning, match="ZERO-SHOT STAND-IN"):
        stand_in = zero_shot_baseline(CATEGORIES, cfg)
    assert _heads(stand_in.model) == (91, 364, 91)
    with pytest.raises(MissingWeightsError):
        zero_shot_baseline(CATEGORIES, cfg.replace(weights="coco", trainable_backbone_layers=3))
    _save_random_coco("v1", cfg)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real = zero_shot_baseline(CATEGORIES, cfg)
    expected = torch.load(weights_file("coco", "v1"), weights_only=True)
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(real.model.state_dict()[key], expected[key])
