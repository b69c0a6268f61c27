"""Category ids and labels: COCO's ids in every file, labels 1..k only at the model.

Every JSON seglib writes (subset and synthetic splits, results, metrics) numbers categories
with COCO's ids (person 1, car 3, dog 18, cake 61: ``seglib.core.config.COCO_IDS``), as COCO's own
files do, so pycocotools and any COCO tool read them as they are. The model needs contiguous
labels instead (0 is background): label ``i`` is the ``i``-th category of a split's
``categories`` list, which ``build_subset`` writes in ``TrainConfig.categories`` order.
``category_labels`` is the one place that mapping is made; the dataset, the results files'
reader and writer, evaluation and checkpoints' class maps all go through it.

Subsets written by older seglib versions numbered their categories 1..k and kept COCO's id in
a ``coco_id`` field; ``category_labels`` refuses them, saying how to rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["CategoryError", "category_labels"]

#: How to replace a split file in the old numbering; the subset is rebuilt from COCO's files.
REBUILD = (
    "rebuild the subset: delete its folder (data/subset/<profile>) and run "
    "`python -m seglib subset --coco-root DIR --out DIR` (or notebook 01) again"
)


class CategoryError(ValueError):
    """Categories that give no label map: the message names their source and the fix."""


def category_labels(categories: Sequence[Mapping], *, source: str = "categories") -> dict[int, int]:
    """COCO category id -> label: 1 + the category's position in ``categories``.

    Args:
        categories: a split's category dicts (``id`` = COCO's id, ``name``), in label order.
        source: what ``categories`` came from (a file name), for the errors.

    Returns:
        ``{category id: label}`` with labels 1..k (0 is the model's background).

    Raises:
        CategoryError: a category without an integer ``id``, an id twice, or the old numbering
            (a ``coco_id`` field other than ``id``: an older seglib's split, to be rebuilt).
    """
    labels: dict[int, int] = {}
    for label, c in enumerate(categories, start=1):
        cat_id = c.get("id") if isinstance(c, Mapping) else None
        if isinstance(cat_id, bool) or not isinstance(cat_id, int):
            raise CategoryError(f"{source}: category {c!r} needs an integer 'id' (COCO's id)")
        if c.get("coco_id", cat_id) != cat_id:
            old = ", ".join(f"{d.get('name')} {d.get('id')}" for d in categories)
            raise CategoryError(
                f"{source} was written by an older seglib with categories numbered 1..k ({old}) "
                f"and COCO's ids in 'coco_id'; seglib now keeps COCO's ids in every file: {REBUILD}"
            )
        if cat_id in labels:
            raise CategoryError(f"{source}: category id {cat_id} appears twice")
        labels[cat_id] = label
    return labels
