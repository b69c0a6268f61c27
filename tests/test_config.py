import json

import pytest

from seglib.config import (
    DEFAULT_CATEGORIES,
    TrainConfig,
    env_overrides,
    parse_overrides,
    slider_fields,
)


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


def test_slider_ranges_contain_their_defaults():
    cfg = TrainConfig.seed_recipe()
    sliders = slider_fields()
    assert {"lr", "batch_size", "num_epochs", "min_size"} <= set(sliders)
    for name, rng in sliders.items():
        assert rng["min"] <= getattr(cfg, name) <= rng["max"], name


def test_parse_overrides_types_values_and_names_bad_fields():
    assert parse_overrides(["lr=0.002", "num_epochs=3", "weights=none", "amp=false"]) == {
        "lr": 0.002,
        "num_epochs": 3,
        "weights": "none",
        "amp": False,
    }
    assert TrainConfig.smoke(**parse_overrides(["lr_milestones=[0.5, 0.9]"])).lr_milestones == (
        0.5,
        0.9,
    )
    with pytest.raises(ValueError, match="learning_rate"):
        parse_overrides(["learning_rate=0.1"])
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_overrides(["lr"])


def test_env_overrides_read_a_json_object(monkeypatch):
    monkeypatch.delenv("SEGLIB_SET", raising=False)
    assert env_overrides() == {}
    monkeypatch.setenv("SEGLIB_SET", '{"lr": 0.002, "num_epochs": 3}')
    assert TrainConfig.smoke(**env_overrides()).num_epochs == 3
    monkeypatch.setenv("SEGLIB_SET", '{"epochs": 3}')
    with pytest.raises(ValueError, match="epochs"):
        env_overrides()
    monkeypatch.setenv("SEGLIB_SET", "[1]")
    with pytest.raises(ValueError, match="JSON object"):
        env_overrides()


def test_profiles_demo_and_smoke_share_the_recipe_that_learns():
    demo, smoke = TrainConfig.demo(), TrainConfig.smoke()
    assert demo.lr_schedule == smoke.lr_schedule == "cosine" and demo.lr == smoke.lr
    assert smoke.num_train * smoke.num_epochs < demo.num_train * demo.num_epochs
    assert demo.synthetic_images >= demo.num_val + demo.num_test
    assert smoke.synthetic_images >= smoke.num_val + smoke.num_test
    assert TrainConfig.from_profile("demo") == demo
