"""Field rules for typed dataclasses: the declared types, then a table of per-field rules.

``TrainConfig.__post_init__`` is the user: it holds the table (one rule per field, in field
order) and its cross-field checks; this module knows no field. Every message names the
field and the value it got, for example ``lr must be in (0, 1], got 0.0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def is_type(value: Any, kind: str) -> bool:
    """Whether ``value`` is of ``kind``: ``int``, ``float`` (an int will do), ``bool``, ``str``
    or ``tuple[X, ...]`` (a list or tuple of X, never a bare string). ``True`` is no int."""
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple["):
        item = kind[len("tuple[") :].split(",")[0]
        return isinstance(value, (list, tuple)) and all(is_type(v, item) for v in value)
    raise TypeError(f"no check for type {kind!r}")


def _kinds(f: dataclasses.Field) -> list[str]:
    """The alternatives of a field's annotation, read as text: ``"int | None"`` -> two."""
    return [k.strip() for k in str(f.type).split("|")]


def check_types(obj: Any) -> None:
    """Raise ValueError naming every field whose value has the wrong type (JSON, CLI, widgets).

    An int given for a float field becomes a float, so configs compare and save alike.
    """
    errors = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kinds = _kinds(f)
        if value is None and "None" in kinds:
            continue
        if not any(is_type(value, k) for k in kinds if k != "None"):
            errors.append(f"{f.name} must be {f.type}, got {value!r}")
        elif "float" in kinds and isinstance(value, int):
            object.__setattr__(obj, f.name, float(value))
    if errors:
        raise ValueError(f"invalid {type(obj).__name__}: " + "; ".join(errors))


@dataclass(frozen=True)
class Range:
    """A number within bounds: ``Range(lo=1)`` reads ">= 1", ``Range(0, 1, lo_open=True)``
    "in (0, 1]"; ``unit`` follows a one-sided bound (">= 32 px")."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""

    def holds(self, value: float) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{self.lo}, {self.hi}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo}{self.unit}"
        return f"{'<' if self.hi_open else '<='} {self.hi}{self.unit}"

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class OneOf:
    """One of ``choices``, or, where given, anything ``also`` accepts (``alternative`` says
    what, in words: "a path ending in .pth/.pt")."""

    choices: tuple[str, ...]
    alternative: str = ""
    also: Callable[[Any], bool] | None = None

    def holds(self, value: Any) -> bool:
        return value in self.choices or (self.also is not None and self.also(value))

    def describe(self) -> str:
        return f"one of {self.choices}" + (f" or {self.alternative}" if self.alternative else "")

    def show(self, value: Any) -> str:
        return repr(value)


@dataclass(frozen=True)
class Satisfies:
    """Anything ``test`` accepts; ``text`` says what that is."""

    test: Callable[[Any], bool]
    text: str

    def holds(self, value: Any) -> bool:
        return self.test(value)

    def describe(self) -> str:
        return self.text

    def show(self, value: Any) -> str:
        return str(value)


Rule = Range | OneOf | Satisfies

#: Rules many fields share.
COUNT = Range(lo=1)
NON_NEGATIVE = Range(lo=0)
POSITIVE = Range(lo=0, lo_open=True)
FRACTION = Range(0, 1)
POSITIVE_FRACTION = Range(0, 1, lo_open=True)  # (0, 1]
INCREASING_FRACTIONS = Satisfies(
    lambda v: all(0.0 < x < 1.0 for x in v) and list(v) == sorted(v),
    "increasing fractions of the run in (0, 1)",
)


def problems(obj: Any, table: Mapping[str, Rule]) -> list[str]:
    """One message per field of ``obj`` that breaks its rule in ``table``, in table order.

    Run after ``check_types``. A field typed ``X | None`` may be None whatever its rule,
    and its message says so: ``max_iters must be None or >= 1, got 0``.
    """
    optional = {f.name: "None" in _kinds(f) for f in dataclasses.fields(obj)}
    found = []
    for name, rule in table.items():
        value = getattr(obj, name)
        if value is None or rule.holds(value):
            continue
        wanted = ("None or " if optional[name] else "") + rule.describe()
        found.append(f"{name} must be {wanted}, got {rule.show(value)}")
    return found
