"""True positives, false positives, misses and crowd-ignored detections on one image."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from seglib.matching import match_image


def _result(ann, coco, score=0.9, category_id=None):
    rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
    return {
        "image_id": ann["image_id"],
        "category_id": category_id or ann["category_id"],
        "bbox": ann["bbox"],
        "score": score,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
    }


@pytest.fixture(scope="module")
def split(synthetic_subset):
    from seglib.dataset import open_split

    return open_split(synthetic_subset, "val")


def _image_with(coco, n_plain=2, crowd=False):
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        plain = [a for a in anns if not a["iscrowd"]]
        crowds = [a for a in anns if a["iscrowd"]]
        if len(plain) >= n_plain and (bool(crowds) or not crowd):
            return image_id, plain, crowds
    pytest.skip("the synthetic split has no such image")


def test_perfect_predictions_are_all_true_positives(split):
    coco = split.coco
    image_id, plain, _ = _image_with(coco)
    match = match_image(coco, [_result(a, coco) for a in plain], image_id)
    assert match["counts"] == {"tp": len(plain), "fp": 0, "missed": 0}
    assert match["ground_truth"]["matched"].all()
    pred = match["prediction"]
    h, w = coco.imgs[image_id]["height"], coco.imgs[image_id]["width"]
    assert pred["masks"].shape == (len(plain), h, w) and pred["masks"].dtype == np.uint8
    assert pred["boxes"].dtype == np.float32 and (pred["boxes"][:, 2:] > pred["boxes"][:, :2]).all()


def test_a_wrong_class_is_a_false_positive_and_its_object_a_miss(split):
    coco = split.coco
    image_id, plain, _ = _image_with(coco)
    k = len(coco.getCatIds())
    wrong = _result(plain[0], coco, score=0.95, category_id=plain[0]["category_id"] % k + 1)
    others = [_result(a, coco, score=0.5) for a in plain[1:]]
    elsewhere = [
        _result(a, coco) for a in coco.loadAnns(coco.getAnnIds()) if a["image_id"] != image_id
    ][:3]
    match = match_image(coco, [wrong, *others, *elsewhere], image_id)
    assert match["prediction"]["outcome"] == ["fp"] + ["tp"] * len(others)  # highest score first
    assert match["counts"] == {"tp": len(others), "fp": 1, "missed": 1}
    assert not match["ground_truth"]["matched"][0]


def test_a_detection_inside_a_crowd_region_is_ignored_not_a_false_positive(synthetic_subset):
    from seglib.dataset import open_split

    coco = open_split(synthetic_subset, "train").coco  # the fixture's crowd regions are here
    image_id, _, crowds = _image_with(coco, n_plain=0, crowd=True)
    crowd_as_pred = {**_result(crowds[0], coco), "category_id": crowds[0]["category_id"]}
    match = match_image(coco, [crowd_as_pred], image_id)
    assert match["prediction"]["outcome"] == ["ignored"] and match["counts"]["fp"] == 0


def test_an_unknown_image_is_named(split):
    with pytest.raises(KeyError, match="987654"):
        match_image(split.coco, [], 987654)
