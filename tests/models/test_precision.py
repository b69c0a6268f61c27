"""bf16 prediction in the convolutions only: what runs in bf16, what comes out in fp32.

A randomly initialised demo Mask R-CNN (GroupNorm, from scratch) at 128 px and at 480 x 640,
the size users predict at; ``cpu_amp="bf16"`` is forced, so the tests hold on CPUs without
native bf16 too (there it is emulated, only slower).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglib.core.config import TrainConfig
from seglib.core.runtime import cpu_bf16_native
from seglib.models.builder import build_model
from seglib.models.precision import (
    BF16_PARTS,
    as_float32,
    autocast_parts,
    bf16_parts,
    predicts_in,
)
from seglib.models.zeroshot import build_zero_shot_model

SIZES = [(128, 128), (480, 640)]
CPU = torch.device("cpu")


def _model(size: tuple[int, int]) -> nn.Module:
    torch.manual_seed(0)
    side = max(size)
    cfg = TrainConfig.demo(min_size=min(size), max_size=side, box_score_thresh=0.0)
    return build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg).eval()


def _images(size: tuple[int, int]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, *size, generator=generator)]


def _bf16_exact(values: torch.Tensor) -> torch.Tensor:
    return values == values.bfloat16().float()


@pytest.mark.parametrize("size", SIZES)
def test_convolutions_run_in_bf16_and_outputs_are_fp32(size):
    model = _model(size)
    seen: dict[str, torch.dtype] = {}
    watched = {
        "backbone conv": model.backbone.body.conv1,
        "mask head conv": model.roi_heads.mask_head[0],
        "box predictor": model.roi_heads.box_predictor.cls_score,
    }
    for name, module in watched.items():
        module.register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.dtype}))
    with torch.inference_mode(), autocast_parts(model, torch.bfloat16) as switched:
        (out,) = model(_images(size))
    assert switched
    assert len(out["boxes"]) > 0, "the random model should still detect something"
    assert seen["backbone conv"] == seen["mask head conv"] == torch.bfloat16
    assert seen["box predictor"] == torch.float32  # scores and box deltas from fp32 features
    for key in ("boxes", "scores", "masks"):
        assert out[key].dtype == torch.float32, key


@pytest.mark.parametrize("size", SIZES)
def test_boxes_and_scores_keep_fp32_resolution(size):
    """Whole-model autocast rounds coordinates and scores to bf16 (8 bits of mantissa: 4 px
    steps at 640 px, scores that tie); the parts keep them continuous."""
    model = _model(size)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        (blanket,) = model(_images(size))
    with torch.inference_mode(), autocast_parts(model, torch.bfloat16):
        (parts,) = model(_images(size))
    assert blanket["boxes"].dtype == torch.bfloat16  # the reason for the parts
    assert _bf16_exact(blanket["scores"].float()).all()
    assert not _bf16_exact(parts["scores"]).all()
    assert not _bf16_exact(parts["boxes"]).all()


@pytest.mark.parametrize("size", SIZES)
def test_features_stay_close_to_fp32(size):
    model = _model(size)
    images = model.transform(_images(size))[0].tensors
    with torch.inference_mode():
        exact = model.backbone(images)
        with autocast_parts(model, torch.bfloat16):
            mixed = model.backbone(images)
    for level, value in exact.items():
        assert mixed[level].dtype == torch.float32
        error = (mixed[level] - value).norm() / value.norm()
        # bf16 keeps 8 bits of mantissa (0.4% an operation); through ~60 random layers the
        # error grows to a few percent (0.053 seen), garbage would be near 1
        assert error < 0.1, f"FPN level {level}: relative error {error:.3f}"


def test_forward_is_restored_also_when_the_block_raises():
    model = _model((128, 128))
    parts = bf16_parts(model)
    assert len(parts) == len(BF16_PARTS)
    with pytest.raises(RuntimeError, match="stop"):
        with autocast_parts(model, torch.bfloat16):
            assert all("forward" in p.__dict__ for p in parts)
            raise RuntimeError("stop")
    assert not any("forward" in p.__dict__ for p in parts)
    with torch.inference_mode():
        (out,) = model(_images((128, 128)))
    assert out["scores"].dtype == torch.float32


def test_nested_blocks_restore_the_outer_forward():
    model = _model((128, 128))
    with autocast_parts(model, torch.bfloat16):
        outer = model.backbone.__dict__["forward"]
        with autocast_parts(model, torch.bfloat16):
            assert model.backbone.__dict__["forward"] is not outer
        assert model.backbone.__dict__["forward"] is outer
    assert "forward" not in model.backbone.__dict__


def test_wrapped_detectors_are_found():
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    wrapped = build_zero_shot_model(categories, weights="none")
    assert len(bf16_parts(wrapped)) == len(BF16_PARTS)
    assert predicts_in(wrapped, CPU, "bf16") == "bf16"


def test_without_a_detector_or_a_dtype_nothing_changes():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    with autocast_parts(plain, torch.bfloat16) as switched:
        assert not switched
        assert plain(torch.rand(1, 3, 8, 8)).dtype == torch.float32
    model = _model((128, 128))
    with autocast_parts(model, None) as switched:
        assert not switched
        assert "forward" not in model.backbone.__dict__


def test_only_a_detector_asked_for_bf16_on_the_cpu_predicts_in_bf16():
    model, plain = _model((128, 128)), nn.Sequential(nn.Conv2d(3, 4, 3))
    assert predicts_in(model, CPU, "bf16") == "bf16"
    assert predicts_in(model, CPU, "off") == "fp32"
    assert predicts_in(model, CPU, "auto") == (
        "bf16" if cpu_bf16_native() else "fp32"
    )  # this CPU's
    assert predicts_in(plain, CPU, "bf16") == "fp32"  # no detector (Mask2Former): fp32
    assert predicts_in(model, torch.device("cuda"), "bf16") == "fp32"  # CUDA predicts in fp32


def test_as_float32_reaches_inside_containers():
    value = {"a": [torch.ones(2, dtype=torch.bfloat16), (torch.ones(1, dtype=torch.int64),)]}
    out = as_float32(value)
    assert out["a"][0].dtype == torch.float32
    assert out["a"][1][0].dtype == torch.int64
