"""One way to change a setting: ``--set NAME=VALUE``, ``$SEGLIB_SET`` and the notebook forms.

All three read into a dict of ``TrainConfig`` fields and reach a config through
``apply_overrides``, so a bad name or value fails with the same message whichever way it
came: a name that is no field is named, with the closest field and the valid ones; a value
of the wrong type or out of range is named by ``TrainConfig``'s own checks, with its type,
range or choices (``lr must be in (0, 1], got -1.0``). ``slider_fields`` lists the fields
the notebook forms edit.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from seglib.core.config import TrainConfig

#: Environment variable through which ``python -m seglib run --set`` hands overrides to the
#: notebooks' kernels: a JSON object of TrainConfig fields.
OVERRIDES_ENV = "SEGLIB_SET"


def setting_names() -> list[str]:
    """Every TrainConfig field, sorted: the names ``--set``, ``$SEGLIB_SET`` and forms take."""
    return sorted(f.name for f in dataclasses.fields(TrainConfig))


def check_names(
    names: Iterable[str], reads: Collection[str] | None = None, reader: str = ""
) -> None:
    """Refuse a name that is not a TrainConfig field, or, given ``reads``, one that ``reader``
    (a command, say) does not read.

    Raises:
        ValueError: names the field, the closest valid one and the valid names.
    """
    fields = setting_names()
    for name in names:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{name!r} is not a TrainConfig field{hint}; valid: {fields}")
        if reads is not None and name not in reads:
            raise ValueError(
                f"{name!r} is a TrainConfig field that {reader} does not read; "
                f"it reads: {sorted(reads)}"
            )


def apply_overrides(base: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """``base`` with ``values`` (field name -> value) applied and validated.

    Raises:
        ValueError: an unknown name (``check_names``), or a value TrainConfig refuses (the
            message names the field and its type, range or choices).
    """
    check_names(values)
    return base.replace(**values)


def parse_value(raw: str) -> Any:
    """A value as typed: JSON where it parses (numbers, true/false, null, lists), else the
    plain string, so ``weights=none`` and ``categories=["dog","cake"]`` both work."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=0.002", "num_epochs=3"]`` -> ``{"lr": 0.002, "num_epochs": 3}``.

    Values go through ``parse_value``; later items win. Types and ranges are checked when
    the values reach ``apply_overrides``.

    Raises:
        ValueError: an item without ``=``, or a name that is not a TrainConfig field
            (``check_names``).
    """
    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, for example lr=0.002")
        values[name.strip().replace("-", "_")] = parse_value(raw)
    check_names(values)
    return values


def env_overrides() -> dict[str, Any]:
    """The TrainConfig overrides in ``$SEGLIB_SET`` (a JSON object), or ``{}`` when unset.

    Raises:
        ValueError: the variable is not a JSON object, or names no field (``check_names``).
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
    check_names(values)
    return values


def slider_fields() -> dict[str, dict[str, Any]]:
    """Field name -> slider range, for every TrainConfig field a notebook slider edits."""
    return {
        f.name: f.metadata["slider"]
        for f in dataclasses.fields(TrainConfig)
        if "slider" in f.metadata
    }
