"""The synthetic COCO root: COCO's layout and conventions, determinism, and awkward files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from seglib.data.synthetic import make_synthetic_coco
from seglib.data.synthetic_shapes import PALETTE

TARGET_IDS = {1: "person", 3: "car", 18: "dog", 61: "cake"}
SPLITS = ("train", "val")


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}2017.json").read_text())


def _ann_mask(ann: dict, h: int, w: int) -> np.ndarray:
    rle = mask_utils.frPyObjects(ann["segmentation"], h, w)
    if isinstance(rle, list):
        rle = mask_utils.merge(rle)
    return mask_utils.decode(rle).astype(bool)


def _stored(root: Path, split: str, image: dict) -> tuple[np.ndarray, Image.Image]:
    """RGB pixels in the stored frame (EXIF orientation not applied, as COCO annotates)."""
    raw = Image.open(root / f"{split}2017" / image["file_name"])
    return np.asarray(raw.convert("RGB")), raw


def _nearest_palette(rgb: np.ndarray) -> str:
    return min(PALETTE, key=lambda name: float(np.linalg.norm(rgb - np.array(PALETTE[name]))))


def test_layout_and_coco_fields(synthetic_coco):
    ids = {}
    ann_ids = set()
    for split in SPLITS:
        data = _load(synthetic_coco, split)
        assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
        cats = {c["id"]: c for c in data["categories"]}
        assert {i: cats[i]["name"] for i in TARGET_IDS} == TARGET_IDS
        assert cats[1]["supercategory"] == "person" and cats[61]["supercategory"] == "food"
        assert len(cats) > 4, "distractor categories are missing"
        assert len(data["images"]) == 24
        for im in data["images"]:
            assert re.fullmatch(r"\d{12}\.jpg", im["file_name"])
            assert im["file_name"] == f"{im['id']:012d}.jpg"
            assert im["coco_url"] == f"http://images.cocodataset.org/{split}2017/{im['file_name']}"
            assert (synthetic_coco / f"{split}2017" / im["file_name"]).is_file()
            assert max(im["width"], im["height"]) == 128
        ids[split] = {im["id"] for im in data["images"]}
        for a in data["annotations"]:
            assert a["id"] not in ann_ids
            ann_ids.add(a["id"])
            assert a["image_id"] in ids[split]
            assert a["category_id"] in cats
            assert set(a) == {
                "id",
                "image_id",
                "category_id",
                "segmentation",
                "area",
                "bbox",
                "iscrowd",
            }
    assert not ids["train"] & ids["val"], "image ids must differ between train and val"


def test_polygons_bbox_and_area_agree(synthetic_coco):
    checked = 0
    for split in SPLITS:
        data = _load(synthetic_coco, split)
        images = {im["id"]: im for im in data["images"]}
        for a in data["annotations"]:
            if a["iscrowd"]:
                continue
            im = images[a["image_id"]]
            seg = a["segmentation"]
            assert isinstance(seg, list) and all(len(p) >= 6 and len(p) % 2 == 0 for p in seg)
            xs = np.concatenate([p[0::2] for p in seg])
            ys = np.concatenate([p[1::2] for p in seg])
            assert (
                xs.min() >= 0
                and ys.min() >= 0
                and xs.max() <= im["width"]
                and ys.max() <= im["height"]
            )
            np.testing.assert_allclose(
                a["bbox"], [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()], atol=0.02
            )
            assert a["area"] == pytest.approx(_ann_mask(a, im["height"], im["width"]).sum())
            checked += 1
    assert checked > 40


def test_crowd_instances_are_uncompressed_rle(synthetic_coco):
    crowds = []
    for split in SPLITS:
        data = _load(synthetic_coco, split)
        images = {im["id"]: im for im in data["images"]}
        for a in data["annotations"]:
            if not a["iscrowd"]:
                continue
            im = images[a["image_id"]]
            seg = a["segmentation"]
            assert seg["size"] == [im["height"], im["width"]]
            assert all(isinstance(c, int) for c in seg["counts"])
            assert sum(seg["counts"]) == im["height"] * im["width"]
            m = _ann_mask(a, im["height"], im["width"])
            assert a["area"] == m.sum() > 0
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            crowds.append(a)
    assert len(crowds) >= 2
    # COCO's crowd ids do not fit in int32; consumers must cope.
    assert all(a["id"] > 2**31 for a in crowds)


def test_visible_masks_do_not_overlap_but_boxes_do(synthetic_coco):
    """Occluded instances are annotated by their visible part, as in COCO."""
    overlapping_boxes = 0
    for split in SPLITS:
        data = _load(synthetic_coco, split)
        images = {im["id"]: im for im in data["images"]}
        by_image: dict[int, list] = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for image_id, anns in by_image.items():
            im = images[image_id]
            masks = [_ann_mask(a, im["height"], im["width"]) for a in anns]
            for i in range(len(anns)):
                for j in range(i + 1, len(anns)):
                    shared = (masks[i] & masks[j]).sum()
                    assert shared <= 0.05 * min(masks[i].sum(), masks[j].sum())
                    bi, bj = anns[i]["bbox"], anns[j]["bbox"]
                    if min(bi[0] + bi[2], bj[0] + bj[2]) > max(bi[0], bj[0]) and min(
                        bi[1] + bi[3], bj[1] + bj[3]
                    ) > max(bi[1], bj[1]):
                        overlapping_boxes += 1
    assert overlapping_boxes >= 10


def test_categories_are_drawn_in_their_palette(synthetic_coco):
    """Each category is learnable: its pixels carry its colour, in the stored frame."""
    for split in SPLITS:
        data = _load(synthetic_coco, split)
        names = {c["id"]: c["name"] for c in data["categories"]}
        anns = [a for a in data["annotations"] if not a["iscrowd"]]
        for im in data["images"]:
            pixels, raw = _stored(synthetic_coco, split, im)
            if raw.mode != "RGB":
                continue
            for a in anns:
                if a["image_id"] != im["id"] or a["area"] < 50:
                    continue
                mean = pixels[_ann_mask(a, im["height"], im["width"])].mean(0)
                assert _nearest_palette(mean) == names[a["category_id"]], (im["id"], a["id"], mean)


def test_special_image_modes(synthetic_coco):
    for split in SPLITS:
        data = _load(synthetic_coco, split)
        modes = {}
        for im in data["images"]:
            pixels, raw = _stored(synthetic_coco, split, im)
            assert pixels.shape == (im["height"], im["width"], 3)
            orientation = raw.getexif().get(0x0112, 1)
            modes.setdefault(("exif" if orientation != 1 else raw.mode), []).append((im, raw))
        assert len(modes["L"]) == 1 and len(modes["CMYK"]) == 1 and len(modes["exif"]) == 1
        im, raw = modes["exif"][0]
        assert raw.getexif()[0x0112] == 6
        assert raw.size == (im["width"], im["height"]) != (im["height"], im["width"])
        pixels, _ = _stored(synthetic_coco, split, im)
        names = {c["id"]: c["name"] for c in data["categories"]}
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        assert anns
        biggest = max(anns, key=lambda a: a["area"])
        mean = pixels[_ann_mask(biggest, im["height"], im["width"])].mean(0)
        assert _nearest_palette(mean) == names[biggest["category_id"]]


def test_enough_qualifying_images_with_big_objects(synthetic_coco):
    """The smoke subset (12 train, 6 val + 4 test) must fit, with objects visible at 128 px."""
    for split in SPLITS:
        data = _load(synthetic_coco, split)
        images = {im["id"]: im for im in data["images"]}
        largest: dict[int, float] = {}
        per_cat: dict[int, set] = {c: set() for c in TARGET_IDS}
        for a in data["annotations"]:
            if a["iscrowd"] or a["category_id"] not in TARGET_IDS:
                continue
            im = images[a["image_id"]]
            rel = max(a["bbox"][2], a["bbox"][3]) / max(im["width"], im["height"])
            largest[a["image_id"]] = max(largest.get(a["image_id"], 0.0), rel)
            per_cat[a["category_id"]].add(a["image_id"])
        assert len(largest) >= 18
        assert min(largest.values()) >= 0.2
        assert all(len(v) >= 4 for v in per_cat.values()), {
            TARGET_IDS[k]: len(v) for k, v in per_cat.items()
        }
        # Images without any of the four (distractors only, crowd only, empty) exist too.
        assert len(images) - len(largest) >= 2


def test_summary_counts_match_files(synthetic_coco, tmp_path):
    summary = make_synthetic_coco(tmp_path, images_per_split=24, size=128, seed=0)
    for split in SPLITS:
        data = _load(tmp_path, split)
        counts = summary["splits"][split]
        assert counts["images"] == len(data["images"])
        assert counts["annotations"] == len(data["annotations"])
        assert counts["crowd"] == sum(a["iscrowd"] for a in data["annotations"])
        person = [a for a in data["annotations"] if a["category_id"] == 1 and not a["iscrowd"]]
        assert counts["per_category"]["person"] == {
            "images": len({a["image_id"] for a in person}),
            "instances": len(person),
        }


def test_deterministic_per_seed(synthetic_coco, tmp_path):
    make_synthetic_coco(tmp_path / "a", images_per_split=24, size=128, seed=0)
    make_synthetic_coco(tmp_path / "b", images_per_split=24, size=128, seed=1)
    files = sorted(p.relative_to(synthetic_coco) for p in synthetic_coco.rglob("*") if p.is_file())
    assert len(files) == 2 + 48
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (synthetic_coco / rel).read_bytes(), rel
    ann = Path("annotations/instances_train2017.json")
    assert (tmp_path / "b" / ann).read_bytes() != (synthetic_coco / ann).read_bytes()


@pytest.mark.parametrize("n", [1, 3, 9])
def test_small_splits(tmp_path, n):
    summary = make_synthetic_coco(tmp_path, images_per_split=n, size=64, seed=3)
    assert summary["splits"]["train"]["images"] == n
    assert summary["splits"]["val"]["qualifying_images"] >= 1
    assert len(list((tmp_path / "val2017").glob("*.jpg"))) == n


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images_per_split": 0}, "images_per_split"),
        ({"size": 16}, "size"),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_coco(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_heavy_share_adds_contained_pairs_and_keeps_the_default_files(synthetic_coco, tmp_path):
    """``heavy_share`` draws scenes with a small object inside a large one's box; 0 changes nothing."""
    from seglib.evaluation.occlusion import occlusion_levels

    make_synthetic_coco(tmp_path / "zero", images_per_split=24, size=128, seed=0, heavy_share=0.0)
    ann = Path("annotations/instances_val2017.json")
    assert (tmp_path / "zero" / ann).read_bytes() == (synthetic_coco / ann).read_bytes()

    summary = make_synthetic_coco(
        tmp_path / "all", images_per_split=24, size=128, seed=0, heavy_share=1.0
    )
    assert summary["heavy_share"] == 1.0
    data = _load(tmp_path / "all", "val")
    levels = occlusion_levels(data)
    by_image: dict[int, list[float]] = {}
    for a in data["annotations"]:
        if not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(levels[a["id"]])
    pairs = [v for v in by_image.values() if len(v) == 2]
    # Every object scene is a contained pair; nearly all of them hold a heavy instance.
    assert len(pairs) >= 15
    assert sum(max(v) >= 0.3 for v in pairs) >= 0.9 * len(pairs)
    # Still COCO's conventions: visible parts that do not overlap.
    images = {im["id"]: im for im in data["images"]}
    for image_id, anns in _group_by_image(data).items():
        im = images[image_id]
        masks = [_ann_mask(a, im["height"], im["width"]) for a in anns]
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert (masks[i] & masks[j]).sum() <= 0.05 * min(masks[i].sum(), masks[j].sum())


def _group_by_image(data: dict) -> dict[int, list]:
    out: dict[int, list] = {}
    for a in data["annotations"]:
        out.setdefault(a["image_id"], []).append(a)
    return out


def test_heavy_share_is_deterministic_and_checked(tmp_path):
    for name in ("a", "b"):
        make_synthetic_coco(tmp_path / name, images_per_split=9, size=64, seed=2, heavy_share=0.5)
    files = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    with pytest.raises(ValueError, match="heavy_share"):
        make_synthetic_coco(tmp_path / "c", heavy_share=1.5)


def test_the_project_categories_carry_cocos_ids_into_the_subset(synthetic_coco, synthetic_subset):
    """The synthetic root numbers its categories as COCO does (config.COCO_IDS), and a subset
    built from it keeps those ids, so its splits, results and checkpoints read like COCO's."""
    from seglib.core.config import COCO_IDS
    from seglib.data.synthetic_shapes import CATEGORIES

    assert {c["name"]: c["id"] for c in CATEGORIES if c["name"] in COCO_IDS} == COCO_IDS
    source = {a["id"]: a for s in SPLITS for a in _load(synthetic_coco, s)["annotations"]}
    for split in ("train", "val", "test"):
        doc = json.loads((synthetic_subset / f"{split}.json").read_text())
        assert [(c["id"], c["name"]) for c in doc["categories"]] == [
            (61, "cake"),
            (3, "car"),
            (18, "dog"),
            (1, "person"),
        ]
        assert doc["annotations"]
        for a in doc["annotations"]:
            assert (
                a["category_id"]
                == source[a["id"]]["category_id"]
                == COCO_IDS[TARGET_IDS[a["category_id"]]]
            )
