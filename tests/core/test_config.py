import dataclasses
import json

import pytest

from seglib.core.config import DEFAULT_CATEGORIES, TrainConfig


def test_seed_defaults_are_the_seed_recipe():
    cfg = TrainConfig.seed_recipe()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.001, 0.9, 1e-4)
    assert (cfg.batch_size, cfg.num_epochs, cfg.weights, cfg.arch) == (2, 10, "coco", "v1")
    assert (cfg.num_train, cfg.num_val, cfg.num_test) == (300, 300, 30)
    assert cfg.categories == DEFAULT_CATEGORIES
    assert cfg.num_classes == 5


def test_smoke_profile_is_offline_tiny_and_cpu():
    cfg = TrainConfig.smoke()
    assert cfg.data_source == "synthetic" and cfg.weights == "none" and cfg.device == "cpu"
    assert cfg.max_size <= 128
    assert cfg.rpn_post_nms_top_n_train <= 100 and cfg.box_batch_size_per_image <= 64
    assert TrainConfig.smoke(lr=0.01).lr == 0.01
    assert TrainConfig.from_profile("smoke") == TrainConfig.smoke()
    assert TrainConfig.from_profile("seed") == TrainConfig()
    assert TrainConfig().seed == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": 0.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"arch": "v3"}, "arch"),
        ({"weights": "imagenet21k"}, "weights"),
        ({"min_size": 900, "max_size": 800}, "min_size"),
        ({"categories": ("dog", "dog")}, "categories"),
        ({"device": "tpu"}, "device"),
        ({"lr_schedule": "poly"}, "lr_schedule"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"categories": "person"}, "categories"),
        ({"weights": None}, "weights"),
        ({"lr": "0.1"}, "lr"),
        ({"num_epochs": 2.5}, "num_epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"lr_milestones": (8,)}, "lr_milestones"),
        ({"lr_milestones": (0.8, 0.5)}, "lr_milestones"),
        ({"box_nms_thresh": 0.0}, "box_nms_thresh"),
        ({"amp": 1}, "amp"),
    ],
)
def test_wrong_types_raise_value_error_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def test_ints_are_accepted_where_floats_are_expected():
    cfg = TrainConfig(lr=1, grad_clip_norm=5)
    assert isinstance(cfg.lr, float) and isinstance(cfg.grad_clip_norm, float)
    assert TrainConfig(max_iters=None, grad_clip_norm=None).grad_clip_norm is None


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ValueError, match="seed"):
        TrainConfig.from_profile("huge")


def test_json_round_trip(tmp_path):
    cfg = TrainConfig.smoke(lr_milestones=(0.3, 0.5), grad_clip_norm=None)
    path = cfg.save(tmp_path / "config.json")
    assert TrainConfig.load(path) == cfg
    assert json.loads(path.read_text())["categories"] == list(DEFAULT_CATEGORIES)


def test_load_names_the_file_on_bad_json_and_unknown_keys(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        TrainConfig.load(bad)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.load(unknown)


def test_profiles_demo_and_smoke_share_the_recipe_that_learns():
    demo, smoke = TrainConfig.demo(), TrainConfig.smoke()
    assert demo.lr_schedule == smoke.lr_schedule == "cosine" and demo.lr == smoke.lr
    assert smoke.num_train * smoke.num_epochs < demo.num_train * demo.num_epochs
    assert demo.synthetic_images >= demo.num_val + demo.num_test
    assert smoke.synthetic_images >= smoke.num_val + smoke.num_test
    assert TrainConfig.from_profile("demo") == demo


@pytest.mark.parametrize(
    "change, message",
    [
        # one-sided bounds, with a unit where the field has one
        ({"num_train": 0}, "num_train must be >= 1, got 0"),
        ({"synthetic_size": 31}, "synthetic_size must be >= 32 px, got 31"),
        ({"soft_nms_sigma": 0}, "soft_nms_sigma must be > 0, got 0.0"),
        # intervals: each end open or closed as the rule says
        ({"aug_strength": 2.5}, "aug_strength must be in [0, 2], got 2.5"),
        ({"lr": 0.0}, "lr must be in (0, 1], got 0.0"),
        ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
        ({"trainable_backbone_layers": 6}, "trainable_backbone_layers must be in [0, 5], got 6"),
        # fields typed "X | None" say so
        ({"max_iters": 0}, "max_iters must be None or >= 1, got 0"),
        ({"grad_clip_norm": 0}, "grad_clip_norm must be None or > 0, got 0.0"),
        # choices, with what else is accepted
        ({"norm": "ln"}, "norm must be one of ('bn', 'gn'), got 'ln'"),
        (
            {"weights": "x.bin"},
            "weights must be one of ('coco', 'imagenet', 'none') or a path ending in .pth/.pt, "
            "got 'x.bin'",
        ),
        ({"device": "tpu"}, "device must be one of ('auto', 'cpu', 'cuda') or 'cuda:N', got 'tpu'"),
        (
            {"lr_milestones": (0.8, 0.5)},
            "lr_milestones must be increasing fractions of the run in (0, 1), got (0.8, 0.5)",
        ),
    ],
)
def test_field_rules_name_the_field_the_rule_and_the_value(change, message):
    with pytest.raises(ValueError) as raised:
        TrainConfig(**change)
    assert str(raised.value) == f"invalid TrainConfig: {message}"


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"categories": ()}, "categories must not be empty"),
        ({"categories": ("dog", "dog")}, "categories repeat: ('dog', 'dog')"),
        ({"norm": "gn"}, "norm 'gn' builds a v1 Mask R-CNN from scratch"),
        ({"norm": "gn", "weights": "none", "arch": "v2"}, "got weights 'none', arch 'v2'"),
        ({"arch": "mask2former", "weights": "imagenet"}, "weights='imagenet' is a torchvision"),
        ({"arch": "mask2former", "m2f_config": "tiny"}, "fits m2f_config='swin-tiny' only"),
        ({"min_size": 900, "max_size": 800}, "need 32 <= min_size <= max_size, got 900, 800"),
        ({"postprocess_pool": 10}, "postprocess_pool (10) must be >= detections_per_img (100)"),
        (
            {"arch": "mask2former", "postprocess": "matrix-nms"},
            "'mask2former' has no NMS to replace",
        ),
        ({"arch": "mask2former", "tta_hflip": True}, "tta_hflip True replace Mask R-CNN's box NMS"),
    ],
)
def test_cross_field_checks_name_both_fields(change, fragment):
    with pytest.raises(ValueError) as raised:
        TrainConfig(**change)
    assert fragment in str(raised.value)


def test_cross_field_checks_pass_the_combinations_they_allow():
    assert TrainConfig(norm="gn", weights="none").norm == "gn"
    assert TrainConfig(norm="gn", arch="mask2former").norm == "gn"  # Mask2Former ignores norm
    assert TrainConfig(arch="mask2former", m2f_config="tiny", m2f_pretrained="folder").arch
    assert TrainConfig(weights="run/best.pt", device="cuda:1").device == "cuda:1"
    assert TrainConfig(max_iters=None, grad_clip_norm=None, compare_epochs=None).max_iters is None


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as raised:
        TrainConfig(lr=0.0, batch_size=0, arch="v3", postprocess_pool=10)
    message = str(raised.value)
    assert message.startswith("invalid TrainConfig: ") and message.count("; ") == 3
    for name in ("lr", "batch_size", "arch", "postprocess_pool"):
        assert name in message


def test_every_rule_is_for_a_field_and_the_choices_are_read_when_checking(monkeypatch):
    from seglib.core import config

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(config._field_rules()) <= names
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="toy")
    monkeypatch.setattr(config, "ARCHS", (*config.ARCHS, "toy"))
    assert TrainConfig(arch="toy").arch == "toy"


def test_profiles_are_the_defaults_with_the_profile_modules_values():
    from seglib.core import profiles

    demo, smoke = vars(TrainConfig.demo()), vars(TrainConfig.smoke())
    assert {k: demo[k] for k in profiles.DEMO} == profiles.DEMO
    assert {k: smoke[k] for k in profiles.SMOKE_FROM_DEMO} == profiles.SMOKE_FROM_DEMO
    untouched = set(demo) - set(profiles.DEMO) - set(profiles.SMOKE_FROM_DEMO)
    assert {k: smoke[k] for k in untouched} == {k: vars(TrainConfig())[k] for k in untouched}


def test_study_fields_check_their_values_and_survive_json(tmp_path):
    cfg = TrainConfig.demo()
    assert TrainConfig.load(cfg.save(tmp_path / "c.json")) == cfg  # study_sizes: a tuple again
    for sizes in ((), (0, 4), (8, 4), (4, 4)):
        with pytest.raises(ValueError, match="study_sizes must be increasing sizes of at least 1"):
            cfg.replace(study_sizes=sizes)
    with pytest.raises(ValueError, match="study_seeds must be >= 1"):
        cfg.replace(study_seeds=0)


def test_augmentation_fields_default_off_and_check_their_values():
    cfg = TrainConfig.seed_recipe()
    assert (cfg.scale_jitter, cfg.copy_paste_prob) == ("none", 0.0)  # the seed recipe's
    assert TrainConfig(copy_paste_scale=[1, 2]).copy_paste_scale == (1.0, 2.0)  # JSON lists
    bad = {
        "scale_jitter": ("huge", "one of ('none', 'standard', 'large'), got 'huge'"),
        "copy_paste_prob": (1.5, "in [0, 1], got 1.5"),
        "copy_paste_max_instances": (0, ">= 1, got 0"),
        "copy_paste_scale": ((2.0, 1.0), "a (lo, hi) range with 0 < lo <= hi, got (2.0, 1.0)"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError) as raised:
            TrainConfig(**{name: value})
        assert str(raised.value) == f"invalid TrainConfig: {name} must be {message}"
    with pytest.raises(ValueError, match=r"copy_paste_scale must be a \(lo, hi\) range"):
        TrainConfig(copy_paste_scale=(1.0,))
