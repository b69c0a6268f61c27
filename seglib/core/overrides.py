"""Changing a setting from outside the code: ``--set NAME=VALUE`` items and ``$SEGLIB_SET``.

Both read into a dict of ``TrainConfig`` fields, checked against the field names here and
against each field's type and range when they reach ``TrainConfig``. ``slider_fields`` lists
the fields the notebook forms edit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from seglib.core.config import TrainConfig


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=0.002", "num_epochs=3"]`` -> ``{"lr": 0.002, "num_epochs": 3}``.

    Each value is read as JSON where it parses (numbers, true/false, null, lists) and as a
    plain string otherwise, so ``weights=none`` and ``categories=["dog","cake"]`` both work.
    Types and ranges are checked when the values reach ``TrainConfig``.

    Raises:
        ValueError: an item without ``=``, or a name that is not a TrainConfig field (the
            message lists the valid names).
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, for example lr=0.002")
        if name not in known:
            raise ValueError(
                f"--set {item!r}: {name!r} is not a TrainConfig field; valid: {sorted(known)}"
            )
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


#: Environment variable through which ``python -m seglib run --set`` hands overrides to the
#: notebooks' kernels: a JSON object of TrainConfig fields.
OVERRIDES_ENV = "SEGLIB_SET"


def env_overrides() -> dict[str, Any]:
    """The TrainConfig overrides in ``$SEGLIB_SET`` (a JSON object), or ``{}`` when unset.

    Raises:
        ValueError: the variable is not a JSON object of known field names.
    """
    raw = os.environ.get(OVERRIDES_ENV, "").strip()
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"${OVERRIDES_ENV} is not valid JSON ({e}): {raw!r}") from e
    if not isinstance(values, dict):
        raise ValueError(
            f"${OVERRIDES_ENV} must be a JSON object of TrainConfig fields, got {raw!r}"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"${OVERRIDES_ENV} names unknown TrainConfig fields {unknown}")
    return values


def slider_fields() -> dict[str, dict[str, Any]]:
    """Field name -> slider range, for every TrainConfig field a notebook slider edits."""
    return {
        f.name: f.metadata["slider"]
        for f in dataclasses.fields(TrainConfig)
        if "slider" in f.metadata
    }
