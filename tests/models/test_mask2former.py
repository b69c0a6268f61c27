"""seglib.models.mask2former: the torchvision contract, targets, post-processing, weights and the loop.

Everything runs offline on the "tiny" random preset (~1 M parameters, 128 px synthetic
images). Tests that need transformers skip without it (``pip install -r
requirements-detr.txt``; ``make test`` installs it); the last test checks the opposite: the
base package trains Mask R-CNN with transformers blocked.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch

from seglib.app import prediction_cache, runs
from seglib.app.operating_point import OperatingPoint
from seglib.core.config import TrainConfig
from seglib.core.paths import get_paths
from seglib.data.dataset import open_split
from seglib.data.transforms import boxes_from_masks
from seglib.engine.runlog import read_metrics
from seglib.engine.trainer import train
from seglib.evaluation.occlusion import occlusion_ap
from seglib.evaluation.prediction import evaluate, predict
from seglib.models.builder import BUILDERS, build_model, model_from_checkpoint
from seglib.models.checkpoint import CheckpointError
from seglib.models.mask2former import LOSS_NAMES, Mask2FormerSegmenter, build_zero_shot_mask2former
from seglib.models.mask2former_weights import (
    MODEL_ID,
    hf_cache_dir,
    hf_config,
    load_pretrained,
    subset_head_rows,
)
from seglib.models.weights import MissingWeightsError

needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed (pip install -r requirements-detr.txt)",
)


def tiny_cfg(**overrides) -> TrainConfig:
    values = dict(arch="mask2former", m2f_config="tiny", num_epochs=2, eval_interval=1)
    values.update(overrides)
    return TrainConfig.smoke(**values)


def tiny_model(cfg: TrainConfig | None = None):
    cfg = cfg or tiny_cfg()
    torch.manual_seed(0)
    return build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)


def two_images():
    """Two images of different sizes; the first holds two overlapping instances."""
    a = torch.zeros(2, 100, 128, dtype=torch.uint8)
    a[0, 10:60, 10:60] = 1
    a[1, 40:90, 40:110] = 1  # overlaps instance 0 on [40:60, 40:60]
    b = torch.zeros(1, 128, 90, dtype=torch.uint8)
    b[0, 60:120, 0:60] = 1
    images = [torch.rand(3, 100, 128), torch.rand(3, 128, 90)]
    targets = [
        {"masks": a, "labels": torch.tensor([1, 4]), "boxes": torch.zeros(2, 4)},
        {"masks": b, "labels": torch.tensor([3]), "boxes": torch.zeros(1, 4)},
    ]
    return images, targets


def coco_like_id2label() -> dict[int, str]:
    """COCO's 80 names, contiguous 0..79, as Mask2Former's COCO checkpoints number them."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return dict(enumerate(n for n in names if n not in ("__background__", "N/A")))


# --- config ------------------------------------------------------------------------------------
def test_config_rejects_what_mask2former_cannot_load():
    with pytest.raises(ValueError, match="imagenet"):
        TrainConfig(arch="mask2former", weights="imagenet")
    with pytest.raises(ValueError, match="m2f_config"):
        TrainConfig(arch="mask2former", m2f_config="huge")
    with pytest.raises(ValueError, match="swin-tiny"):
        TrainConfig(arch="mask2former", weights="coco", m2f_config="tiny")
    assert TrainConfig.smoke().m2f_config == "tiny"  # offline profiles stay tiny


# --- the contract ------------------------------------------------------------------------------
@needs_transformers
def test_build_model_builds_it_and_training_returns_finite_losses():
    assert "mask2former" in BUILDERS
    model = tiny_model()
    assert isinstance(model, Mask2FormerSegmenter) and model.training
    images, targets = two_images()
    losses = model(images, targets)
    assert tuple(losses) == LOSS_NAMES
    assert all(v.ndim == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.model.class_predictor.weight.grad is not None


@needs_transformers
def test_batch_images_resizes_normalises_and_pads_like_the_processor():
    model = tiny_model(tiny_cfg(min_size=64, max_size=96))
    images, _ = two_images()
    pixel_values, pixel_mask, sizes = model.batch_images(images)
    assert sizes == [(64, 82), (91, 64)]  # shorter side 64, unless the longer would pass 96
    assert pixel_values.shape == (2, 3, 96, 96)  # max (91, 82) rounded up to 32
    assert pixel_mask[0, :64, :82].all() and not pixel_mask[0, 64:].any()
    assert not pixel_mask[0, :, 82:].any() and pixel_mask[1].sum() == 91 * 64
    # uint8 input is scaled like float input; padding is 0 after normalisation
    as_uint8 = [(img * 255).round().to(torch.uint8) for img in images]
    again, _, _ = model.batch_images(as_uint8)
    assert torch.allclose(again, pixel_values, atol=0.03)
    assert pixel_values[0, :, 64:].abs().max() == 0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    flat = [torch.full((3, 64, 64), 0.5)]
    values, _, _ = model.batch_images(flat)
    assert torch.allclose(values[0], ((0.5 - mean) / std).expand(3, 64, 64))


@needs_transformers
def test_overlapping_instances_stay_separate_binary_masks():
    model = tiny_model()
    images, targets = two_images()
    pixel_values, _, sizes = model.batch_images(images)
    mask_labels, class_labels = model.batch_targets(targets, sizes, pixel_values.shape[-2:])
    assert [m.shape[0] for m in mask_labels] == [2, 1]
    assert mask_labels[0].shape[-2:] == pixel_values.shape[-2:]
    assert class_labels[0].tolist() == [0, 3] and class_labels[1].tolist() == [2]  # 0-based
    overlap = mask_labels[0][0] * mask_labels[0][1]
    assert overlap.sum() > 0  # both instances own the shared pixels: no id map
    assert set(mask_labels[0].unique().tolist()) == {0.0, 1.0}


@needs_transformers
def test_empty_targets_train():
    model = tiny_model()
    images = [torch.rand(3, 96, 96)]
    empty = {
        "masks": torch.zeros(0, 96, 96, dtype=torch.uint8),
        "labels": torch.zeros(0, dtype=torch.int64),
        "boxes": torch.zeros(0, 4),
    }
    losses = model(images, [empty])
    assert torch.isfinite(sum(losses.values()))


@needs_transformers
def test_inference_returns_torchvision_detections_at_input_size():
    model = tiny_model().eval()
    images, _ = two_images()
    with torch.no_grad():
        outputs = model(images)
    for image, out in zip(images, outputs, strict=True):
        n = out["scores"].shape[0]
        assert 0 < n <= model.detections_per_img
        assert out["boxes"].dtype == torch.float32 and out["boxes"].shape == (n, 4)
        assert out["labels"].dtype == torch.int64 and set(out["labels"].tolist()) <= {1, 2, 3, 4}
        assert (
            out["masks"].shape == (n, 1, *image.shape[-2:]) and out["masks"].dtype.is_floating_point
        )
        assert 0 <= out["masks"].min() and out["masks"].max() <= 1
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
        assert (out["scores"] >= model.score_thresh).all()
        # boxes are the masks' tight boxes (x2, y2 exclusive)
        expected = boxes_from_masks((out["masks"][:, 0] > 0.5).numpy())
        assert torch.equal(out["boxes"], torch.from_numpy(expected))
        assert (out["boxes"][:, 2:] > out["boxes"][:, :2]).all()


@needs_transformers
def test_post_processing_scores_class_times_mask_and_keeps_overlaps():
    model = tiny_model(tiny_cfg(box_score_thresh=0.0))
    assert isinstance(model, Mask2FormerSegmenter)
    q, c = model.model.config.num_queries, 4
    class_logits = torch.full((q, c + 1), -10.0)
    class_logits[0, 0] = class_logits[1, 3] = 10.0  # query 0: cake, query 1: person
    mask_logits = torch.full((q, 16, 16), -10.0)
    mask_logits[0, 2:10, 2:10] = 10.0
    mask_logits[1, 6:14, 6:14] = 10.0  # overlaps query 0's mask
    image = torch.zeros(3, 64, 64)
    out = model._detections(class_logits, mask_logits, (64, 64), image)
    top = out["masks"][:2, 0] > 0.5
    assert out["labels"][:2].tolist() == [1, 4] or out["labels"][:2].tolist() == [4, 1]
    assert (top[0] & top[1]).sum() > 0  # the overlap belongs to both instances
    # score = class probability x mean mask probability inside the mask
    mask = out["masks"][0, 0]
    expected = class_logits[0].softmax(-1).max() * mask[mask > 0.5].mean()
    assert out["scores"][0] == pytest.approx(expected.item(), rel=1e-5)
    assert len(out["scores"]) == 2  # the other queries' masks are empty: dropped
    # nothing above the threshold: empty outputs of the right shapes
    model.score_thresh = 0.999
    none = model._detections(class_logits.fill_(0.0), mask_logits, (64, 64), image)
    assert none["boxes"].shape == (0, 4) and none["masks"].shape == (0, 1, 64, 64)
    assert none["labels"].dtype == torch.int64 and none["scores"].shape == (0,)


# --- training through the engine ------------------------------------------------------------
@needs_transformers
def test_losses_fall_on_a_fixed_batch():
    # The summed loss is noisy step to step (Hungarian matching, sampled mask points) and its
    # path depends on the CPU's floating-point kernels: after 12 steps it had fallen 14-22%
    # depending on ATEN_CPU_CAPABILITY and thread count. After 30 steps the median of the last
    # 10 is 0.66-0.73 of the start on every path measured (docs/benchmarks.md, "Thresholds");
    # with lr 0 it stays at 1.0 +- 0.05, so 0.85 separates learning from not learning on any CPU.
    model = tiny_model()
    images, targets = two_images()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(30):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert all(math.isfinite(t) for t in totals)
    assert statistics.median(totals[-10:]) < 0.85 * statistics.mean(totals[:3]), totals


@needs_transformers
@pytest.mark.slow
def test_engine_trains_evaluates_checkpoints_and_resumes(synthetic_subset, tmp_path):
    cfg = tiny_cfg()
    whole = train(cfg.replace(cpu_amp_eval="bf16"), synthetic_subset, tmp_path / "whole")
    # bf16 prediction casts Mask R-CNN's convolutions only: Mask2Former validates in fp32
    assert whole["precision"].endswith("; validation predicts in fp32")
    rows = [r for r in read_metrics(tmp_path / "whole") if "loss_dice" in r]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert whole["final"]["segm"]["AP"] >= 0  # COCOeval ran on its predictions

    # checkpoint round trip: the config inside rebuilds the same model, offline
    val = open_split(synthetic_subset, "val")
    model, saved_cfg, _ = model_from_checkpoint(
        tmp_path / "whole" / "last.pt", categories=val.categories
    )
    assert saved_cfg.arch == "mask2former" and saved_cfg.m2f_config == "tiny"
    results = predict(model, val, "cpu")
    assert results and {r["category_id"] for r in results} <= {1, 2, 3, 4}
    metrics = evaluate(model, val, "cpu")
    assert metrics["segm"]["AP"] == pytest.approx(whole["final"]["segm"]["AP"])
    table = occlusion_ap(val.coco, results)
    assert table["all"]["instances"] > 0 and table["all"]["segm"]["AP"] >= 0

    # stopped after one epoch and resumed: the same weights as the uninterrupted run
    train(cfg.replace(max_iters=6), synthetic_subset, tmp_path / "split")
    resumed = train(cfg, synthetic_subset, tmp_path / "split", resume=True)
    assert resumed["iteration"] == whole["iteration"]
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- weights ------------------------------------------------------------------------------------
@needs_transformers
def test_missing_weights_name_the_model_the_cache_and_the_command(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_pretrained("seglib-tests/not-a-cached-model")
    message = str(info.value)
    assert "seglib-tests/not-a-cached-model" in message and str(hf_cache_dir()) in message
    assert "python -m seglib fetch-weights mask2former" in message
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_pretrained(str(tmp_path / "nowhere"))
    cfg = TrainConfig(arch="mask2former", m2f_pretrained="seglib-tests/not-a-cached-model")
    with pytest.raises(MissingWeightsError, match="fetch-weights mask2former"):
        build_model(cfg.num_classes, "coco", "mask2former", cfg)
    assert MODEL_ID == "facebook/mask2former-swin-tiny-coco-instance"


@pytest.fixture(scope="module")
def coco_like_folder(tmp_path_factory):
    """A tiny random Mask2Former with an 80-class COCO-like head, saved by save_pretrained."""
    pytest.importorskip("transformers", reason="pip install -r requirements-detr.txt")
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(1)
    model = Mask2FormerForUniversalSegmentation(hf_config("tiny", coco_like_id2label()))
    folder = tmp_path_factory.mktemp("m2f-coco-like")
    model.save_pretrained(folder)
    return folder, model.eval()


@needs_transformers
def test_coco_head_is_mapped_to_the_subset_by_name(coco_like_folder):
    folder, coco_model = coco_like_folder
    cfg = TrainConfig(
        arch="mask2former", weights="coco", m2f_config="tiny", m2f_pretrained=str(folder)
    )
    model = tiny_model(cfg)
    id2label = coco_model.config.id2label
    rows = subset_head_rows(id2label, ["cake", "car", "dog", "person"])
    assert [id2label[r] for r in rows[:-1]] == ["cake", "car", "dog", "person"]
    assert rows == [55, 2, 16, 0, 80]  # contiguous 0..79 ids, not COCO's 61, 3, 18, 1
    head = model.model.class_predictor
    assert head.out_features == 5
    assert torch.equal(head.weight, coco_model.class_predictor.weight[rows])
    assert torch.equal(head.bias, coco_model.class_predictor.bias[rows])
    assert model.model.config.id2label == {0: "cake", 1: "car", 2: "dog", 3: "person"}
    # everything but the head is the pretrained model's
    ours = model.model.state_dict()
    for k, v in coco_model.state_dict().items():
        if not k.startswith(("class_predictor", "criterion")):
            assert torch.equal(ours[k], v), k
    # so its logits are the COCO logits of those classes and of no-object
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = coco_model(pixel_values=x).class_queries_logits[0]
        b = model.model.eval()(pixel_values=x).class_queries_logits[0]
    assert torch.allclose(b, a[:, rows], atol=1e-5)
    # and it trains (the loss is rebuilt for 4 classes + no-object)
    model.train()
    images, targets = two_images()
    assert torch.isfinite(sum(model(images, targets).values()))


@needs_transformers
def test_zero_shot_keeps_the_coco_softmax_and_reports_subset_labels(
    coco_like_folder, synthetic_subset
):
    folder, coco_model = coco_like_folder
    val = open_split(synthetic_subset, "val")
    cfg = TrainConfig(
        arch="mask2former",
        weights="coco",
        m2f_config="tiny",
        m2f_pretrained=str(folder),
        box_score_thresh=0.0,
        min_size=64,
        max_size=64,
    )
    model = build_zero_shot_mask2former(val.categories, cfg)
    assert not model.training
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        out = model([image])[0]
        logits = coco_model(pixel_values=model.batch_images([image])[0]).class_queries_logits[0]
    assert set(out["labels"].tolist()) <= {1, 2, 3, 4}
    probs = logits.softmax(-1)  # all 80 classes + no-object compete
    best = probs[:, [55, 2, 16, 0]].max()
    assert out["scores"].max() <= best + 1e-6
    with pytest.raises(RuntimeError, match="evaluation only"):
        model.train()(
            [image],
            [{"masks": torch.zeros(0, 64, 64), "labels": torch.zeros(0, dtype=torch.int64)}],
        )


@needs_transformers
def test_pretrained_that_does_not_fit_the_preset_names_both(coco_like_folder):
    folder, _ = coco_like_folder
    cfg = TrainConfig(arch="mask2former", weights="coco", m2f_pretrained=str(folder))
    with pytest.raises(CheckpointError, match="swin-tiny"):
        tiny_model(cfg)


# --- the base install ---------------------------------------------------------------------------
@pytest.mark.slow
def test_base_package_trains_mask_rcnn_with_transformers_blocked(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["transformers"] = None  # any import of it raises ImportError
        import torch
        import seglib, seglib.app.cli, seglib.engine.trainer, seglib.evaluation.prediction, seglib.studies.family_comparison
        from seglib.core.config import TrainConfig
        from seglib.models.builder import build_model
        cfg = TrainConfig.smoke(min_size=64, max_size=64)
        model = build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)
        masks = torch.zeros(1, 64, 64, dtype=torch.uint8)
        masks[0, 8:40, 8:40] = 1
        target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1]),
                  "masks": masks}
        losses = model([torch.rand(3, 64, 64)], [target])
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
        try:
            build_model(cfg.num_classes, "none", "mask2former", cfg.replace(arch="mask2former"))
        except ImportError as e:
            print("BLOCKED:", e)
        assert "transformers" not in [m for m in sys.modules if sys.modules[m] is not None]
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BLOCKED:" in done.stdout and "requirements-detr.txt" in done.stdout


@needs_transformers
@pytest.mark.slow
def test_a_mask2former_run_goes_through_notebook_04s_cached_predictions(tmp_path, synthetic_subset):
    import shutil

    paths = get_paths("smoke", tmp_path, run="m2f")
    shutil.copytree(synthetic_subset, paths.subset)
    cfg = tiny_cfg(num_epochs=1, box_score_thresh=0.5, detections_per_img=10)
    runs.start_run(paths, runs.RunRequest("m2f", cfg))
    train(cfg, paths.subset, paths.run)
    preds = prediction_cache.split_predictions(paths, "val", "cpu")
    per_image = {}
    for r in preds.results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    # the in-model filters were opened: 100 per image, scores far below the config's 0.5
    assert max(per_image.values()) > cfg.detections_per_img
    assert min(r["score"] for r in preds.results) < 0.5
    with pytest.warns(UserWarning, match="ZERO-SHOT STAND-IN"):
        zero = prediction_cache.split_predictions(paths, "val", "cpu", zero_shot=True)
    assert zero.source["zero_shot_weights"] == "stand-in"
    labels = {r["category_id"] for r in preds.results}
    assert {r["category_id"] for r in zero.results} <= labels | {1, 2, 3, 4}
    metrics = prediction_cache.evaluate_split(paths, preds, OperatingPoint(0.5))
    assert metrics["segm"]["AP"] >= 0
