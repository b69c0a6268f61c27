"""Metrics on hand-built ground truth small enough to check by hand.

The ground truth carries COCO's category ids (cake 61, car 3, dog 18), as every split file
does; in-memory results (``det``, ``perfect``) carry labels: cake 1, car 2, dog 3."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seglib.evaluation import coco_ap, coco_results, iou_measures, shown_results

H, W = 64, 64
CAKE, CAR, DOG = 61, 3, 18
CATEGORIES = [
    {"id": CAKE, "name": "cake", "supercategory": "food"},
    {"id": CAR, "name": "car", "supercategory": "vehicle"},
    {"id": DOG, "name": "dog", "supercategory": "animal"},
]


def labels_of(gt: dict) -> dict[int, int]:
    """Category id -> label: its position in the ground truth's list (written out here, so the
    tests check ``seglib.core.categories`` rather than reuse it)."""
    return {c["id"]: i for i, c in enumerate(gt["categories"], start=1)}


def in_coco_ids(gt: dict, results: list[dict]) -> list[dict]:
    """In-memory results (labels) as a results file holds them: ``gt``'s category ids."""
    cat_of = {label: cat for cat, label in labels_of(gt).items()}
    return [dict(r, category_id=cat_of[int(r["category_id"])]) for r in results]


def square(x: int, y: int, s: int, h: int = H, w: int = W) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[y : y + s, x : x + s] = 1
    return mask


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask))
    return {"size": out["size"], "counts": out["counts"].decode()}


def ann(ann_id, image_id, category_id, mask, iscrowd=0):
    x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask))).tolist()
    seg = rle(mask)
    if iscrowd:  # crowd regions in COCO are uncompressed RLE
        seg = {"size": list(mask.shape), "counts": _uncompressed(mask)}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": seg,
        "area": float(mask.sum()),
        "bbox": [x, y, w, h],
        "iscrowd": iscrowd,
    }


def _uncompressed(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F")
    counts, value, run = [], 0, 0
    for px in flat:
        if px == value:
            run += 1
        else:
            counts.append(run)
            value, run = px, 1
    counts.append(run)
    return counts


def det(image_id, category_id, mask, score=1.0):
    r = rle(mask)
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": mask_utils.toBbox(r).tolist(),
        "score": score,
        "segmentation": r,
    }


@pytest.fixture
def gt() -> dict:
    """Image 1: cake + car; image 2 (48 px high): cake as a polygon + a dog crowd; image 3: empty."""
    cake2 = {
        "id": 3,
        "image_id": 2,
        "category_id": CAKE,
        "segmentation": [[10, 10, 40, 10, 40, 40, 10, 40]],
        "area": 900.0,
        "bbox": [10, 10, 30, 30],
        "iscrowd": 0,
    }
    return {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 1, "width": W, "height": H, "file_name": "1.jpg"},
            {"id": 2, "width": W, "height": 48, "file_name": "2.jpg"},
            {"id": 3, "width": W, "height": H, "file_name": "3.jpg"},
        ],
        "annotations": [
            ann(1, 1, CAKE, square(0, 0, 20)),
            ann(2, 1, CAR, square(30, 30, 20)),
            cake2,
            ann(4, 2, DOG, square(44, 0, 20, h=48), iscrowd=1),
        ],
        "categories": copy.deepcopy(CATEGORIES),
    }


def perfect(gt: dict) -> list[dict]:
    """The ground truth's non-crowd instances as in-memory results (labels), score 1."""
    coco = coco_results.load_ground_truth(gt)
    label = labels_of(gt)
    return [
        {
            "image_id": a["image_id"],
            "category_id": label[a["category_id"]],
            "bbox": a["bbox"],
            "score": 1.0,
            "segmentation": coco.annToRLE(a),
        }
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]


def test_perfect_predictions_give_ap_and_iou_one(gt):
    m = coco_ap.evaluate_results(gt, perfect(gt))
    for iou_type in ("bbox", "segm"):
        assert m[iou_type]["AP"] == pytest.approx(1.0)
        assert m[iou_type]["AP50"] == pytest.approx(1.0)
        assert m[iou_type]["per_class"]["cake"]["AP"] == pytest.approx(1.0)
        assert m[iou_type]["per_class"]["dog"]["AP"] == -1.0  # crowd only: undefined
    assert m["best_match_iou"] == pytest.approx(1.0)
    assert m["pixel_iou"]["cake"] == pytest.approx(1.0)
    assert m["pixel_iou"]["dog"] == -1.0
    assert (m["num_images"], m["num_predictions"]) == (3, 3)
    json.dumps(m)


def test_inputs_are_not_modified(gt):
    before, results = copy.deepcopy(gt), perfect(gt)
    results_before = copy.deepcopy(results)
    coco = coco_results.load_ground_truth(gt)
    coco_ap.evaluate_results(coco, results)
    assert gt == before and results == results_before
    assert (
        coco.dataset["annotations"][2]["segmentation"] == before["annotations"][2]["segmentation"]
    )


def test_disjoint_predictions_give_zero(gt):
    results = [
        det(3, 1, square(0, 0, 20)),
        det(1, 2, square(0, 40, 10)),
        det(2, 1, square(50, 0, 5, h=48)),
    ]
    m = coco_ap.evaluate_results(gt, results)
    assert m["bbox"]["AP"] == 0.0 and m["segm"]["AP"] == 0.0
    assert m["best_match_iou"] == 0.0
    assert m["pixel_iou"]["cake"] == 0.0 and m["pixel_iou"]["car"] == 0.0


def _direct_stats(gt: dict, results: list[dict], iou_type: str) -> np.ndarray:
    """COCOeval's stats straight from pycocotools, for in-memory ``results`` (labels)."""
    results = in_coco_ids(gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        drop = "segmentation" if iou_type == "bbox" else "bbox"
        evaluator = COCOeval(
            coco,
            coco.loadRes(
                [{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)]
            ),
            iou_type,
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_agrees_with_pycocotools(gt):
    results = [
        det(1, 1, square(2, 0, 20), 0.9),
        det(1, 1, square(0, 5, 18), 0.4),
        det(1, 2, square(32, 28, 20), 0.8),
        det(2, 1, square(12, 12, 26, h=48), 0.7),
        det(2, 3, square(46, 2, 10, h=48), 0.95),
        det(3, 2, square(5, 5, 30), 0.6),
    ]
    m = coco_ap.evaluate_results(gt, results)
    for iou_type in ("bbox", "segm"):
        ours = [m[iou_type][k] for k in coco_ap.SUMMARY_KEYS]
        np.testing.assert_allclose(ours, _direct_stats(gt, results, iou_type)[:9])
    assert 0 < m["segm"]["AP"] < 1


def test_empty_predictions_give_zero_ap(gt):
    m = coco_ap.evaluate_results(gt, [])
    assert m["bbox"]["AP"] == 0.0 and m["segm"]["AP"] == 0.0
    assert m["best_match_iou"] == 0.0 and m["num_predictions"] == 0
    assert m["pixel_iou"]["cake"] == 0.0


def test_empty_ground_truth_is_undefined_not_an_error(gt):
    gt["annotations"] = []
    m = coco_ap.evaluate_results(gt, [det(1, 1, square(0, 0, 20))])
    assert m["segm"]["AP"] == -1.0 and m["bbox"]["AP"] == -1.0
    assert m["best_match_iou"] == -1.0
    assert np.isnan(iou_measures.best_match_iou(gt, []))
    assert m["pixel_iou"] == {"cake": 0.0, "car": -1.0, "dog": -1.0}
    gt["images"] = []
    assert coco_ap.evaluate_results(gt, [])["num_images"] == 0


def test_crowd_only_ground_truth_ignores_detections_inside(gt):
    gt["annotations"] = [a for a in gt["annotations"] if a["iscrowd"]]
    inside = det(2, 3, square(46, 2, 10, h=48))
    m = coco_ap.evaluate_results(gt, [inside])
    assert m["segm"]["AP"] == -1.0 and m["best_match_iou"] == -1.0
    assert m["pixel_iou"]["dog"] == -1.0  # all predicted pixels lie in the ignored crowd
    matrix, _ = iou_measures.confusion_matrix(gt, [inside])
    assert matrix.sum() == 0


def test_image_id_as_numpy_or_tensor(gt):
    torch = pytest.importorskip("torch")
    plain = coco_ap.evaluate_results(gt, perfect(gt))
    results = perfect(gt)
    results[0]["image_id"] = np.int64(results[0]["image_id"])
    results[1]["image_id"] = torch.tensor(results[1]["image_id"])
    results[2]["category_id"] = torch.tensor(results[2]["category_id"])
    assert coco_ap.evaluate_results(gt, results) == plain


def test_unknown_label_raises_naming_the_labels(gt):
    results = perfect(gt)
    results[0]["category_id"] = 61  # a list holds labels; the COCO id is a file's
    with pytest.raises(ValueError, match=r"labels \[61\].*1 cake, 2 car, 3 dog"):
        coco_ap.evaluate_results(gt, results)


def test_unknown_image_raises_naming_it(gt):
    with pytest.raises(ValueError, match=r"image ids \[99\]"):
        coco_ap.evaluate_results(gt, [det(99, 1, square(0, 0, 10))])


def test_bad_mask_size_and_missing_keys_raise(gt):
    with pytest.raises(ValueError, match=r"mask size \[64, 64\].*\[48, 64\]"):
        iou_measures.best_match_iou(gt, [det(2, 1, square(0, 0, 10))])
    with pytest.raises(ValueError, match=r"result 0 lacks \['segmentation'\]"):
        iou_measures.best_match_iou(
            gt, [{"image_id": 1, "category_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}]
        )


def test_paths_are_accepted(gt, tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = perfect(gt)
    for r in results:  # annToRLE gives bytes counts for polygons; a JSON file holds str
        counts = r["segmentation"]["counts"]
        r["segmentation"] = {
            "size": r["segmentation"]["size"],
            "counts": counts.decode() if isinstance(counts, bytes) else counts,
        }
    (tmp_path / "res.json").write_text(json.dumps(in_coco_ids(gt, results)))
    assert coco_ap.evaluate_results(tmp_path / "gt.json", str(tmp_path / "res.json"))["segm"][
        "AP"
    ] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco_ap.evaluate_results(tmp_path / "missing.json", [])


# --- category ids: COCO's in files and ground truth, labels in lists ----------------------
def _json_results(gt: dict) -> list[dict]:
    """``perfect`` with plain-JSON segmentations (str counts), as a file would hold them."""
    out = []
    for r in perfect(gt):
        counts = r["segmentation"]["counts"]
        counts = counts.decode() if isinstance(counts, bytes) else counts
        out.append(dict(r, segmentation={"size": r["segmentation"]["size"], "counts": counts}))
    return out


def test_files_carry_coco_ids_and_score_as_the_list_does(gt, tmp_path):
    results = _json_results(gt)
    results[0]["score"] = 0.4
    results.append(det(3, 1, square(0, 0, 10), score=0.9))  # a cake where there is none
    results.append(det(1, 3, square(40, 0, 10), score=0.7))  # a dog where there is none
    exported = coco_results.to_coco_ids(results, CATEGORIES)
    assert [r["category_id"] for r in exported] == [61, 3, 61, 61, 18]
    assert [r["category_id"] for r in results] == [1, 2, 1, 1, 3]  # copies: the list is untouched
    (tmp_path / "res.json").write_text(json.dumps(exported))
    assert coco_results.read_results(tmp_path / "res.json", gt) == results
    from_file = coco_ap.evaluate_results(gt, tmp_path / "res.json")
    assert from_file == coco_ap.evaluate_results(gt, results)
    assert 0 < from_file["segm"]["AP"] < 1
    # the evaluation file names the categories by COCO's id too, in label order
    assert from_file["categories"] == [
        {"id": 61, "name": "cake"},
        {"id": 3, "name": "car"},
        {"id": 18, "name": "dog"},
    ]
    assert list(from_file["segm"]["per_class"]) == ["cake", "car", "dog"]
    assert list(from_file["pixel_iou"]) == ["cake", "car", "dog"]


def test_a_results_file_is_scored_as_it_is_whatever_the_category_order(gt, tmp_path):
    """COCO's own files list categories by id; the split lists them in label order. A file
    (COCO's ids) scores the same against both: nothing is renumbered."""
    results = _json_results(gt)
    results[0]["category_id"] = 2  # a cake called a car
    results.append(det(2, 3, square(10, 10, 12, h=48), score=0.6))
    (tmp_path / "res.json").write_text(json.dumps(coco_results.to_coco_ids(results, CATEGORIES)))
    by_id = dict(gt, categories=sorted(gt["categories"], key=lambda c: c["id"]))
    split = coco_ap.evaluate_results(gt, tmp_path / "res.json", with_curves=True)
    coco_order = coco_ap.evaluate_results(by_id, tmp_path / "res.json", with_curves=True)
    assert [c["id"] for c in coco_order.pop("categories")] == [3, 18, 61]
    assert [c["id"] for c in split.pop("categories")] == [61, 3, 18]
    assert split == coco_order and 0 < split["segm"]["AP"] < 1


def test_a_results_file_numbered_by_labels_is_refused(gt, tmp_path):
    # Labels written as they are: 1 and 2 are the COCO ids of none of the categories here.
    (tmp_path / "res.json").write_text(json.dumps(_json_results(gt)))
    with pytest.raises(
        ValueError, match=r"res\.json uses category ids \[1, 2\].*cake 61, car 3, dog 18"
    ):
        coco_ap.evaluate_results(gt, tmp_path / "res.json")
    with pytest.raises(ValueError, match=r"res\.json uses category ids \[1, 2\]"):
        coco_results.read_results(tmp_path / "res.json", gt)
    with pytest.raises(ValueError, match=r"labels \[7\].*1 cake, 2 car, 3 dog"):
        coco_results.to_coco_ids([det(1, 7, square(0, 0, 5))], CATEGORIES)


def test_ground_truth_in_an_older_seglibs_numbering_is_refused(gt, tmp_path):
    old = copy.deepcopy(gt)
    old["categories"] = [dict(c, id=i, coco_id=c["id"]) for i, c in enumerate(CATEGORIES, 1)]
    for a in old["annotations"]:
        a["category_id"] = labels_of(gt)[a["category_id"]]
    (tmp_path / "val.json").write_text(json.dumps(old))
    (tmp_path / "res.json").write_text(json.dumps(in_coco_ids(gt, _json_results(gt))))
    with pytest.raises(ValueError, match=r"val\.json was written by an older seglib.*1\.\.k"):
        coco_ap.evaluate_results(tmp_path / "val.json", tmp_path / "res.json")
    with pytest.raises(ValueError, match="older seglib"):
        coco_ap.evaluate_results(old, perfect(gt))


def test_best_match_iou_hand_computed(gt):
    results = [
        det(1, 1, square(10, 0, 20)),  # half-overlapping square on cake 1: IoU 200 / 600
        det(1, 2, square(30, 30, 20)),  # exact car: IoU 1
        det(1, 2, square(30, 30, 20), score=0.2),  # below threshold: ignored
        det(2, 2, square(10, 10, 30, h=48)),  # wrong class on cake 3: does not count
    ]
    assert iou_measures.best_match_iou(gt, results) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert iou_measures.best_ious(gt, results) == pytest.approx({1: 1 / 3, 2: 1.0, 3: 0.0})
    # Recall-oriented, as its name says: extra predictions, even wrong ones, cost nothing.
    noisy = results + [det(1, 1, square(40, 0, 20)), det(3, 2, square(0, 0, 30))]
    assert iou_measures.best_match_iou(gt, noisy) == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_pixel_iou_hand_computed_with_crowd_excluded(gt):
    cake3 = mask_utils.decode(
        coco_results.load_ground_truth(gt).annToRLE(gt["annotations"][2])
    ).astype(bool)
    results = [
        det(1, 1, square(10, 0, 20)),
        det(2, 1, cake3.astype(np.uint8)),
        det(2, 3, square(34, 0, 20, h=48)),
    ]  # dog: half inside the dog crowd (44..63)
    iou = iou_measures.pixel_iou(gt, results)
    a3 = int(cake3.sum())
    assert iou["cake"] == pytest.approx((200 + a3) / (600 + a3))
    assert iou["dog"] == 0.0  # 200 px outside the crowd count, the 200 inside do not
    assert iou["car"] == 0.0
    m = coco_ap.evaluate_results(gt, results)
    assert m["pixel_iou"] == pytest.approx(iou)
    assert m["mean_pixel_iou"] == pytest.approx(np.mean(list(iou.values())))  # class-averaged


def test_pixel_iou_ignores_crowd_pixels_inside_an_instance(crowded):
    crowded["annotations"].append(
        ann(6, 2, CAR, square(30, 0, 20))
    )  # half under the car crowd (x 40..59)
    # Image 2: 200 of the 400 matched px are in the crowd, so I = U = 200; image 1: car B
    # (400 px) is missed, so U += 400.
    assert iou_measures.pixel_iou(crowded, [det(2, 2, square(30, 0, 20))])["car"] == pytest.approx(
        200 / 600
    )


def test_confusion_matrix_hand_example(gt):
    results = [
        det(1, 1, square(0, 0, 20), 0.9),  # cake -> cake
        det(1, 1, square(0, 0, 20), 0.8),  # duplicate: background -> cake
        det(1, 3, square(30, 30, 20), 0.9),  # car predicted as dog
        det(3, 1, square(0, 0, 20), 0.9),  # false positive on an empty image
        det(2, 3, square(46, 2, 10, h=48), 0.9),  # inside the crowd: ignored
        det(2, 1, square(10, 10, 30, h=48), 0.1),  # below threshold: cake 3 stays missed
    ]
    matrix, labels = iou_measures.confusion_matrix(gt, results)
    assert labels == ["background", "cake", "car", "dog"]
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, [[0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])


@pytest.fixture
def crowded() -> dict:
    """Image 1: cake A and car B side by side (box IoU 1/3), dog C alone; image 2: cake D alone."""
    return {
        "images": [{"id": 1, "width": W, "height": H}, {"id": 2, "width": W, "height": H}],
        "annotations": [
            ann(1, 1, CAKE, square(0, 0, 20)),
            ann(2, 1, CAR, square(10, 0, 20)),
            ann(3, 1, DOG, square(40, 40, 20)),
            ann(4, 2, CAKE, square(0, 0, 20)),
            ann(5, 2, CAR, square(40, 0, 20), iscrowd=1),
        ],
        "categories": copy.deepcopy(CATEGORIES),
    }


def test_size_buckets_use_coco_ranges(crowded):
    for a, area in zip(
        crowded["annotations"], (1023.0, 1024.0, 9216.0, 50.0, 99999.0), strict=True
    ):
        a["area"] = area
    assert coco_ap.size_buckets(crowded) == {
        "cake": {"small": 2, "medium": 0, "large": 0},
        "car": {"small": 0, "medium": 1, "large": 0},  # the large crowd is not counted
        "dog": {"small": 0, "medium": 0, "large": 1},
    }


def test_worst_images_ranks_by_best_match_iou(gt):
    results = [
        det(1, 1, square(0, 0, 20)),
        det(1, 2, square(30, 30, 20)),
        det(2, 1, square(0, 0, 5, h=48)),
    ]
    assert iou_measures.worst_images(gt, results, n=5) == [(2, 0.0), (1, 1.0)]


def test_pr_curves_and_with_curves(gt):
    curves = coco_ap.pr_curves(gt, perfect(gt))
    assert set(curves) == {"cake", "car", "all"}  # dog has no ground truth
    assert len(curves["all"]["recall"]) == 101 and curves["all"]["recall"][-1] == 1.0
    assert min(curves["cake"]["precision"]) == 1.0
    m = coco_ap.evaluate_results(gt, [det(3, 1, square(0, 0, 20))], with_curves=True)
    assert max(m["segm"]["pr_curves"]["all"]["precision"]) == 0.0
    assert "pr_curves" not in coco_ap.evaluate_results(gt, [])["bbox"]
    with pytest.raises(ValueError, match="iou_type"):
        coco_ap.pr_curves(gt, [], iou_type="mask")


def test_format_table_contains_the_numbers(gt):
    results = perfect(gt)[:2]  # cake 3 missed
    table = coco_ap.format_table(coco_ap.evaluate_results(gt, results))
    assert "segm" in table and "bbox" in table
    assert "best-match IoU" in table and "66.7" in table  # two of three instances found exactly
    assert "mean IoU" not in table and "pixel IoU, class mean" in table
    assert "cake" in table and "dog" in table and "100.0" in table
    dog = next(line for line in table.splitlines() if line.startswith("dog"))
    assert "-" in dog  # undefined AP shown as "-"


def test_filter_predictions_threshold_and_nms():
    a = det(1, 1, square(0, 0, 20), 0.9)
    dup = det(1, 1, square(1, 0, 20), 0.8)
    other_class = det(1, 2, square(0, 0, 20), 0.7)
    low = det(1, 1, square(40, 40, 10), 0.1)
    results = [dup, a, other_class, low]
    assert shown_results.filter_predictions(results, score_thresh=0.5) == [dup, a, other_class]
    assert shown_results.filter_predictions(results, score_thresh=0.5, nms_thresh=0.5) == [
        a,
        other_class,
    ]
    assert shown_results.filter_predictions(results, nms_thresh=0.5, iou_type="bbox") == [
        a,
        other_class,
        low,
    ]
    assert shown_results.filter_predictions(results, nms_thresh=0.99) == results
    with pytest.raises(ValueError, match="nms_thresh"):
        shown_results.filter_predictions(results, nms_thresh=1.5)


@pytest.mark.coco_tiny
def test_real_coco_annotations(coco_tiny):
    """Real polygons, an uncompressed crowd RLE and 80 categories: perfect is 1, and we match pycocotools."""
    gt = json.loads((coco_tiny / "instances_train2017_tiny.json").read_text())
    results = perfect(gt)
    m = coco_ap.evaluate_results(gt, results)
    assert m["segm"]["AP"] == pytest.approx(1.0) and m["bbox"]["AP"] == pytest.approx(1.0)
    assert m["best_match_iou"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    kept = [
        dict(r, score=float(rng.uniform()), bbox=[v + rng.uniform(-4, 4) for v in r["bbox"]])
        for r in results
        if rng.uniform() > 0.2
    ]
    m = coco_ap.evaluate_results(gt, kept)
    for iou_type in ("bbox", "segm"):
        np.testing.assert_allclose(
            [m[iou_type][k] for k in coco_ap.SUMMARY_KEYS], _direct_stats(gt, kept, iou_type)[:9]
        )
    assert 0.0 < m["bbox"]["AP"] < 1.0


def test_results_to_instances_decodes_one_image_for_drawing(gt):
    results = perfect(gt)
    results[0] = dict(results[0], score=0.3)
    coco = coco_results.load_ground_truth(gt)
    image_id = results[0]["image_id"]
    inst = shown_results.results_to_instances(results, image_id)
    expected = [a for a in gt["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    assert inst["masks"].dtype == np.uint8 and inst["masks"].shape[0] == len(expected)
    assert inst["labels"].dtype == np.int64 and inst["boxes"].dtype == np.float32
    assert list(inst["scores"]) == sorted(inst["scores"], reverse=True)
    by_label = {labels_of(gt)[a["category_id"]]: a for a in expected}
    for box, mask, label in zip(inst["boxes"], inst["masks"], inst["labels"], strict=True):
        a = by_label[int(label)]
        np.testing.assert_array_equal(mask, coco.annToMask(a))
        x, y, w, h = a["bbox"]
        np.testing.assert_allclose(box, [x, y, x + w, y + h])
    above = shown_results.results_to_instances(results, image_id, score_thresh=0.5)
    assert len(above["labels"]) == len(expected) - 1
    none = shown_results.results_to_instances(results, image_id=-5)
    assert none["boxes"].shape == (0, 4) and none["masks"].shape[0] == 0
