"""category_labels: COCO's category ids to labels 1..k, and the old numbering refused."""

from __future__ import annotations

import pytest

from seglib.core.categories import CategoryError, category_labels

SPLIT = [
    {"id": 61, "name": "cake", "supercategory": "food"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
]


def test_labels_are_positions_in_the_list_not_the_ids_order():
    assert category_labels(SPLIT) == {61: 1, 3: 2, 18: 3, 1: 4}
    assert category_labels(SPLIT[::-1]) == {1: 1, 18: 2, 3: 3, 61: 4}
    assert category_labels([]) == {}


def test_coco_files_give_labels_in_their_own_order():
    coco = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}, {"id": 90, "name": "x"}]
    assert category_labels(coco) == {1: 1, 2: 2, 90: 3}


def test_an_older_seglibs_numbering_is_refused_with_how_to_rebuild():
    old = [dict(c, id=i, coco_id=c["id"]) for i, c in enumerate(SPLIT, start=1)]
    with pytest.raises(CategoryError) as raised:
        category_labels(old, source="data/subset/seed/val.json")
    message = str(raised.value)
    assert message.startswith("data/subset/seed/val.json was written by an older seglib")
    assert "numbered 1..k (cake 1, car 2, dog 3, person 4)" in message
    assert "data/subset/<profile>" in message and "python -m seglib subset" in message
    # a coco_id that equals the id numbers nothing differently
    assert category_labels([{"id": 1, "name": "person", "coco_id": 1}]) == {1: 1}


@pytest.mark.parametrize(
    ("categories", "match"),
    [
        ([{"id": "61", "name": "cake"}], "integer 'id'"),
        ([{"id": True, "name": "cake"}], "integer 'id'"),
        ([{"name": "cake"}], "integer 'id'"),
        (["cake"], "integer 'id'"),
        ([SPLIT[0], dict(SPLIT[1], id=61)], "category id 61 appears twice"),
    ],
)
def test_bad_categories_are_refused_naming_the_source(categories, match):
    with pytest.raises(CategoryError, match=f"^train.json: .*{match}"):
        category_labels(categories, source="train.json")
    assert issubclass(CategoryError, ValueError)
