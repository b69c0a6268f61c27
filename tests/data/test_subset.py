"""Subset building: union, balance, COCO's ids kept, reproducibility, bad input, real data."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seglib.core.config import DEFAULT_CATEGORIES, TrainConfig
from seglib.core.paths import get_paths
from seglib.data.annotations import AnnotationError, SubsetError, load_instances
from seglib.data.dataset import CocoSubsetDataset, DatasetError, open_split
from seglib.data.subset import build_subset, format_subset_counts, prepare_source
from seglib.evaluation.coco_results import load_ground_truth

COCO_IDS = {"person": 1, "car": 3, "dog": 18, "cake": 61}


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _copy_root(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _subset(root: Path, out: Path, **kwargs) -> dict:
    kwargs = {"num_train": 12, "num_val": 6, "num_test": 4, "progress": False, **kwargs}
    return build_subset(root, out, **kwargs)


# --- what it writes --------------------------------------------------------------------------
def test_split_files_and_categories(synthetic_subset):
    for split, n in (("train", 12), ("val", 6), ("test", 4)):
        doc = _read(synthetic_subset / f"{split}.json")
        assert list(doc) == ["info", "licenses", "images", "annotations", "categories"]
        # COCO's ids, listed in the order asked for (which makes labels 1..k), no second id
        assert doc["categories"] == [
            {
                "id": COCO_IDS[name],
                "name": name,
                "supercategory": doc["categories"][i]["supercategory"],
            }
            for i, name in enumerate(DEFAULT_CATEGORIES)
        ]
        assert len(doc["images"]) == n
        assert [im["id"] for im in doc["images"]] == sorted(im["id"] for im in doc["images"])
        assert [a["id"] for a in doc["annotations"]] == sorted(a["id"] for a in doc["annotations"])
        assert {a["category_id"] for a in doc["annotations"]} == {1, 3, 18, 61}
        for im in doc["images"]:
            assert (synthetic_subset / "images" / im["file_name"]).is_file()
            assert im["coco_url"].endswith(
                f"/{'train' if split == 'train' else 'val'}2017/{im['file_name']}"
            )


def test_original_image_annotation_and_category_ids_kept(synthetic_coco, synthetic_subset):
    for split, folder in (("train", "train2017"), ("val", "val2017"), ("test", "val2017")):
        src = _read(synthetic_coco / "annotations" / f"instances_{folder}.json")
        src_anns = {a["id"]: a for a in src["annotations"]}
        src_images = {im["id"]: im for im in src["images"]}
        doc = _read(synthetic_subset / f"{split}.json")
        for im in doc["images"]:
            assert src_images[im["id"]]["file_name"] == im["file_name"]
        for a in doc["annotations"]:
            orig = src_anns[a["id"]]
            assert orig["image_id"] == a["image_id"]
            assert a["category_id"] == orig["category_id"]
            assert orig["segmentation"] == a["segmentation"] and orig["iscrowd"] == a["iscrowd"]
        # every annotation of a chosen category on a chosen image is there, crowd included
        ids = {im["id"] for im in doc["images"]}
        expected = {
            a["id"]
            for a in src["annotations"]
            if a["image_id"] in ids and a["category_id"] in COCO_IDS.values()
        }
        assert {a["id"] for a in doc["annotations"]} == expected


def test_splits_come_from_the_right_folder_and_are_disjoint(synthetic_coco, synthetic_subset):
    train_ids = {
        im["id"] for im in _read(synthetic_coco / "annotations/instances_train2017.json")["images"]
    }
    val_ids = {
        im["id"] for im in _read(synthetic_coco / "annotations/instances_val2017.json")["images"]
    }
    got = {
        s: {im["id"] for im in _read(synthetic_subset / f"{s}.json")["images"]}
        for s in ("train", "val", "test")
    }
    assert got["train"] <= train_ids
    assert got["val"] <= val_ids and got["test"] <= val_ids
    assert not got["val"] & got["test"]


def test_every_image_qualifies(synthetic_subset):
    for split in ("train", "val", "test"):
        doc = _read(synthetic_subset / f"{split}.json")
        with_instance = {a["image_id"] for a in doc["annotations"] if not a["iscrowd"]}
        assert with_instance == {im["id"] for im in doc["images"]}


def test_crowd_kept_with_iscrowd(synthetic_coco, tmp_path):
    # all qualifying train images, so the synthetic crowd-plus-instance image is in
    manifest = _subset(synthetic_coco, tmp_path, num_train=21, num_val=1, num_test=1)
    doc = _read(tmp_path / "train.json")
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"], dict) for a in crowd)
    assert manifest["totals"]["train"]["crowd"] == len(crowd)


def test_manifest(synthetic_coco, synthetic_subset):
    manifest = _read(synthetic_subset / "manifest.json")
    assert manifest["seed"] == 0
    assert manifest["arguments"]["categories"] == list(DEFAULT_CATEGORIES)
    assert manifest["source"]["coco_root"] == str(synthetic_coco.resolve())
    for split in ("train", "val", "test"):
        doc = _read(synthetic_subset / f"{split}.json")
        assert set(manifest["counts"][split]) == set(DEFAULT_CATEGORIES)
        person = [a for a in doc["annotations"] if a["category_id"] == 1 and not a["iscrowd"]]
        assert manifest["counts"][split]["person"]["instances"] == len(person)
        assert manifest["counts"][split]["person"]["images"] == len({a["image_id"] for a in person})
        assert manifest["totals"][split]["images"] == len(doc["images"])
        hashes = manifest["images"][split]
        assert set(hashes) == {im["file_name"] for im in doc["images"]}
        for name, digest in hashes.items():
            assert (
                hashlib.sha256((synthetic_subset / "images" / name).read_bytes()).hexdigest()
                == digest
            )


def test_class_balance_rarest_first(synthetic_coco, tmp_path):
    """Each category reaches ~n/k images even where a plain random draw would starve it."""
    root = _copy_root(synthetic_coco, tmp_path / "root")
    # Make dog rare in train: keep it on only 2 of ~20 qualifying images.
    path = root / "annotations/instances_train2017.json"
    data = _read(path)
    dog_images = sorted({a["image_id"] for a in data["annotations"] if a["category_id"] == 18})
    keep = set(dog_images[:2])
    data["annotations"] = [
        a for a in data["annotations"] if a["category_id"] != 18 or a["image_id"] in keep
    ]
    path.write_text(json.dumps(data))
    for seed in range(5):
        manifest = _subset(
            root, tmp_path / f"out{seed}", num_train=8, num_val=4, num_test=2, seed=seed
        )
        counts = manifest["counts"]["train"]
        assert counts["dog"]["images"] == 2, seed  # n/k = 2; a plain draw gets both 16% of the time
        assert all(counts[c]["images"] >= 2 for c in DEFAULT_CATEGORIES), counts


def test_union_not_intersection(synthetic_coco, tmp_path):
    """Images with only one of the chosen categories qualify (getImgIds would intersect)."""
    manifest = _subset(
        synthetic_coco, tmp_path, categories=["dog", "cake"], num_train=10, num_val=4, num_test=2
    )
    doc = _read(tmp_path / "train.json")
    by_image: dict[int, set[int]] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(a["category_id"])
    assert any(cats == {18} for cats in by_image.values()) and any(
        cats == {61} for cats in by_image.values()
    )
    assert [(c["id"], c["name"]) for c in manifest["categories"]] == [(18, "dog"), (61, "cake")]


def test_same_seed_same_bytes_other_seed_other_images(synthetic_coco, synthetic_subset, tmp_path):
    _subset(synthetic_coco, tmp_path / "again", seed=0)
    for name in ("train.json", "val.json", "test.json", "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (synthetic_subset / name).read_bytes(), (
            name
        )
    _subset(synthetic_coco, tmp_path / "other", seed=1)
    assert (tmp_path / "other/train.json").read_bytes() != (
        synthetic_subset / "train.json"
    ).read_bytes()


def test_changing_one_count_keeps_the_other_splits(synthetic_coco, synthetic_subset, tmp_path):
    _subset(synthetic_coco, tmp_path, num_train=10)
    assert (tmp_path / "val.json").read_bytes() == (synthetic_subset / "val.json").read_bytes()


def test_rerun_into_same_folder_is_stable(synthetic_coco, tmp_path):
    first = _subset(synthetic_coco, tmp_path)
    before = (tmp_path / "train.json").read_bytes()
    second = _subset(synthetic_coco, tmp_path)
    assert first == second and (tmp_path / "train.json").read_bytes() == before


def test_awkward_images_are_copied_verbatim(synthetic_coco, tmp_path):
    """Grayscale, CMYK and EXIF-rotated files pass the decode check and keep their bytes."""
    _subset(synthetic_coco, tmp_path, num_train=21, num_val=15, num_test=6)
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        for im in _read(tmp_path / f"{split}.json")["images"]:
            assert (tmp_path / "images" / im["file_name"]).read_bytes() == (
                synthetic_coco / folder / im["file_name"]
            ).read_bytes()


def test_counts_zero_split(synthetic_coco, tmp_path):
    manifest = _subset(synthetic_coco, tmp_path, num_test=0)
    assert _read(tmp_path / "test.json")["images"] == []
    assert manifest["totals"]["test"]["images"] == 0


# --- bad input -------------------------------------------------------------------------------
def _no_outputs(out: Path) -> bool:
    return not any(
        (out / n).exists() for n in ("train.json", "val.json", "test.json", "manifest.json")
    )


def test_unknown_category_lists_valid_ones(synthetic_coco, tmp_path):
    with pytest.raises(SubsetError, match=r"unknown category \['horse'\].*cake.*person"):
        _subset(synthetic_coco, tmp_path, categories=["cake", "horse"])
    assert _no_outputs(tmp_path)


def test_more_images_than_qualify(synthetic_coco, tmp_path):
    with pytest.raises(
        SubsetError,
        match=r"train2017: asked for 30 train = 30 images but only 21.*"
        r"val2017: asked for 20 val \+ 5 test = 25 images but only 21",
    ):
        _subset(synthetic_coco, tmp_path, num_train=30, num_val=20, num_test=5)
    assert _no_outputs(tmp_path)


def test_missing_annotations_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"instances_train2017\.json.*--download"):
        _subset(tmp_path / "nowhere", tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_coco"])
def test_malformed_json_names_the_file(synthetic_coco, tmp_path, damage):
    root = _copy_root(synthetic_coco, tmp_path / "root")
    path = root / "annotations/instances_val2017.json"
    raw = path.read_bytes()
    path.write_bytes(
        {
            "truncate": raw[: len(raw) // 2],
            "garbage": b"\x00\xff<html>",
            "not_coco": b'{"images": {}}',
        }[damage]
    )
    with pytest.raises(SubsetError, match="instances_val2017.json"):
        _subset(root, tmp_path / "out")
    with pytest.raises(AnnotationError, match="instances_val2017.json"):
        load_instances(path)
    assert _no_outputs(tmp_path / "out")


def test_one_validator_names_the_entry_for_dataset_and_ground_truth(tmp_path):
    """The subset builder, the dataset and the evaluation's ground truth check a COCO JSON
    with the same validator, so they refuse the same entry with the same words."""
    doc = {
        "images": [{"id": 1, "width": 10, "height": 10, "file_name": "a.jpg"}],
        "annotations": [
            {"id": 7, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": [[0] * 6]}
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    expected = f"{path}: annotation 7 refers to image_id 2, which is not in 'images'"
    for error, read in [
        (AnnotationError, load_instances),
        (DatasetError, lambda p: CocoSubsetDataset(p, tmp_path)),
        (ValueError, load_ground_truth),
    ]:
        with pytest.raises(error) as info:
            read(path)
        assert str(info.value) == expected


def _damage_annotations(root: Path, folder: str, fn) -> None:
    path = root / "annotations" / f"instances_{folder}.json"
    data = _read(path)
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("category_id", 999, r"annotation \d+ has category_id 999"),
        ("image_id", 123456789, r"annotation \d+ refers to image_id 123456789"),
        ("segmentation", "oops", r"annotation \d+: segmentation must be"),
        ("segmentation", [[1.0, 2.0, 3.0]], r"annotation \d+: each polygon"),
    ],
)
def test_bad_annotation_names_its_id(synthetic_coco, tmp_path, field, value, match):
    root = _copy_root(synthetic_coco, tmp_path / "root")
    _damage_annotations(root, "train2017", lambda d: d["annotations"][5].__setitem__(field, value))
    ann_id = _read(root / "annotations/instances_train2017.json")["annotations"][5]["id"]
    with pytest.raises(SubsetError, match=match) as info:
        _subset(root, tmp_path / "out")
    assert str(ann_id) in str(info.value)
    assert _no_outputs(tmp_path / "out")


def test_degenerate_polygon_parts_are_dropped(synthetic_coco, tmp_path):
    """A 4-number polygon is read as a box by pycocotools; it is dropped, the rest kept."""
    root = _copy_root(synthetic_coco, tmp_path / "root")
    data = _read(root / "annotations/instances_train2017.json")
    target = next(a for a in data["annotations"] if a["category_id"] == 1 and not a["iscrowd"])

    def damage(d):
        for a in d["annotations"]:
            if a["id"] == target["id"]:
                a["segmentation"] = [*a["segmentation"], [1.0, 1.0, 5.0, 5.0]]

    _damage_annotations(root, "train2017", damage)
    manifest = _subset(root, tmp_path / "out", num_train=21, num_val=2, num_test=1)
    got = next(
        a for a in _read(tmp_path / "out/train.json")["annotations"] if a["id"] == target["id"]
    )
    assert got["segmentation"] == target["segmentation"]
    assert manifest["dropped_annotations"] == []


@pytest.mark.parametrize(
    "name", ["../escape.jpg", "/etc/passwd", "sub/../../x.jpg", "C:\\x.jpg", ".."]
)
def test_file_name_escaping_image_folder(synthetic_coco, tmp_path, name):
    root = _copy_root(synthetic_coco, tmp_path / "root")
    _damage_annotations(root, "val2017", lambda d: d["images"][3].__setitem__("file_name", name))
    with pytest.raises(SubsetError, match="escapes the image folder"):
        _subset(root, tmp_path / "out")
    assert _no_outputs(tmp_path / "out")


def test_duplicate_file_name(synthetic_coco, tmp_path):
    root = _copy_root(synthetic_coco, tmp_path / "root")
    _damage_annotations(
        root,
        "train2017",
        lambda d: d["images"][4].__setitem__("file_name", d["images"][2]["file_name"]),
    )
    with pytest.raises(SubsetError, match="is also used by image"):
        _subset(root, tmp_path / "out")


def _chosen_file(root: Path, tmp_path: Path) -> tuple[str, Path]:
    """A train image the default subset picks, found by a throwaway build."""
    _subset(root, tmp_path / "probe")
    doc = _read(tmp_path / "probe/train.json")
    crowd_images = {a["image_id"] for a in doc["annotations"] if a["iscrowd"]}
    name = next(im["file_name"] for im in doc["images"] if im["id"] not in crowd_images)
    return name, root / "train2017" / name


def test_missing_image(synthetic_coco, tmp_path):
    root = _copy_root(synthetic_coco, tmp_path / "root")
    name, path = _chosen_file(root, tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"{name}.*--download"):
        _subset(root, tmp_path / "out")
    assert _no_outputs(tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_image(synthetic_coco, tmp_path, damage):
    root = _copy_root(synthetic_coco, tmp_path / "root")
    name, path = _chosen_file(root, tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else b"not a jpeg at all")
    with pytest.raises(SubsetError, match=f"{name}.*corrupt"):
        _subset(root, tmp_path / "out")
    assert _no_outputs(tmp_path / "out")


def test_image_size_mismatch(synthetic_coco, tmp_path):
    root = _copy_root(synthetic_coco, tmp_path / "root")
    name, _ = _chosen_file(root, tmp_path)
    _damage_annotations(
        root,
        "train2017",
        lambda d: [im.__setitem__("width", 999) for im in d["images"] if im["file_name"] == name],
    )
    with pytest.raises(SubsetError, match=f"{name}.*999"):
        _subset(root, tmp_path / "out")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"categories": []}, "non-empty"),
        ({"categories": ["cake", "cake"]}, "repeat"),
        ({"num_train": -1}, "num_train"),
        ({"num_train": 0, "num_val": 0, "num_test": 0}, "nothing to build"),
        ({"workers": 0}, "workers"),
        ({"base_url": "ftp://mirror"}, "base_url"),
    ],
)
def test_bad_arguments(synthetic_coco, tmp_path, kwargs, match):
    with pytest.raises(SubsetError, match=match):
        _subset(synthetic_coco, tmp_path, **kwargs)


def test_library_is_silent(synthetic_coco, tmp_path, capsys):
    _subset(synthetic_coco, tmp_path)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_only_when_asked(synthetic_coco, tmp_path, capsys):
    _subset(synthetic_coco, tmp_path, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "22/22" in captured.err


def test_sampling_is_spread_over_seeds(synthetic_coco, tmp_path):
    """Different seeds draw different images (the sampler is not a fixed prefix)."""
    picks = set()
    for seed in range(4):
        _subset(synthetic_coco, tmp_path / str(seed), seed=seed, num_train=6, num_val=2, num_test=1)
        picks.add(tuple(im["id"] for im in _read(tmp_path / str(seed) / "train.json")["images"]))
    assert len(picks) >= 3
    assert np.all([len(p) == 6 for p in picks])


# --- real data: coco-tiny (16 train2017 images, read-only) -----------------------------------
TINY_VAL_IDS = [5802, 60623, 184613, 222564, 224736, 522418]  # 224736 has no person or cake
VAL_OFFSET = 1_000_000


@pytest.fixture
def tiny_root(coco_tiny, tmp_path) -> Path:
    """A COCO root of symlinks into coco-tiny, plus a val2017 made from six of its images.

    The val copies get new ids and file names (id + VAL_OFFSET), as val2017 never shares a
    file name with train2017.
    """
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "annotations/instances_train2017.json").symlink_to(
        coco_tiny / "instances_train2017_tiny.json"
    )
    (root / "train2017").symlink_to(coco_tiny / "train2017")
    data = _read(coco_tiny / "instances_train2017_tiny.json")
    data["images"] = [im for im in data["images"] if im["id"] in TINY_VAL_IDS]
    for im in data["images"]:
        name = f"{im['id'] + VAL_OFFSET:012d}.jpg"
        (root / "val2017" / name).symlink_to(coco_tiny / "train2017" / im["file_name"])
        im.update(id=im["id"] + VAL_OFFSET, file_name=name)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in TINY_VAL_IDS]
    for a in data["annotations"]:
        a["image_id"] += VAL_OFFSET
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))
    return root


@pytest.mark.coco_tiny
def test_coco_tiny_subset(coco_tiny, tiny_root, tmp_path):
    from pycocotools import mask as mask_utils

    out = tmp_path / "subset"
    manifest = build_subset(
        tiny_root,
        out,
        categories=["cake", "person"],
        num_train=10,
        num_val=3,
        num_test=2,
        progress=False,
    )
    # union: 10 images have a non-crowd person or cake; only 522418 has both (the intersection)
    assert manifest["available"]["train2017"] == {
        "images": 10,
        "per_category": {"cake": 1, "person": 10},
    }
    assert manifest["available"]["val2017"]["images"] == 5
    assert manifest["counts"]["train"] == {
        "cake": {"images": 1, "instances": 1, "crowd": 0},
        "person": {"images": 10, "instances": 32, "crowd": 1},
    }
    train = _read(out / "train.json")
    assert train["categories"] == [
        {"id": 61, "name": "cake", "supercategory": "food"},
        {"id": 1, "name": "person", "supercategory": "person"},
    ]
    assert 522418 in {im["id"] for im in train["images"]}
    assert {a["category_id"] for a in train["annotations"] if a["image_id"] == 522418} == {1, 61}
    crowd = [a for a in train["annotations"] if a["iscrowd"]]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in crowd] == [
        (900100184613, 184613, 1)
    ]

    src = {a["id"]: a for a in _read(coco_tiny / "instances_train2017_tiny.json")["annotations"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in train["images"]}
    for a in train["annotations"]:
        assert a["segmentation"] == src[a["id"]]["segmentation"]
        assert a["area"] == src[a["id"]]["area"] and a["bbox"] == src[a["id"]]["bbox"]
    rle = mask_utils.frPyObjects(crowd[0]["segmentation"], *sizes[184613])
    crowd_mask = mask_utils.decode(rle)  # uncompressed RLE, kept as COCO wrote it
    assert crowd_mask.shape == sizes[184613] and crowd_mask.sum() > 1000

    for split in ("val", "test"):
        ids = {im["id"] for im in _read(out / f"{split}.json")["images"]}
        assert ids <= {i + VAL_OFFSET for i in TINY_VAL_IDS} - {224736 + VAL_OFFSET}
    assert not (
        {im["id"] for im in _read(out / "val.json")["images"]}
        & {im["id"] for im in _read(out / "test.json")["images"]}
    )
    for im in train["images"]:
        assert (out / "images" / im["file_name"]).read_bytes() == (
            coco_tiny / "train2017" / im["file_name"]
        ).read_bytes()

    # End to end: the dataset over the subset just written decodes every training mask exactly
    # as pycocotools' annToMask does on the original annotation; the crowd is no target.
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        original = COCO(str(coco_tiny / "instances_train2017_tiny.json"))
    ds = open_split(out, "train", min_box_size=0)
    assert ds.category_labels == {61: 1, 1: 2}  # the order asked for: cake, person
    decoded = 0
    for i, image_id in enumerate(ds.ids):
        _, target = ds[i]
        anns = [a for a in train["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        assert target["masks"].shape[0] == len(anns)
        expected = [{61: 1, 1: 2}[a["category_id"]] for a in anns]
        assert target["labels"].tolist() == expected
        for mask, a in zip(target["masks"].numpy(), anns, strict=True):
            assert (mask == original.annToMask(src[a["id"]])).all(), a["id"]
            decoded += 1
    assert decoded == 33  # 32 persons + 1 cake; the crowd person is not among them


@pytest.mark.coco_tiny
def test_coco_tiny_cake_alone(tiny_root, tmp_path):
    build_subset(
        tiny_root,
        tmp_path / "one",
        categories=["cake"],
        num_train=1,
        num_val=1,
        num_test=0,
        progress=False,
    )
    assert [im["id"] for im in _read(tmp_path / "one/train.json")["images"]] == [522418]
    with pytest.raises(SubsetError, match=r"asked for 2 train = 2 images but only 1.*cake 1"):
        build_subset(
            tiny_root,
            tmp_path / "two",
            categories=["cake"],
            num_train=2,
            num_val=1,
            num_test=0,
            progress=False,
        )


def test_prepare_source_generates_synthetic_once_and_warns_every_time(tmp_path):
    cfg = TrainConfig.smoke(synthetic_images=6, synthetic_size=64)
    paths = get_paths("smoke", tmp_path)
    with pytest.warns(UserWarning, match="SYNTHETIC DATA"):
        root = prepare_source(cfg, paths)
    ann = root / "annotations" / "instances_train2017.json"
    first = ann.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="SYNTHETIC DATA"):
        assert prepare_source(cfg, paths) == root
    assert ann.stat().st_mtime_ns == first  # same arguments: reused
    (root / "synthetic.json").write_text("{torn")
    with pytest.warns(UserWarning):
        prepare_source(cfg, paths)
    assert ann.stat().st_mtime_ns != first  # unreadable marker: regenerated, no JSONDecodeError
    first = ann.stat().st_mtime_ns
    with pytest.warns(UserWarning):
        prepare_source(cfg.replace(synthetic_images=7), paths)
    assert len(json.loads(ann.read_text())["images"]) == 7  # new arguments: regenerated


def test_prepare_source_leaves_real_coco_alone(tmp_path):
    paths = get_paths("seed", tmp_path)
    assert prepare_source(TrainConfig.seed_recipe(), paths) == paths.coco_root
    assert not paths.coco_root.exists()


def test_format_subset_counts_lists_every_split_and_category(synthetic_subset):
    manifest = json.loads((synthetic_subset / "manifest.json").read_text())
    table = format_subset_counts(manifest["counts"])
    for split in ("train", "val", "test"):
        for name in ("cake", "car", "dog", "person"):
            c = manifest["counts"][split][name]
            assert f"{split:<6} {name:<10} {c['images']:>7} {c['instances']:>10}" in table
