"""Settings and the ground every stage stands on.

The one typed ``TrainConfig`` and its profiles, changing a setting from outside the code,
where every file lives (``Paths``, run folders included), atomic writes, the COCO category
ids, the device and seeds, and torchrun helpers.

Imports: nothing from seglib outside ``seglib.core``.
"""

__all__ = [
    "atomic",
    "categories",
    "config",
    "distributed",
    "overrides",
    "paths",
    "profiles",
    "rules",
    "runtime",
]
