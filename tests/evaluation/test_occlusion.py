"""The occlusion measure and AP per occlusion bucket, on hand-made scenes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from seglib.evaluation import occlusion

# Ground truth carries COCO's ids; detections (in-memory results) the labels: car 1, dog 2,
# person 3, the categories' positions.
CATEGORIES = [
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 1, "name": "person", "supercategory": "person"},
]
CAR_ID, DOG_ID, PERSON_ID = 3, 18, 1
SIZE = 100


def _rle(x0: int, y0: int, x1: int, y1: int) -> dict:
    """Compressed RLE of the rectangle of pixels [x0, x1) x [y0, y1) in a SIZE x SIZE image."""
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _ann(ann_id: int, image_id: int, cat: int, rect: tuple[int, int, int, int], **kw) -> dict:
    x0, y0, x1, y1 = rect
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": _rle(*rect),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": (x1 - x0) * (y1 - y0),
        "iscrowd": 0,
        **kw,
    }


def _gt(annotations: list[dict], n_images: int) -> dict:
    images = [
        {"id": i, "width": SIZE, "height": SIZE, "file_name": f"{i}.jpg"}
        for i in range(1, n_images + 1)
    ]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


CAR = (10, 10, 50, 50)  # image 1
DOG = (20, 20, 30, 30)  # image 1, wholly inside the car's box
PERSON = (60, 60, 80, 90)  # image 2, alone


@pytest.fixture
def scene() -> dict:
    return _gt(
        [_ann(1, 1, CAR_ID, CAR), _ann(2, 1, DOG_ID, DOG), _ann(3, 2, PERSON_ID, PERSON)],
        n_images=2,
    )


def test_containment_is_heavy_where_box_iou_is_tiny(scene):
    levels = occlusion.occlusion_levels(scene)
    # The dog lies wholly in the car's box (box IoU 100 / 1600 = 0.06); 100 of the car's
    # 1600 pixels lie in the dog's box.
    assert levels == pytest.approx({1: 100 / 1600, 2: 1.0, 3: 0.0})
    assert occlusion.occlusion_buckets(scene) == {1: "partial", 2: "heavy", 3: "none"}


def test_crowd_regions_occlude_but_are_not_measured():
    crowd = _ann(9, 1, PERSON_ID, (10, 0, 30, 20), iscrowd=1)
    gt = _gt([_ann(1, 1, PERSON_ID, (0, 0, 20, 20)), crowd], n_images=1)
    # Columns 10-19 of the person's 20 lie in the crowd's box.
    assert occlusion.occlusion_levels(gt) == pytest.approx({1: 0.5})


def test_box_stands_in_for_a_missing_mask_and_pixel_centres_decide():
    no_mask = {**_ann(1, 1, CAR_ID, (0, 0, 10, 10)), "segmentation": []}
    # The other box ends at x = 10.4: pixel column 10 (centre 10.5) is outside it.
    other = {**_ann(2, 1, DOG_ID, (5, 0, 15, 10)), "bbox": [4.6, 0.0, 5.8, 10.0]}
    levels = occlusion.occlusion_levels(_gt([no_mask, other], n_images=1))
    assert levels[1] == pytest.approx(5.4 * 10 / 100)  # box over box, continuous
    assert levels[2] == pytest.approx(5 / 10)  # columns 5-9 of 5-14 lie in [0, 10)


def test_bucket_edges():
    assert [occlusion.bucket_of(v) for v in (0.0, 1e-6, 0.299, 0.3, 1.0)] == [
        "none",
        "partial",
        "partial",
        "heavy",
        "heavy",
    ]
    assert occlusion.bucket_of(0.2, heavy_from=0.1) == "heavy"


def test_counts_per_bucket_and_class(scene, tmp_path):
    counts = occlusion.bucket_counts(scene)
    assert {b: counts[b] for b in occlusion.BUCKETS} == {"none": 1, "partial": 1, "heavy": 1}
    assert counts["per_class"]["dog"] == {"none": 0, "partial": 0, "heavy": 1}
    import json

    for split in ("val", "test"):
        (tmp_path / f"{split}.json").write_text(json.dumps(scene))
    per_split = occlusion.split_counts(tmp_path, splits=("val", "test"))
    assert per_split["test"]["heavy"] == 1
    assert "heavy" in occlusion.format_bucket_counts(per_split)
    assert occlusion.most_occluded_images(scene) == [1]
    assert occlusion.most_occluded_images(scene, bucket="none") == [2]
    assert occlusion.most_occluded_images(scene, bucket=None) == [1, 2]
    with pytest.raises(ValueError, match="bucket"):
        occlusion.most_occluded_images(scene, bucket="light")
    with pytest.raises(FileNotFoundError, match="train.json"):
        occlusion.split_counts(tmp_path)


def _det(image_id: int, cat: int, rect: tuple[int, int, int, int], score: float) -> dict:
    x0, y0, x1, y1 = rect
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "score": score,
        "segmentation": _rle(*rect),
    }


def test_ap_per_bucket_follows_cocos_area_range_rule(scene):
    results = [
        _det(1, 2, DOG, 0.9),  # finds the heavy dog exactly
        _det(1, 2, (25, 20, 35, 30), 0.95),  # a duplicate beside it (IoU 1/3): heavy FP
        _det(2, 2, (0, 0, 10, 10), 0.99),  # a dog on empty background: a "none" FP
        _det(2, 3, PERSON, 0.8),  # finds the lone person
    ]  # nothing finds the car
    table = occlusion.occlusion_ap(scene, results)
    for iou_type in ("bbox", "segm"):  # masks are the boxes here, so both agree
        ap = {row: table[row][iou_type]["AP"] for row in occlusion.ROWS}
        # heavy: the duplicate outranks the hit (precision 1/2); the background dog is
        # outside the bucket and ignored. Counting it would give 1/3, ignoring every
        # unmatched detection 1.
        assert ap["heavy"] == pytest.approx(0.5)
        # none: only the person has ground truth here; the background dog, a class with no
        # ground truth in the bucket, cannot lower it.
        assert ap["none"] == pytest.approx(1.0)
        assert ap["partial"] == pytest.approx(0.0)
        # all: car 0, dog 1/3 (two false positives above the hit), person 1.
        assert ap["all"] == pytest.approx((0 + 1 / 3 + 1) / 3)
    assert {row: table[row]["instances"] for row in occlusion.ROWS} == {
        "all": 3,
        "none": 1,
        "partial": 1,
        "heavy": 1,
    }
    assert (table["heavy"]["recall"], table["partial"]["recall"], table["none"]["recall"]) == (
        1.0,
        0.0,
        1.0,
    )
    # best-match IoU per instance (as metrics.best_match_iou), under the project's name
    assert table["partial"]["best_match_iou"] == 0.0
    assert table["heavy"]["best_match_iou"] == pytest.approx(1.0)
    assert all("mean_iou" not in table[row] for row in occlusion.ROWS)
    text = occlusion.format_occlusion_ap(table)
    assert "heavy" in text and "best IoU" in text.splitlines()[0]


def test_ap_per_bucket_of_an_empty_bucket_is_undefined():
    gt = _gt([_ann(1, 1, PERSON_ID, PERSON)], n_images=1)
    table = occlusion.occlusion_ap(gt, [_det(1, 3, PERSON, 0.9)])
    assert table["none"]["segm"]["AP"] == pytest.approx(1.0)
    assert table["heavy"]["segm"]["AP"] == -1.0 and table["heavy"]["recall"] == -1.0
    assert occlusion.occlusion_ap(gt, [])["all"]["segm"]["AP"] == 0.0


def test_the_measure_matches_how_the_synthetic_data_is_built(synthetic_coco):
    """Every pair and group scene holds overlapping instances, so all buckets are populated."""
    counts = occlusion.bucket_counts(synthetic_coco / "annotations" / "instances_val2017.json")
    assert all(counts[b] > 0 for b in occlusion.BUCKETS), counts
