"""Checkpoints: round trip, RNG state, damaged files, class maps and the resume check."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from seglib.core.config import TrainConfig
from seglib.evaluation.coco_results import write_results
from seglib.models.builder import build_model, model_from_checkpoint
from seglib.models.checkpoint import (
    CheckpointError,
    check_class_map,
    drop_training_state,
    load_checkpoint,
    load_for_resume,
    load_model_state,
    restore_norm_eps,
    restore_rng_state,
    save_checkpoint,
    unwrap,
)
from seglib.models.maskrcnn import FrozenBatchNorm2d

#: A split's categories: COCO's ids, in label order (cake is label 1).
CATEGORIES = [
    {"id": 61, "name": "cake", "supercategory": "food"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
]
#: The same class map as seglib wrote it before the subsets kept COCO's ids.
OLD_CATEGORIES = [
    {"id": i, "name": c["name"], "supercategory": c["supercategory"], "coco_id": c["id"]}
    for i, c in enumerate(CATEGORIES, start=1)
]


@pytest.fixture(scope="module")
def cfg() -> TrainConfig:
    return TrainConfig.smoke(detections_per_img=10)  # pasting 50 random masks dominates the time


def _images(n: int = 1, size: int = 96, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size + 16, generator=g) for _ in range(n)]


def _save(path, model, cfg, **state):
    """``save_checkpoint`` of ``model`` for the four categories."""
    return save_checkpoint(path, model=model, cfg=cfg, categories=CATEGORIES, **state)


def test_checkpoint_round_trip(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_model(5, "none", "v1", cfg)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9
    )
    path = _save(
        tmp_path / "run" / "last.pt",
        model,
        cfg,
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


def test_dropping_the_training_state_keeps_the_model_and_the_epoch(tmp_path, cfg):
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 64)).sum().backward()
    optimizer.step()  # two moment tensors per weight: twice the model's size
    path = _save(tmp_path / "last.pt", model, cfg, epoch=2, iteration=7, optimizer=optimizer)
    full = path.stat().st_size
    assert drop_training_state(path) == path
    raw = load_checkpoint(path)
    assert raw["optimizer"] is None and raw["lr_scheduler"] is None and raw["scaler"] is None
    assert (raw["epoch"], raw["iteration"]) == (2, 7)
    assert torch.equal(raw["model"]["weight"], model.weight.detach())
    assert path.stat().st_size < 0.6 * full  # the moments were most of it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left


def test_checkpoint_restores_rng_state(tmp_path, cfg):
    model = torch.nn.Linear(2, 2)
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


def test_checkpoint_class_map_must_match_the_data(tmp_path, cfg):
    path = save_checkpoint(
        tmp_path / "ckpt.pt",
        model=build_model(5, "none", "v1", cfg),
        cfg=cfg,
        categories=CATEGORIES,
        epoch=1,
        iteration=1,
    )
    model_from_checkpoint(path, categories=[dict(c) for c in CATEGORIES])  # same map: fine
    reordered = list(reversed(CATEGORIES))
    with pytest.raises(CheckpointError, match="person") as err:
        model_from_checkpoint(path, categories=reordered)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError):
        check_class_map(CATEGORIES, CATEGORIES[:3])


def test_an_older_seglibs_class_map_is_read_with_cocos_ids(tmp_path, cfg):
    """A checkpoint trained on a subset numbered 1..k (with coco_id) keeps working: its labels
    are those ids, so each category takes its coco_id and the label order stays."""
    path = save_checkpoint(
        tmp_path / "best.pt",
        model=build_model(5, "none", "v1", cfg),
        cfg=cfg,
        categories=CATEGORIES,
        epoch=1,
        iteration=1,
    )
    raw = torch.load(path, weights_only=True)
    raw["categories"] = list(reversed(OLD_CATEGORIES))  # order in the file does not matter
    torch.save(raw, path)
    assert load_checkpoint(path)["categories"] == CATEGORIES
    _, _, categories = model_from_checkpoint(path, categories=CATEGORIES)  # a rebuilt subset
    assert categories == CATEGORIES
    # what the model predicts (labels 1..4) reaches the results file as COCO's ids
    labels = [{"image_id": 7, "category_id": label, "score": 0.5} for label in (1, 2, 3, 4)]
    written = write_results(tmp_path / "results.json", labels, categories)
    assert [r["category_id"] for r in json.loads(written.read_text())] == [61, 3, 18, 1]


def test_a_class_map_in_no_known_numbering_is_refused(tmp_path, cfg):
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(
        tmp_path / "c.pt", model=model, cfg=cfg, categories=CATEGORIES, epoch=0, iteration=0
    )
    raw = torch.load(path, weights_only=True)
    raw["categories"] = [dict(c, id=c["id"] + 1) for c in OLD_CATEGORIES]  # 2..5, not 1..k
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"c\.pt: its class map .* train the model again"):
        load_checkpoint(path)
    raw["categories"] = [CATEGORIES[0], CATEGORIES[0]]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="category id 61 appears twice"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="appears twice"):
        save_checkpoint(
            tmp_path / "d.pt",
            model=model,
            cfg=cfg,
            categories=[CATEGORIES[1], CATEGORIES[1]],
            epoch=0,
            iteration=0,
        )


def test_load_model_state_names_the_tensors_that_differ():
    small = torch.nn.Linear(8, 3)
    with pytest.raises(CheckpointError) as info:
        load_model_state(small, torch.nn.Linear(8, 5).state_dict(), source="best.pt")
    msg = str(info.value)
    assert "best.pt" in msg and "weight: [5, 8] in best.pt, [3, 8] in the model" in msg
    with pytest.raises(CheckpointError, match="another arch"):
        load_model_state(small, {"other.weight": torch.zeros(1)}, source="x.pt")
    wrapped = torch.nn.Sequential()
    wrapped.module = small  # what DistributedDataParallel looks like from outside
    assert unwrap(wrapped) is small
    load_model_state(wrapped, {k: v + 1 for k, v in small.state_dict().items()})


def test_resume_refuses_a_changed_config_and_a_new_length_when_the_schedule_spans_the_run(
    tmp_path,
):
    cfg = TrainConfig.smoke(lr_schedule="cosine", num_epochs=2)
    model = torch.nn.Linear(2, 2)
    path = save_checkpoint(
        tmp_path / "last.pt", model=model, cfg=cfg, categories=CATEGORIES, epoch=1, iteration=6
    )
    assert load_for_resume(path, cfg)["epoch"] == 1
    with pytest.raises(ValueError, match="num_epochs"):
        load_for_resume(path, cfg.replace(num_epochs=4))
    with pytest.raises(ValueError, match=f"lr: saved {cfg.lr}, given {cfg.lr / 2}"):
        load_for_resume(path, cfg.replace(lr=cfg.lr / 2))
    step = cfg.replace(lr_schedule="multistep", lr_milestones=(0.5,))
    save_checkpoint(path, model=model, cfg=step, categories=CATEGORIES, epoch=1, iteration=6)
    with pytest.raises(ValueError, match="num_epochs"):  # the milestone would move
        load_for_resume(path, step.replace(num_epochs=4))
    flat = cfg.replace(lr_schedule="multistep", lr_milestones=())
    save_checkpoint(path, model=model, cfg=flat, categories=CATEGORIES, epoch=1, iteration=6)
    assert load_for_resume(path, flat.replace(num_epochs=4))["epoch"] == 1  # nothing moves
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        load_for_resume(tmp_path / "none.pt", cfg)


def test_a_v1_model_from_a_hand_placed_coco_file_is_rebuilt_with_its_eps(tmp_path, cfg):
    """A 91-class v1 file placed by hand trains with frozen BatchNorm at eps 0 (torchvision's
    legacy COCO weights); state dicts do not hold eps, so the checkpoint must, or the rebuilt
    model would normalise with 1e-5 and give other outputs."""
    torch.manual_seed(0)
    coco_file = tmp_path / "maskrcnn_coco_by_hand.pth"
    torch.save(build_model(91, "none", "v1", cfg.replace(norm="bn")).state_dict(), coco_file)
    file_cfg = cfg.replace(weights=str(coco_file), norm="bn")
    model = build_model(5, str(coco_file), "v1", file_cfg)
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(m.eps == 0.0 for m in frozen)
    path = save_checkpoint(
        tmp_path / "best.pt", model=model, cfg=file_cfg, categories=CATEGORIES, epoch=1, iteration=1
    )
    coco_file.unlink()  # the rebuild reads no weight file
    rebuilt, _, _ = model_from_checkpoint(path)
    assert all(m.eps == 0.0 for m in rebuilt.modules() if isinstance(m, FrozenBatchNorm2d))
    model.eval()
    images = _images(1)
    with torch.inference_mode():
        a, b = model(images)[0], rebuilt(images)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_restore_norm_eps_refuses_a_layer_the_model_lacks(cfg):
    model = build_model(5, "none", "v1", cfg)
    with pytest.raises(CheckpointError, match="no.such.layer"):
        restore_norm_eps(model, {"no.such.layer": 0.0})
