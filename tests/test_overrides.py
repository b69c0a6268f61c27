import pytest

from seglib.core.config import TrainConfig
from seglib.core.overrides import env_overrides, parse_overrides, slider_fields


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
