"""CocoSubsetDataset, open_split, split_categories and collate_fn on hand-made, synthetic and
real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from seglib.data.dataset import (
    CocoSubsetDataset,
    DatasetError,
    collate_fn,
    open_split,
    split_categories,
)
from seglib.data.images import load_rgb
from seglib.data.transforms import boxes_from_masks, train_transforms

# pycocotools 2.0.11 under numpy 2 warns inside its own decode, and torchvision 0.29 on every
# call of its image decoders (TorchCodec is to replace them); nothing seglib can change.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
]

# COCO's ids, in label order: cake is label 1, person label 2
CAKE, PERSON = 61, 1
CATEGORIES = [
    {"id": CAKE, "name": "cake", "supercategory": "food"},
    {"id": PERSON, "name": "person", "supercategory": "person"},
]


# --- helpers ------------------------------------------------------------------------------
def write_split(folder: Path, images, annotations, categories=CATEGORIES) -> Path:
    """A split json in the subset format; ``images`` are (id, file_name, h, w)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "info": {},
        "licenses": [],
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in images],
        "annotations": annotations,
        "categories": categories,
    }
    path = folder / "train.json"
    path.write_text(json.dumps(data))
    return path


def subset_of(instances: dict, names: list[str]) -> dict:
    """The subset format of a COCO instances dict: the categories ``names`` in that order, with
    COCO's ids, and their annotations, crowd kept."""
    by_name = {c["name"]: c for c in instances["categories"]}
    wanted = {by_name[n]["id"] for n in names}
    return {
        "info": instances.get("info", {}),
        "licenses": instances.get("licenses", []),
        "images": instances["images"],
        "annotations": [a for a in instances["annotations"] if a["category_id"] in wanted],
        "categories": [by_name[n] for n in names],
    }


def rle_str(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths starting with zeros."""
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture
def handmade(tmp_path):
    """Two images: one with a polygon, an RLE, an uncompressed RLE, a crowd and a 1-px instance;
    one with only a crowd instance. Returns (folder, split json, the three exact masks)."""
    h, w = 40, 60
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((h, w, 3), 60, np.uint8)).save(images / "b.png")
    rle_mask = np.zeros((h, w), np.uint8)
    rle_mask[20:30, 5:25] = 1
    unc_mask = np.zeros((h, w), np.uint8)
    unc_mask[2:9, 40:58] = 1
    crowd = np.zeros((h, w), np.uint8)
    crowd[30:40, 30:60] = 1
    tiny = np.zeros((h, w), np.uint8)
    tiny[0, 0] = 1
    anns = [
        {
            "id": 11,
            "image_id": 1,
            "category_id": PERSON,
            "iscrowd": 0,
            "segmentation": [[10, 2, 30, 2, 30, 15, 10, 15]],
        },
        {
            "id": 12,
            "image_id": 1,
            "category_id": CAKE,
            "iscrowd": 0,
            "segmentation": rle_str(rle_mask),
        },
        {
            "id": 13,
            "image_id": 1,
            "category_id": PERSON,
            "iscrowd": 0,
            "segmentation": rle_uncompressed(unc_mask),
        },
        {
            "id": 14,
            "image_id": 1,
            "category_id": PERSON,
            "iscrowd": 1,
            "segmentation": rle_uncompressed(crowd),
        },
        {"id": 15, "image_id": 1, "category_id": CAKE, "iscrowd": 0, "segmentation": rle_str(tiny)},
        {
            "id": 21,
            "image_id": 2,
            "category_id": PERSON,
            "iscrowd": 1,
            "segmentation": rle_uncompressed(crowd),
        },
    ]
    path = write_split(tmp_path, [(1, "a.png", h, w), (2, "b.png", h, w)], anns)
    return tmp_path, path, (rle_mask, unc_mask, tiny)


# --- images -------------------------------------------------------------------------------
def _quadrants(h=30, w=40) -> np.ndarray:
    """Red top-left quadrant on blue, so orientation mistakes show."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 2] = 200
    arr[: h // 2, : w // 2] = (220, 0, 0)
    return arr


# --- targets ------------------------------------------------------------------------------
def test_targets_have_torchvision_dtypes_and_shapes(handmade):
    folder, path, _ = handmade
    ds = CocoSubsetDataset(path, folder / "images")
    image, target = ds[0]
    # uint8 until the device: a quarter of the bytes through workers and pinned memory
    assert image.dtype == torch.uint8 and image.shape == (3, 40, 60)
    assert image[0, 0, 0].item() == 120
    n = len(target["labels"])
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 40, 60)
    assert (
        target["image_id"].dtype == torch.int64
        and target["image_id"].shape == ()
        and target["image_id"] == 1
    )
    assert target["area"].dtype == torch.float32 and target["area"].shape == (n,)
    assert target["iscrowd"].dtype == torch.int64 and not target["iscrowd"].any()
    np.testing.assert_array_equal(
        target["boxes"].numpy(), boxes_from_masks(target["masks"].numpy())
    )
    np.testing.assert_array_equal(target["area"].numpy(), target["masks"].sum((1, 2)).numpy())


def test_all_segmentation_formats_decode_exactly_and_crowd_is_not_a_target(handmade):
    folder, path, (rle_mask, unc_mask, tiny) = handmade
    ds = CocoSubsetDataset(path, folder / "images", min_box_size=0)
    _, target = ds[0]
    masks = target["masks"].numpy()
    assert target["labels"].tolist() == [
        2,
        1,
        2,
        1,
    ]  # polygon, RLE, uncompressed RLE, tiny; no crowd
    polygon = mask_utils.decode(
        mask_utils.merge(mask_utils.frPyObjects([[10, 2, 30, 2, 30, 15, 10, 15]], 40, 60))
    )
    np.testing.assert_array_equal(masks[0], polygon)
    np.testing.assert_array_equal(masks[1], rle_mask)
    np.testing.assert_array_equal(masks[2], unc_mask)
    np.testing.assert_array_equal(masks[3], tiny)
    crowd = [a for a in ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[1])) if a["iscrowd"]]
    assert [a["id"] for a in crowd] == [14]


def test_min_box_size_drops_tiny_instances(handmade):
    folder, path, _ = handmade
    labels_kept = CocoSubsetDataset(path, folder / "images", min_box_size=2.0)[0][1]["labels"]
    assert labels_kept.tolist() == [2, 1, 2]  # the 1x1 instance is gone
    big = CocoSubsetDataset(path, folder / "images", min_box_size=12.0)[0][1]
    widths = big["boxes"][:, 2] - big["boxes"][:, 0]
    heights = big["boxes"][:, 3] - big["boxes"][:, 1]
    assert len(big["labels"]) == 1 and (widths >= 12).all() and (heights >= 12).all()


def test_image_without_instances_gets_empty_targets(handmade):
    folder, path, _ = handmade
    ds = CocoSubsetDataset(path, folder / "images", transforms=train_transforms())
    image, target = ds[1]  # only a crowd instance
    h, w = image.shape[1:]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, h, w) and target["masks"].dtype == torch.uint8
    assert target["area"].shape == (0,) and target["iscrowd"].shape == (0,)


def test_attributes(handmade):
    folder, path, _ = handmade
    ds = CocoSubsetDataset(path, folder / "images")
    assert len(ds) == 2 and ds.ids == [1, 2]
    assert ds.class_names == ["cake", "person"]
    assert [c["id"] for c in ds.categories] == [CAKE, PERSON]
    assert ds.category_labels == {CAKE: 1, PERSON: 2}
    assert ds.get_height_and_width(1) == (40, 60)
    assert len(ds.coco.getAnnIds()) == 6  # ground truth keeps the crowds


def test_collate_fn_and_a_worker_dataloader(handmade):
    folder, path, _ = handmade
    ds = CocoSubsetDataset(path, folder / "images", transforms=train_transforms())
    images, targets = collate_fn([ds[0], ds[1]])
    assert (
        isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert [int(t["image_id"]) for t in targets] == [1, 2]


# --- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["../outside.png", "/etc/passwd", "sub/../../x.png", "C:\\x.png", "sub/x.png"]
)
def test_file_name_escaping_the_image_folder_is_refused(tmp_path, name):
    path = write_split(tmp_path, [(7, name, 10, 10)], [])
    with pytest.raises(DatasetError, match="escapes"):
        CocoSubsetDataset(path, tmp_path / "images")


def test_missing_and_corrupt_images_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    path = write_split(tmp_path, [(1, "gone.jpg", 10, 10), (2, "broken.jpg", 10, 10)], [])
    ds = CocoSubsetDataset(path, tmp_path / "images")
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        ds[0]
    with pytest.raises(DatasetError, match="broken.jpg"):
        ds[1]


@pytest.mark.parametrize("category_id", [0, 2, 3, "1", None, True])
def test_category_id_of_no_category_names_the_annotation(tmp_path, category_id):
    ann = {
        "id": 4242,
        "image_id": 1,
        "category_id": category_id,
        "iscrowd": 0,
        "segmentation": [[0, 0, 5, 0, 5, 5]],
    }
    path = write_split(tmp_path, [(1, "a.png", 10, 10)], [ann])
    with pytest.raises(DatasetError, match=r"annotation 4242 has category_id .*cake 61, person 1"):
        CocoSubsetDataset(path, tmp_path)


def test_an_older_seglibs_numbering_is_refused_with_how_to_rebuild(tmp_path):
    old = [
        {"id": 1, "name": "cake", "supercategory": "food", "coco_id": 61},
        {"id": 2, "name": "person", "supercategory": "person", "coco_id": 1},
    ]
    ann = {
        "id": 5,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": [[0, 0, 5, 0, 5, 5]],
    }
    path = write_split(tmp_path, [(1, "a.png", 10, 10)], [ann], categories=old)
    message = r"train\.json was written by an older seglib with categories numbered 1\.\.k.*python -m seglib subset"
    with pytest.raises(DatasetError, match=message):
        CocoSubsetDataset(path, tmp_path)
    with pytest.raises(DatasetError, match=message):
        split_categories(tmp_path)
    # a coco_id equal to the id is the same numbering: such a split reads as it is
    write_split(tmp_path, [(1, "a.png", 10, 10)], [], categories=[dict(old[1], id=1)])
    assert CocoSubsetDataset(path, tmp_path).category_labels == {1: 1}


def test_repeated_category_ids_are_refused(tmp_path):
    path = write_split(tmp_path, [], [], categories=[CATEGORIES[0], dict(CATEGORIES[1], id=CAKE)])
    with pytest.raises(DatasetError, match="category id 61 appears twice"):
        CocoSubsetDataset(path, tmp_path)


def _good_rle_counts() -> str:
    mask = np.zeros((10, 10), np.uint8)
    mask[2:7, 3:9] = 1
    return rle_str(mask)["counts"]


@pytest.mark.parametrize(
    "segmentation",
    [
        {"counts": "x", "size": [5, 5]},  # wrong size
        {"counts": "x", "size": [10, 10]},  # runs do not cover the image
        {"counts": _good_rle_counts()[:-1] + "k", "size": [10, 10]},  # ends mid-number
        {"counts": [10, 200], "size": [10, 10]},  # uncompressed, too long
        [[0, 0, 5, 0, 5, 5, 1]],  # odd polygon
        "polygon",
    ],
)
def test_bad_segmentation_names_the_annotation(tmp_path, segmentation):
    ann = {"id": 77, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": segmentation}
    path = write_split(tmp_path, [(1, "a.png", 10, 10)], [ann])
    with pytest.raises(DatasetError, match="annotation 77"):
        CocoSubsetDataset(path, tmp_path)


def test_annotation_of_unknown_image_is_named(tmp_path):
    ann = {
        "id": 78,
        "image_id": 999,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": [[0, 0, 5, 0, 5, 5]],
    }
    path = write_split(tmp_path, [(1, "a.png", 10, 10)], [ann])
    with pytest.raises(DatasetError, match="annotation 78.*999"):
        CocoSubsetDataset(path, tmp_path)


def test_malformed_and_missing_json_are_named(tmp_path):
    path = write_split(tmp_path, [(1, "a.png", 10, 10)], [])
    path.write_text(path.read_text()[:-20])
    with pytest.raises(DatasetError, match="train.json"):
        CocoSubsetDataset(path, tmp_path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DatasetError, match="list.json"):
        CocoSubsetDataset(tmp_path / "list.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        CocoSubsetDataset(tmp_path / "absent.json", tmp_path)


def test_open_split_says_how_to_make_a_missing_split(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val\.json.*python -m seglib subset"):
        open_split(tmp_path, "val")
    write_split(tmp_path, [(1, "a.png", 10, 10)], [])
    (tmp_path / "images").mkdir()
    assert len(open_split(tmp_path, "train")) == 1


def _with_orientation(array: np.ndarray, path: Path, orientation: int) -> None:
    """Save ``array`` as stored pixels, tagged with an EXIF Orientation that viewers apply."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_tagged_jpegs_are_read_in_the_stored_frame(tmp_path, orientation):
    """COCO annotates the stored pixels, so the masks must land on the object as stored;
    applying the tag (rotating 180 or 90 degrees) would move or reshape the image under them."""
    h, w = 30, 40
    stored = np.zeros((h, w, 3), np.uint8)
    stored[..., 2] = 200  # blue background
    stored[4:14, 6:18] = (230, 20, 20)  # the red object, top left as stored
    (tmp_path / "images").mkdir()
    _with_orientation(stored, tmp_path / "images" / "r.jpg", orientation)
    polygon = [[6, 4, 18, 4, 18, 14, 6, 14]]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": polygon}
    path = write_split(tmp_path, [(1, "r.jpg", h, w)], [ann])
    image, target = CocoSubsetDataset(path, tmp_path / "images")[0]
    assert image.shape == (3, h, w)
    mask = target["masks"][0].bool()
    assert target["boxes"].tolist() == [[6.0, 4.0, 18.0, 14.0]]
    inside, outside = image[:, mask].float().mean(1), image[:, ~mask].float().mean(1)
    assert inside[0] > 180 and inside[2] < 60, inside  # red under the mask
    assert outside[2] > 150 and outside[0] < 60, outside  # blue elsewhere
    # photos without annotations (``seglib predict``) are still shown upright
    upright = load_rgb(tmp_path / "images" / "r.jpg")
    assert upright.shape == ((w, h, 3) if orientation == 6 else (h, w, 3))
    if orientation == 3:  # turned 180 degrees: the object is now bottom right
        assert upright[-5, -8, 0] > 180 and upright[5, 8, 2] > 150


def test_json_size_must_be_the_stored_size(tmp_path):
    (tmp_path / "images").mkdir()
    _with_orientation(_quadrants(30, 40), tmp_path / "images" / "r.jpg", 6)
    path = write_split(tmp_path, [(1, "r.jpg", 30, 40), (2, "r.jpg", 40, 30)], [])
    ds = CocoSubsetDataset(path, tmp_path / "images")
    assert ds[0][0].shape == (3, 30, 40)
    with pytest.raises(DatasetError, match=r"r\.jpg is 40x30 px but the json says 30x40"):
        ds[1]


def test_split_categories_in_label_order(tmp_path):
    # the list's order is the label order, whatever the ids: never sorted by id
    path = write_split(tmp_path, [], [], categories=CATEGORIES[::-1])
    assert [c["name"] for c in split_categories(path.parent)] == ["person", "cake"]
    assert CocoSubsetDataset(path, tmp_path).category_labels == {PERSON: 1, CAKE: 2}
    write_split(tmp_path, [], [], categories=[dict(CATEGORIES[0], id="61")])
    with pytest.raises(DatasetError, match="integer 'id'"):
        split_categories(tmp_path)
    with pytest.raises(FileNotFoundError):
        split_categories(tmp_path, "val")


# --- synthetic and real data --------------------------------------------------------------
def _check_target(image, target, k, min_box_size):
    h, w = image.shape[1:]
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, h, w)
    assert (
        target["labels"].dtype == torch.int64
        and ((target["labels"] >= 1) & (target["labels"] <= k)).all()
    )
    boxes = target["boxes"].numpy()
    np.testing.assert_array_equal(boxes, boxes_from_masks(target["masks"].numpy()))
    assert (
        (boxes[:, 2] - boxes[:, 0] >= min_box_size) & (boxes[:, 3] - boxes[:, 1] >= min_box_size)
    ).all()
    assert ((boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)).all()
    assert set(target["masks"].unique().tolist()) <= {0, 1}
    assert not target["iscrowd"].any()


def test_every_synthetic_image_loads_in_its_json_frame(synthetic_coco, tmp_path):
    """The synthetic root holds a grayscale, a CMYK and an EXIF-tagged JPEG; all load in the
    stored frame that the json describes."""
    data = json.loads((synthetic_coco / "annotations" / "instances_train2017.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps(subset_of(data, ["cake", "car", "dog"])))
    ds = CocoSubsetDataset(tmp_path / "train.json", synthetic_coco / "train2017")
    modes, orientations = set(), set()
    for i, img in enumerate(data["images"]):
        with Image.open(synthetic_coco / "train2017" / img["file_name"]) as raw:
            modes.add(raw.mode)
            orientations.add(raw.getexif().get(0x0112, 1))
        assert ds.load_image(i).shape == (img["height"], img["width"], 3), img["file_name"]
    assert {"L", "CMYK"} <= modes and 6 in orientations


def test_synthetic_split_with_train_augmentation(synthetic_coco, tmp_path):
    instances = json.loads(
        (synthetic_coco / "annotations" / "instances_train2017.json").read_text()
    )
    names = ["cake", "car", "dog", "person"]
    (tmp_path / "train.json").write_text(json.dumps(subset_of(instances, names)))
    ds = CocoSubsetDataset(
        tmp_path / "train.json", synthetic_coco / "train2017", transforms=train_transforms()
    )
    for draw in range(2 * len(ds)):
        torch.manual_seed(draw)
        image, target = ds[draw % len(ds)]
        _check_target(image, target, k=4, min_box_size=2.0)


def test_synthetic_subset_opens(synthetic_subset):
    for split in ("train", "val", "test"):
        ds = open_split(
            synthetic_subset, split, transforms=train_transforms() if split == "train" else None
        )
        assert len(ds) > 0 and ds.class_names == ["cake", "car", "dog", "person"]
        for i in range(len(ds)):
            _check_target(*ds[i], k=4, min_box_size=2.0)


@pytest.fixture(scope="module")
def tiny_cake_person(coco_tiny, tmp_path_factory):
    """A ``cake person`` split of coco-tiny in the subset format; images read in place."""
    instances = json.loads((coco_tiny / "instances_train2017_tiny.json").read_text())
    out = tmp_path_factory.mktemp("tiny-subset") / "train.json"
    out.write_text(json.dumps(subset_of(instances, ["cake", "person"])))
    return out


@pytest.mark.coco_tiny
def test_coco_tiny_masks_equal_pycocotools_ann_to_mask(coco_tiny, tiny_cake_person):
    original = COCO(str(coco_tiny / "instances_train2017_tiny.json"))
    cake, person = original.getCatIds(catNms=["cake"])[0], original.getCatIds(catNms=["person"])[0]
    ds = CocoSubsetDataset(tiny_cake_person, coco_tiny / "train2017", min_box_size=0)
    compared = 0
    for i, img_id in enumerate(ds.ids):
        anns = [
            a
            for a in original.imgToAnns[img_id]
            if a["category_id"] in (cake, person) and not a["iscrowd"]
        ]
        image, target = ds[i]
        assert image.shape[1:] == (original.imgs[img_id]["height"], original.imgs[img_id]["width"])
        assert len(target["masks"]) == len(anns), f"image {img_id}"
        for ann, mask, label in zip(
            anns, target["masks"].numpy(), target["labels"].tolist(), strict=True
        ):
            np.testing.assert_array_equal(
                mask, original.annToMask(ann), err_msg=f"annotation {ann['id']}"
            )
            assert label == (1 if ann["category_id"] == cake else 2)  # the order cake, person
            compared += 1
    assert compared == 33  # 1 cake + 32 non-crowd persons


@pytest.mark.coco_tiny
def test_coco_tiny_crowd_is_ground_truth_but_never_a_target(coco_tiny, tiny_cake_person):
    ds = CocoSubsetDataset(tiny_cake_person, coco_tiny / "train2017", min_box_size=0)
    crowd = [a for a in ds.coco.dataset["annotations"] if a["iscrowd"]]
    assert [(a["image_id"], a["category_id"]) for a in crowd] == [(184613, PERSON)]
    crowd_mask = ds.coco.annToMask(crowd[0])
    _, target = ds[ds.ids.index(184613)]
    non_crowd = [a for a in ds.coco.imgToAnns[184613] if not a["iscrowd"]]
    assert len(target["masks"]) == len(non_crowd)
    assert not any((m.numpy() == crowd_mask).all() for m in target["masks"])


@pytest.mark.coco_tiny
def test_coco_tiny_with_train_augmentation(coco_tiny, tiny_cake_person):
    ds = CocoSubsetDataset(tiny_cake_person, coco_tiny / "train2017", transforms=train_transforms())
    for draw in range(len(ds)):
        torch.manual_seed(draw)
        _check_target(*ds[draw], k=2, min_box_size=2.0)
