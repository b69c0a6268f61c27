"""match_image: true positives, false positives, misses and crowd-ignored detections, as
COCOeval counts them, on hand-made images at 128 px and at 480 x 640."""

from __future__ import annotations

import copy

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.cocoeval import COCOeval

from seglib.evaluation.coco_ap import load_detections
from seglib.evaluation.coco_results import from_coco_ids, load_ground_truth, quiet
from seglib.evaluation.matching import match_image

#: COCO's category ids, not 1..k, so nothing may assume contiguous labels.
PERSON, CAR, DOG, CAKE = 1, 3, 18, 61
CATEGORIES = [
    {"id": PERSON, "name": "person"},
    {"id": CAR, "name": "car"},
    {"id": DOG, "name": "dog"},
    {"id": CAKE, "name": "cake"},
]
#: The model's labels: positions in CATEGORIES.
LABEL = {c["id"]: k for k, c in enumerate(CATEGORIES, start=1)}
SIZES = pytest.mark.parametrize("size", [(128, 128), (480, 640)], ids=["128px", "480x640"])
IMAGE = 7


def _mask(size, frac):
    """uint8 [H,W]: 1 inside the box given as fractions (x0, y0, x1, y1) of the image."""
    h, w = size
    x0, y0, x1, y1 = frac
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)] = 1
    return mask


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _ground_truth(size, objects, image_ids=(IMAGE,)):
    """A COCO dict of ``image_ids`` (all ``size``); objects: (image_id, category, mask, crowd)."""
    h, w = size
    anns = []
    for ann_id, (image_id, cat, mask, crowd) in enumerate(objects, start=101):
        rle = _rle(mask)
        anns.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": cat,
                "segmentation": rle,
                "area": float(mask.sum()),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": int(crowd),
            }
        )
    images = [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i in image_ids]
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}


def _listed(gt, results):
    """Results written with COCO's category ids (a file's) as in-memory results (labels)."""
    return from_coco_ids(results, gt)


def _pred(cat, mask, score, image_id=IMAGE):
    """A result with COCO's category id ``cat``, as a results file holds it."""
    rle = _rle(mask)
    bbox = mask_utils.toBbox(rle).tolist()
    return {
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "score": score,
        "segmentation": rle,
    }


@SIZES
def test_perfect_predictions_are_all_true_positives(size):
    person, car = _mask(size, (0.1, 0.1, 0.4, 0.6)), _mask(size, (0.5, 0.5, 0.9, 0.8))
    gt = _ground_truth(size, [(IMAGE, PERSON, person, False), (IMAGE, CAR, car, False)])
    results = _listed(gt, [_pred(PERSON, person, 0.6), _pred(CAR, car, 0.9)])
    match = match_image(gt, results, IMAGE)
    assert match["counts"] == {"tp": 2, "fp": 0, "missed": 0}
    assert match["ground_truth"]["matched"].tolist() == [True, True]
    pred = match["prediction"]
    assert pred["labels"].tolist() == [LABEL[CAR], LABEL[PERSON]]  # highest score first
    assert pred["masks"].shape == (2, *size) and pred["masks"].dtype == np.uint8
    assert (pred["masks"][0] == car).all()
    assert pred["boxes"].dtype == np.float32 and (pred["boxes"][:, 2:] > pred["boxes"][:, :2]).all()
    assert match["ground_truth"]["masks"].shape == (2, *size)


@SIZES
def test_a_wrong_class_is_a_false_positive_and_its_object_a_miss(size):
    person, car = _mask(size, (0.1, 0.1, 0.4, 0.6)), _mask(size, (0.5, 0.5, 0.9, 0.8))
    gt = _ground_truth(size, [(IMAGE, PERSON, person, False), (IMAGE, CAR, car, False)])
    elsewhere = _pred(PERSON, person, 0.99, image_id=8)
    gt["images"].append({**gt["images"][0], "id": 8})
    results = [_pred(DOG, person, 0.95), _pred(CAR, car, 0.5), elsewhere]
    match = match_image(gt, _listed(gt, results), IMAGE)
    assert match["prediction"]["outcome"] == ["fp", "tp"]
    assert match["prediction"]["labels"].tolist() == [LABEL[DOG], LABEL[CAR]]
    assert match["counts"] == {"tp": 1, "fp": 1, "missed": 1}
    assert match["ground_truth"]["matched"].tolist() == [False, True]


@SIZES
def test_a_crowd_excuses_detections_of_its_own_class_only(size):
    crowd = _mask(size, (0.0, 0.0, 0.5, 1.0))
    person = _mask(size, (0.6, 0.2, 0.9, 0.7))
    gt = _ground_truth(size, [(IMAGE, PERSON, crowd, True), (IMAGE, PERSON, person, False)])
    inside = _mask(size, (0.1, 0.2, 0.3, 0.5))
    results = [_pred(CAR, inside, 0.9), _pred(PERSON, inside, 0.8), _pred(PERSON, person, 0.7)]
    match = match_image(gt, _listed(gt, results), IMAGE)
    # COCOeval matches per category: a car inside a person crowd is a false positive.
    assert match["prediction"]["outcome"] == ["fp", "ignored", "tp"]
    assert match["counts"] == {"tp": 1, "fp": 1, "missed": 0}
    assert match["ground_truth"]["labels"].tolist() == [LABEL[PERSON]]  # the crowd isn't drawn
    assert match["ground_truth"]["matched"].tolist() == [True]


@SIZES
def test_a_duplicate_is_a_false_positive(size):
    person, car = _mask(size, (0.1, 0.1, 0.4, 0.6)), _mask(size, (0.5, 0.5, 0.9, 0.8))
    gt = _ground_truth(size, [(IMAGE, PERSON, person, False), (IMAGE, CAR, car, False)])
    shifted = np.roll(person, max(1, size[1] // 40), axis=1)  # IoU about 0.8
    results = [_pred(PERSON, shifted, 0.6), _pred(PERSON, person, 0.9)]
    match = match_image(gt, _listed(gt, results), IMAGE)
    assert match["prediction"]["outcome"] == ["tp", "fp"]
    assert match["prediction"]["scores"].tolist() == pytest.approx([0.9, 0.6])
    assert match["counts"] == {"tp": 1, "fp": 1, "missed": 1}
    assert match["ground_truth"]["matched"].tolist() == [True, False]


def _random_scene(size, seed=0, images=(1, 2, 3)):
    """Several images of random boxes of four classes with crowds, and noisy predictions:
    shifted copies (half of them IoU >= ~0.8, the others anywhere from ~0.2 to 1), some relabelled, duplicated, or inside a
    crowd, and stray boxes."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in CATEGORIES]

    def box():
        x0, y0 = rng.uniform(0, 0.7, 2)
        return (x0, y0, x0 + rng.uniform(0.1, 0.3), y0 + rng.uniform(0.1, 0.3))

    objects, preds = [], []
    for image_id in images:
        for k in range(9):
            frac, cat = box(), int(rng.choice(cats))
            objects.append((image_id, cat, _mask(size, frac), k < 2))
            for _ in range(int(rng.integers(0, 3))):
                jitter = 0.06 if rng.random() < 0.5 else 0.4
                dx, dy = rng.uniform(-jitter, jitter, 2) * (frac[2] - frac[0], frac[3] - frac[1])
                moved = (frac[0] + dx, frac[1] + dy, frac[2] + dx, frac[3] + dy)
                moved = tuple(min(max(v, 0.0), 1.0) for v in moved)
                label = cat if rng.random() < 0.75 else int(rng.choice(cats))
                preds.append((image_id, label, _mask(size, moved)))
        for _ in range(3):
            preds.append((image_id, int(rng.choice(cats)), _mask(size, box())))
    scores = rng.permutation(len(preds)) / len(preds) + 0.01
    results = [
        _pred(cat, mask, float(s), image_id)
        for (image_id, cat, mask), s in zip(preds, scores, strict=True)
        if mask.any()
    ]
    return _ground_truth(size, objects, image_ids=images), results


def _cocoeval_reference(gt, results, iou_thresh):
    """A standard COCOeval over every image (default parameters): per result index its
    outcome, per annotation id whether it was matched, at ``iou_thresh``."""
    coco = load_ground_truth(copy.deepcopy(gt))
    with quiet():
        evaluator = COCOeval(coco, load_detections(coco, results, "segm"), "segm")
        evaluator.evaluate()
    t = int(np.flatnonzero(np.isclose(evaluator.params.iouThrs, iou_thresh))[0])
    outcome, matched = {}, {}
    for e in evaluator.evalImgs:
        if e is None or e["aRng"] != evaluator.params.areaRng[0] or e["maxDet"] != 100:
            continue
        for d, dt_id in enumerate(e["dtIds"]):
            ignored, hit = e["dtIgnore"][t, d], e["dtMatches"][t, d] > 0
            outcome[dt_id - 1] = "ignored" if ignored else "tp" if hit else "fp"
        for g, gt_id in enumerate(e["gtIds"]):
            if not e["gtIgnore"][g]:
                matched[gt_id] = bool(e["gtMatches"][t, g] > 0)
    return outcome, matched


@SIZES
@pytest.mark.parametrize("iou_thresh", [0.5, 0.75])
def test_matches_equal_cocoevals_on_random_multi_class_images(size, iou_thresh):
    gt, results = _random_scene(size)
    untouched = copy.deepcopy(gt)
    outcome, matched = _cocoeval_reference(gt, results, iou_thresh)
    listed = _listed(gt, results)
    seen = {"tp": 0, "fp": 0, "ignored": 0, "missed": 0}
    for image in gt["images"]:
        image_id = image["id"]
        match = match_image(gt, listed, image_id, iou_thresh=iou_thresh)
        mine = sorted(
            (i for i, r in enumerate(results) if r["image_id"] == image_id),
            key=lambda i: -results[i]["score"],
        )
        assert match["prediction"]["outcome"] == [outcome[i] for i in mine]
        assert match["prediction"]["scores"].tolist() == pytest.approx(
            [results[i]["score"] for i in mine]
        )
        plain = [a for a in gt["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        assert match["ground_truth"]["matched"].tolist() == [matched[a["id"]] for a in plain]
        assert match["counts"]["missed"] == sum(not matched[a["id"]] for a in plain)
        for key in ("tp", "fp", "ignored"):
            seen[key] += match["prediction"]["outcome"].count(key)
        seen["missed"] += match["counts"]["missed"]
    assert min(seen.values()) > 0, seen  # the scene exercises every outcome
    assert gt == untouched  # COCOeval ran on copies


def test_a_crowd_of_a_synthetic_split_ignores_a_detection_of_its_class(synthetic_subset):
    from seglib.data.dataset import open_split

    coco = open_split(synthetic_subset, "train").coco  # the fixture's crowd regions are here
    crowd = next(a for a in coco.loadAnns(coco.getAnnIds()) if a["iscrowd"])
    as_pred = _pred(crowd["category_id"], coco.annToMask(crowd), 0.9, crowd["image_id"])
    other = next(c for c in coco.getCatIds() if c != crowd["category_id"])
    results = _listed(coco, [as_pred, {**as_pred, "category_id": other}])
    match = match_image(coco, results, crowd["image_id"])
    assert sorted(match["prediction"]["outcome"]) == ["fp", "ignored"]
    assert match["counts"]["fp"] == 1
    assert not any(a.get("ignore") for a in coco.loadAnns(coco.getAnnIds()))  # left unchanged


def test_an_unknown_image_is_named():
    gt = _ground_truth((128, 128), [])
    with pytest.raises(KeyError, match="987654"):
        match_image(gt, [], 987654)
