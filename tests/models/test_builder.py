"""Model builder and arch table, weight cache, zero-shot mapping, frozen BatchNorm (offline)."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from seglib.core import config
from seglib.core.config import TrainConfig
from seglib.models import builder
from seglib.models.builder import SegmentationModel, build_model, build_model_structure
from seglib.models.checkpoint import CheckpointError
from seglib.models.maskrcnn import FrozenBatchNorm2d as SeglibFrozenBatchNorm2d
from seglib.models.postprocess import wrap
from seglib.models.precision import predicts_in
from seglib.models.weights import MissingWeightsError, weights_file
from seglib.models.zeroshot import (
    ZeroShotMaskRCNN,
    build_zero_shot_model,
    zero_shot_baseline,
    zero_shot_maskrcnn,
)

#: A split's categories: COCO's ids, in label order (cake 1, car 2, dog 3, person 4).
CATEGORIES = [
    {"id": 61, "name": "cake", "supercategory": "food"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
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
    # torchvision's BatchNorm structure, which the COCO and ImageNet files fit
    return TrainConfig.smoke(norm="bn")


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


def test_roi_sampling_ratio_and_mask_grid_reach_the_heads_and_the_zero_shot_model_keeps_cocos():
    cfg = TrainConfig.demo(roi_sampling_ratio=1, mask_pool_size=7)
    model = build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)
    heads = model.roi_heads
    assert heads.box_roi_pool.sampling_ratio == heads.mask_roi_pool.sampling_ratio == 1
    assert heads.mask_roi_pool.output_size == (7, 7) and heads.box_roi_pool.output_size == (7, 7)
    zero_shot = build_zero_shot_model(CATEGORIES, cfg=cfg, weights="none").model
    assert zero_shot.roi_heads.mask_roi_pool.sampling_ratio == 2  # as the COCO weights learned
    assert zero_shot.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert TrainConfig().roi_sampling_ratio == 2 and TrainConfig().mask_pool_size == 14


def test_a_coarser_mask_grid_trains_and_pastes_masks_of_the_image_size():
    """With a 7x7 mask pool the head's logits are 14x14: the loss takes targets of that size
    and prediction pastes them into full-size masks, at 480x640 as users run it."""
    cfg = TrainConfig.demo(mask_pool_size=7, min_size=480, max_size=640, box_score_thresh=0.0)
    model = build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)
    image = torch.zeros(3, 480, 640)
    image[:, 100:300, 200:500] = 1.0
    target = {
        "boxes": torch.tensor([[200.0, 100.0, 500.0, 300.0]]),
        "labels": torch.tensor([2]),
        "masks": (image[:1] > 0).to(torch.uint8),
    }
    logits = []
    handle = model.roi_heads.mask_predictor.register_forward_hook(
        lambda m, i, out: logits.append(out.shape)
    )
    losses = model.train()([image], [target])
    assert torch.isfinite(losses["loss_mask"]) and logits[-1][-2:] == (14, 14)
    with torch.no_grad():
        out = model.eval()([image])[0]
    handle.remove()
    assert len(out["masks"]) > 0 and out["masks"].shape[-2:] == (480, 640)
    assert logits[-1][-2:] == (14, 14)


def _save_random_coco(arch: str, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    state = build_model(91, "none", arch, cfg).state_dict()
    path = weights_file("coco", arch)
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("arch", ["v1", "v2"])
def test_coco_weights_load_from_torch_home_cache(arch, tmp_path):
    cfg = TrainConfig.smoke(norm="bn", trainable_backbone_layers=3)
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
    with pytest.raises(ValueError, match=r"arch must be one of \('mask2former', 'v1', 'v2'\)"):
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
    with pytest.raises(ValueError, match="category id 99 is not a COCO category id"):
        ZeroShotMaskRCNN(_FixedDetector(), [{"id": 99, "name": "thing"}])
    with pytest.raises(ValueError, match="older seglib"):  # an old split's 1..k with coco_id
        ZeroShotMaskRCNN(_FixedDetector(), [{"id": 1, "name": "cake", "coco_id": 61}])


class _CrowdedDetector(nn.Module):
    """300 detections, best first: the 200 best of COCO classes outside the subset."""

    def forward(self, images):
        labels = torch.tensor([2] * 200 + [1, 3, 18, 61] * 25)  # bicycle, then the subset's
        n = len(labels)
        return [
            {
                "boxes": torch.rand(n, 4),
                "labels": labels,
                "scores": torch.linspace(0.99, 0.1, n),
                "masks": torch.rand(n, 1, 8, 8),
            }
            for _ in images
        ]


def test_zero_shot_keeps_the_best_detections_of_the_subset_not_of_all_coco():
    cfg = TrainConfig(detections_per_img=60)
    model = build_zero_shot_model(CATEGORIES, cfg=cfg, model=_CrowdedDetector())
    (out,) = model([torch.rand(3, 8, 8)])
    # a cap of 100 before the mapping would have left no subset detection at all
    assert len(out["labels"]) == 60 and set(out["labels"].tolist()) == {1, 2, 3, 4}
    assert torch.equal(out["scores"], torch.linspace(0.99, 0.1, 300)[200:260])


def test_zero_shot_reads_coco_weights_from_cache(tmp_path, cfg):
    _save_random_coco("v1", cfg)
    model = build_zero_shot_model(CATEGORIES, cfg=cfg.replace(trainable_backbone_layers=3))
    assert _heads(model.model) == (91, 364, 91)  # unmodified COCO heads
    # 300 candidates over the 91 classes before the subset keeps its best cfg.detections_per_img
    assert model.model.roi_heads.detections_per_img == 300
    assert model.detections_per_img == cfg.detections_per_img
    with torch.inference_mode():
        outputs = model(_images(1))
    assert set(outputs[0]["labels"].tolist()) <= {1, 2, 3, 4}


def test_zero_shot_maskrcnn_uses_cached_coco_weights_or_warns_about_its_stand_in(tmp_path, cfg):
    with pytest.warns(UserWarning, match="ZERO-SHOT STAND-IN"):
        stand_in = zero_shot_maskrcnn(CATEGORIES, cfg)
    assert _heads(stand_in.model) == (91, 364, 91)
    with pytest.raises(MissingWeightsError):
        zero_shot_maskrcnn(CATEGORIES, cfg.replace(weights="coco", trainable_backbone_layers=3))
    _save_random_coco("v1", cfg)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real = zero_shot_baseline(CATEGORIES, cfg)  # a Mask R-CNN run's: zero_shot_maskrcnn
    assert isinstance(real, ZeroShotMaskRCNN)
    expected = torch.load(weights_file("coco", "v1"), weights_only=True)
    key = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(real.model.state_dict()[key], expected[key])


@pytest.mark.parametrize("postprocess, flip", [("nms", False), ("soft-nms-gaussian", True)])
def test_zero_shot_predicts_masks_for_the_subsets_detections_only(monkeypatch, postprocess, flip):
    """A random 91-class Mask R-CNN at 480x640 that scores every candidate: narrowing to the
    subset before the mask head gives what narrowing after it gave, under torchvision's NMS
    and under seglib's post-processing with flip TTA (keeping 300 candidates over the 91
    classes too), and the mask head sees at most detections_per_img boxes a view instead of
    the 300 candidates."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        weights="none",
        box_score_thresh=0.0,
        detections_per_img=60,
        min_size=480,
        max_size=640,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=100,
    )
    zero_shot = build_zero_shot_model(CATEGORIES, cfg=cfg, weights="none")
    model = wrap(
        zero_shot, cfg.replace(postprocess=postprocess, tta_hflip=flip, detections_per_img=300)
    )
    rois: list[int] = []
    pool = zero_shot.model.roi_heads.mask_roi_pool
    pool.register_forward_hook(lambda module, args, out: rois.append(out.shape[0]))
    images = [torch.rand(3, 480, 640)]
    with torch.inference_mode():
        narrowed, narrowed_rois = model(images), list(rois)
        rois.clear()
        monkeypatch.setattr(ZeroShotMaskRCNN, "_narrowed_before_masks", contextlib.nullcontext)
        after = model(images)
    (a,), (b,) = narrowed, after
    assert 0 < len(a["labels"]) <= 60 and set(a["labels"].tolist()) <= {1, 2, 3, 4}
    assert max(narrowed_rois) <= 60 and max(rois) == 300
    for key in ("boxes", "labels", "scores"):
        assert torch.equal(a[key], b[key]), key
    assert torch.allclose(a["masks"], b["masks"], atol=1e-5)


# --- the interface, the architecture table, frozen BatchNorm -----------------------------------
def test_maskrcnn_and_its_zero_shot_wrapper_follow_the_interface(cfg):
    model = build_model(5, "none", "v1", cfg)
    assert isinstance(model, SegmentationModel)
    assert isinstance(build_zero_shot_model(CATEGORIES, model=_FixedDetector()), SegmentationModel)
    assert not isinstance(object(), SegmentationModel)


def test_the_architecture_table_holds_exactly_the_configs_archs():
    assert tuple(builder.BUILDERS) == config.ARCHS


def test_build_model_calls_the_archs_builder_and_names_the_choices(monkeypatch, cfg):
    calls = []

    def toy_builder(cfg, *, arch, num_classes, weights, load):
        calls.append((arch, num_classes, weights, load))
        return nn.Linear(1, num_classes)

    monkeypatch.setitem(builder.BUILDERS, "toy", toy_builder)
    assert build_model(3, "none", "toy", cfg).out_features == 3
    assert calls == [("toy", 3, "none", True)]
    with pytest.raises(
        ValueError, match=r"arch must be one of \('mask2former', 'toy', 'v1', 'v2'\)"
    ):
        build_model(3, "none", "v3", cfg)


def test_the_structure_for_a_checkpoint_skips_random_init_and_restores_torch_init(monkeypatch, cfg):
    """build_model_structure fills no weight (a checkpoint overwrites them all): it draws no
    random number, and torch.nn.init works again afterwards, also after a failed build."""
    originals = dict(vars(nn.init))
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    model = build_model_structure(cfg)
    assert torch.equal(torch.rand(1), expected)  # no random init ran
    assert dict(vars(nn.init)) == originals
    torch.manual_seed(0)
    build_model(cfg.num_classes, "none", cfg.arch, cfg)  # a fresh model is initialised
    assert not torch.equal(torch.rand(1), expected)
    model.load_state_dict(build_model(cfg.num_classes, "none", cfg.arch, cfg).state_dict())

    def failing(cfg, **kwargs):
        nn.Linear(2, 2)
        raise RuntimeError("builder failed")

    monkeypatch.setitem(builder.BUILDERS, cfg.arch, failing)
    with pytest.raises(RuntimeError, match="builder failed"):
        build_model_structure(cfg)
    assert dict(vars(nn.init)) == originals


def test_only_the_mask_rcnn_archs_predict_in_bf16_and_only_where_asked(monkeypatch, cfg):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    by_arch = {arch: builder.predicts_in_arch(arch, cpu, "bf16") for arch in builder.BUILDERS}
    assert by_arch == {"v1": "bf16", "v2": "bf16", "mask2former": "fp32"}
    assert {builder.predicts_in_arch(arch, cpu, "off") for arch in builder.BUILDERS} == {"fp32"}
    assert {builder.predicts_in_arch(arch, cuda, "bf16") for arch in builder.BUILDERS} == {"fp32"}
    # what the built model says (seglib.models.precision.predicts_in)
    assert predicts_in(build_model(5, "none", "v1", cfg), cpu, "bf16") == by_arch["v1"]
    # read from the table: an arch is Mask R-CNN by its builder, not by its name
    monkeypatch.setitem(builder.BUILDERS, "toy", builder.BUILDERS["v1"])
    assert builder.predicts_in_arch("toy", cpu, "bf16") == "bf16"
    monkeypatch.setitem(builder.BUILDERS, "v2", builder.BUILDERS["mask2former"])
    assert builder.predicts_in_arch("v2", cpu, "bf16") == "fp32"
    with pytest.raises(ValueError, match="arch must be one of"):
        builder.predicts_in_arch("v3", cpu, "bf16")


def test_importing_seglib_does_not_import_transformers():
    code = (
        "import sys, seglib.models.builder, seglib.models.zeroshot, seglib.engine.trainer, "
        "seglib.evaluation.prediction, seglib.app.cli\n"
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _frozen_bn(channels: int = 8) -> SeglibFrozenBatchNorm2d:
    g = torch.Generator().manual_seed(0)
    bn = SeglibFrozenBatchNorm2d(channels)
    bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.bias.copy_(torch.randn(channels, generator=g))
    bn.running_mean.copy_(torch.randn(channels, generator=g))
    bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    return bn


def test_frozen_batchnorm_keeps_the_autocast_dtype():
    bn = _frozen_bn()
    conv = nn.Conv2d(3, 8, 3)
    x = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bn(conv(x))
        upcast = torchvision.ops.misc.FrozenBatchNorm2d.forward(bn, conv(x))
    assert low.dtype == torch.bfloat16
    assert upcast.dtype == torch.float32  # what torchvision's gives: every activation upcast
    reference = bn(conv(x))
    assert reference.dtype == torch.float32
    assert torch.allclose(low.float(), reference, rtol=2e-2, atol=2e-2)
    # float32 inputs: torchvision's result, bit for bit
    assert torch.equal(reference, torchvision.ops.misc.FrozenBatchNorm2d.forward(bn, conv(x)))


def test_pretrained_v1_freezes_batchnorm_with_the_dtype_keeping_layer(cfg):
    model = build_model_structure(cfg.replace(weights="coco", trainable_backbone_layers=3))
    frozen = [m for m in model.backbone.body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(isinstance(m, SeglibFrozenBatchNorm2d) for m in frozen)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        features = model.backbone.body(torch.rand(1, 3, 64, 64))
    assert {f.dtype for f in features.values()} == {torch.bfloat16}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_frozen_batchnorm_keeps_bf16_on_the_gpu():
    bn, conv = _frozen_bn().cuda(), nn.Conv2d(3, 8, 3).cuda()
    x = torch.rand(2, 3, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = bn(conv(x))
    assert low.dtype == torch.bfloat16
    reference = bn(conv(x))
    assert (low.float() - reference).abs().max() <= 0.02 * reference.abs().max()
