import pytest

from seglib.core.config import TrainConfig
from seglib.core.overrides import (
    apply_overrides,
    check_names,
    env_overrides,
    parse_overrides,
    slider_fields,
)


def test_slider_ranges_contain_their_defaults():
    cfg = TrainConfig.seed_recipe()
    sliders = slider_fields()
    assert {"lr", "batch_size", "num_epochs", "min_size"} <= set(sliders)
    for name, rng in sliders.items():
        value = getattr(cfg, name)  # None: unset, its slider starts at what stands in for it
        assert value is None or rng["min"] <= value <= rng["max"], name
    # unset in the seed recipe, study_epochs' slider starts at num_epochs
    assert sliders["study_epochs"]["min"] <= cfg.num_epochs <= sliders["study_epochs"]["max"]


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


def test_one_message_for_a_bad_name_whichever_way_it_came(monkeypatch):
    with pytest.raises(ValueError) as from_set:
        parse_overrides(["epochs=3"])
    monkeypatch.setenv("SEGLIB_SET", '{"epochs": 3}')
    with pytest.raises(ValueError) as from_env:
        env_overrides()
    with pytest.raises(ValueError) as applied:
        apply_overrides(TrainConfig.smoke(), {"epochs": 3})
    assert str(from_set.value) == str(from_env.value) == str(applied.value)
    assert "'epochs' is not a TrainConfig field (did you mean 'num_epochs'?)" in str(applied.value)


def test_one_message_for_a_bad_value_whichever_way_it_came(monkeypatch):
    base = TrainConfig.smoke()
    monkeypatch.setenv("SEGLIB_SET", '{"arch": "v3"}')
    with pytest.raises(ValueError) as from_env:
        apply_overrides(base, env_overrides())
    with pytest.raises(ValueError) as from_set:
        apply_overrides(base, parse_overrides(["arch=v3"]))
    assert str(from_env.value) == str(from_set.value)
    assert "arch must be one of ('v1', 'v2', 'mask2former'), got 'v3'" in str(from_set.value)
    assert apply_overrides(base, {"lr": 0.002}) == base.replace(lr=0.002)


def test_check_names_refuses_fields_a_reader_does_not_read():
    check_names(["device"], reads=("device",), reader="`study`")
    with pytest.raises(ValueError, match="'lr' is a TrainConfig field that `study` does not read"):
        check_names(["lr"], reads=("device",), reader="`study`")


def test_set_and_seglib_set_reach_the_augmentation_fields(monkeypatch):
    items = [
        "scale_jitter=large",
        "copy_paste_prob=0.5",
        "copy_paste_max_instances=4",
        "copy_paste_scale=[0.5, 1.5]",
    ]
    via_set = apply_overrides(TrainConfig.seed_recipe(), parse_overrides(items))
    assert (via_set.scale_jitter, via_set.copy_paste_prob) == ("large", 0.5)
    assert (via_set.copy_paste_max_instances, via_set.copy_paste_scale) == (4, (0.5, 1.5))
    monkeypatch.setenv(
        "SEGLIB_SET",
        '{"scale_jitter": "large", "copy_paste_prob": 0.5, "copy_paste_max_instances": 4, '
        '"copy_paste_scale": [0.5, 1.5]}',
    )
    assert apply_overrides(TrainConfig.seed_recipe(), env_overrides()) == via_set
    assert TrainConfig.from_dict(via_set.to_dict()) == via_set
    with pytest.raises(ValueError, match="scale_jitter must be one of"):
        apply_overrides(TrainConfig.seed_recipe(), parse_overrides(["scale_jitter=lsj"]))
