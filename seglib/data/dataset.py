"""One split of a category subset as Mask R-CNN training data.

``CocoSubsetDataset`` reads a split json written by ``seglib.data.subset.build_subset`` (COCO's
category ids) and yields torchvision's Mask R-CNN ``(image, target)`` pairs. Every mask
(polygons, compressed or uncompressed RLE) is rasterised once, at construction, and kept as
row-major run lengths; ``__getitem__`` rebuilds all masks of an image with one ``np.repeat``.
That skips, on every epoch, both the polygon rasterisation and the column-major to row-major
transpose that decoding COCO's (column-major) RLE needs: see bench/bench_data.py.

Images are read in their stored frame, the one COCO annotates, by ``seglib.data.images.decode_image``
(an EXIF Orientation tag is not applied; ``load_rgb``, for photos without annotations, applies
it). They stay uint8 [3, H, W] through augmentation and across DataLoader workers, a quarter of
the bytes of float; ``seglib.evaluation.prediction.images_to_device`` makes them float 0..1 on the device.

What it guarantees, whatever the json holds:
- images are RGB uint8 (grayscale, CMYK, palette, alpha and 16-bit files included);
- crowd instances are never targets (they stay in ``.coco`` as evaluation ignore regions);
- boxes come from the (augmented) masks and instances below ``min_box_size`` are dropped, so
  no degenerate box reaches the model;
- an image with no instance left gets empty targets of the right shapes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from seglib.core.categories import CategoryError, category_labels
from seglib.data.annotations import AnnotationError, load_instances
from seglib.data.copy_paste import CopyPaste, paste_generator
from seglib.data.images import ImageError, decode_image
from seglib.data.transforms import boxes_from_masks

__all__ = [
    "CocoSubsetDataset",
    "DatasetError",
    "collate_fn",
    "open_split",
    "split_categories",
]

#: ``t(image=, masks=, labels=, boxes=, seed=) -> (image, masks, labels, boxes)``, the output
#: boxes tight around the output masks, like ``seglib.data.transforms.TrainTransform``.
Transform = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


class DatasetError(ValueError):
    """A split json, annotation or image that cannot be used; the message names it."""


# --- targets ---------------------------------------------------------------------------------
def _mask_areas(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Pixel counts of uint8 [N, H, W] 0/1 masks as float32 [N], each counted only inside
    its XYXY box (float32 [N, 4], integral, from ``boxes_from_masks``)."""
    # OpenCV's vectorised count is several times faster than any numpy sum over uint8.
    return np.array(
        [
            cv2.countNonZero(m[y0:y1, x0:x1])
            for m, (x0, y0, x1, y1) in zip(masks, boxes.astype(int), strict=True)
        ],
        dtype=np.float32,
    )


# --- annotations ----------------------------------------------------------------------------
def _read_split_json(path: Path) -> dict[str, Any]:
    """The split json, checked by ``seglib.data.annotations.validate_instances``."""
    try:
        return load_instances(path, "split json", "`python -m seglib subset` (re)makes it")
    except AnnotationError as e:
        raise DatasetError(str(e)) from e


def _counts_from_string(counts: bytes) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' rleFrString, in Python).

    Decoded here rather than by pycocotools so a malformed string raises instead of making
    its C decoder write past the mask.
    """
    runs: list[int] = []
    p = 0
    while p < len(counts):
        x = k = 0
        more = True
        while more:
            c = counts[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _row_major_runs(
    counts: list[int], h: int, w: int, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(values uint8, run lengths int32, tight box float32 [4]) of a mask read row by row,
    from COCO's column-major run lengths (which start with a run of zeros); None for an
    empty mask."""
    runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any() or runs.sum() != h * w:
        raise DatasetError(
            f"{where}: RLE run lengths do not cover the {h}x{w} image; the annotation is corrupt"
        )
    flat = np.repeat((np.arange(len(runs)) % 2).astype(np.uint8), runs).reshape(w, h).T.ravel()
    if not flat.any():
        return None
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    lengths = np.diff(np.concatenate([[0], starts, [flat.size]])).astype(np.int32)
    values = flat[np.concatenate([[0], starts])]
    return values, lengths, boxes_from_masks(flat.reshape(1, h, w))[0]


def _pack(items: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's ``(label, values, runs, box)`` instances as (labels int64 [N], values and
    runs of all masks concatenated, boxes float32 [N, 4])."""
    if not items:
        return (
            np.zeros(0, np.int64),
            np.zeros(0, np.uint8),
            np.zeros(0, np.int32),
            np.zeros((0, 4), np.float32),
        )
    labels, values, runs, boxes = zip(*items, strict=True)
    return (
        np.array(labels, np.int64),
        np.concatenate(values),
        np.concatenate(runs),
        np.array(boxes, np.float32),
    )


def _column_major_counts(segm: Any, h: int, w: int, where: str) -> list[int] | None:
    """COCO run lengths (column-major, starting with zeros) of one annotation's segmentation
    (checked by ``validate_instances``: polygons with an even number of coordinates, or
    uncompressed or compressed RLE of the image's size); None when there is nothing to draw.

    Polygons with fewer than 3 points are skipped: pycocotools would read a 4-number polygon
    as a box.
    """
    try:
        if isinstance(segm, list):
            polygons = [p for p in segm if len(p) >= 6]
            if not polygons:
                return None
            return _counts_from_string(
                mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))["counts"]
            )
        counts = segm["counts"]
        if isinstance(counts, list):
            return [int(c) for c in counts]
        return _counts_from_string(counts.encode("ascii") if isinstance(counts, str) else counts)
    except Exception as e:  # pycocotools raises bare TypeError/ValueError; a cut string IndexError
        raise DatasetError(f"{where}: segmentation cannot be decoded ({e!r})") from e


def _subset_categories(data: dict[str, Any], src: str) -> tuple[list[dict], dict[int, int]]:
    """The json's categories in label order and their ``category_labels``."""
    categories = [dict(c) for c in data["categories"]]
    try:
        return categories, category_labels(categories, source=src)
    except CategoryError as e:
        raise DatasetError(str(e)) from e


class CocoSubsetDataset(torch.utils.data.Dataset):
    """Mask R-CNN training pairs from one split json (COCO's category ids).

    ``dataset[i]`` is ``(image, target)``: image uint8 [3, H, W] RGB; target with
    boxes float32 [N, 4] XYXY pixels (from the masks), labels int64 [N] in 1..k (the
    position of the annotation's category in the json's list: ``category_labels``),
    masks uint8 [N, H, W] (0/1), image_id int64 scalar, area float32 [N] (mask pixels),
    iscrowd int64 [N] (all 0). H, W are after ``transforms``.

    With ``copy_paste`` (``seglib.data.copy_paste.CopyPaste``), objects of another image of
    the split that has instances are pasted onto the image before ``transforms`` run; whether,
    from which image and how are drawn from ``paste_generator(seed)``, so an ``(i, seed)`` key
    gives the same sample every time (a bare ``i`` draws the seed from torch's generator).

    Attributes:
        coco: pycocotools ``COCO`` of the whole split json, crowd instances included (ground
            truth, COCO's category ids).
        ids: image ids, in the order of the json.
        categories: category dicts (``id`` = COCO's id, ``name``, ...) in label order.
        category_labels: ``{category id: label 1..k}`` (``seglib.core.categories.category_labels``).
        class_names: category names; ``class_names[label - 1]`` names a label.

    Raises (at construction):
        FileNotFoundError: the split json does not exist.
        DatasetError: malformed json, categories in an older seglib's numbering (1..k with
            ``coco_id``), an annotation of an unknown category or image, an undecodable
            segmentation, or a file_name escaping ``image_dir``.
    """

    def __init__(
        self,
        split_json: str | Path,
        image_dir: str | Path,
        transforms: Transform | None = None,
        min_box_size: float = 2.0,
        copy_paste: CopyPaste | None = None,
    ) -> None:
        if not min_box_size >= 0:
            raise ValueError(f"min_box_size must be >= 0 px, got {min_box_size}")
        self.split_json = Path(split_json)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.min_box_size = float(min_box_size)
        self.copy_paste = copy_paste
        data = _read_split_json(self.split_json)
        src = str(self.split_json)

        self.categories, self.category_labels = _subset_categories(data, src)
        self.class_names = [str(c.get("name", c["id"])) for c in self.categories]

        # Every id, size, file_name (a bare name, so inside image_dir), category and
        # segmentation was checked by _read_split_json.
        self._images = [
            {
                "id": img["id"],
                "height": img["height"],
                "width": img["width"],
                "path": self.image_dir / img["file_name"],
            }
            for img in data["images"]
        ]
        index = {img["id"]: i for i, img in enumerate(self._images)}
        self.ids = [img["id"] for img in self._images]

        # Per image: label, row-major runs and box of every non-crowd instance that covers
        # something.
        per_image: list[list[tuple]] = [[] for _ in self._images]
        for ann in data["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            where = f"{src}: annotation {ann['id']}"
            i = index[ann["image_id"]]
            h, w = self._images[i]["height"], self._images[i]["width"]
            counts = _column_major_counts(ann["segmentation"], h, w, where)
            if counts is None:
                continue
            runs = _row_major_runs(counts, h, w, where)
            if runs is not None:
                per_image[i].append((self.category_labels[ann["category_id"]], *runs))
        # One concatenation per image, so all its masks come back from a single np.repeat.
        self._instances = [_pack(items) for items in per_image]
        # Copy-Paste's sources: the images with an instance.
        self._with_instances = [i for i, items in enumerate(per_image) if items]

        self.coco = COCO()
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.dataset = data
            self.coco.createIndex()

    def __len__(self) -> int:
        return len(self._images)

    def get_height_and_width(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i`` from the json, without decoding it (before transforms)."""
        img = self._images[i]
        return img["height"], img["width"]

    def read_image(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 [3, H, W] in its stored frame, which the json annotates.

        Raises:
            FileNotFoundError / DatasetError: missing or undecodable file, or one whose stored
                size is not the json's width and height (names both).
        """
        img = self._images[i]
        try:
            image = decode_image(img["path"])
        except ImageError as e:
            raise DatasetError(f"{e} (image {img['id']} of {self.split_json})") from e
        if image.shape[1:] != (img["height"], img["width"]):
            h, w = image.shape[1:]
            raise DatasetError(
                f"image {img['path']} is {w}x{h} px but the json says {img['width']}x{img['height']} "
                f"for image {img['id']}; re-fetch it with `python -m seglib subset`"
            )
        return image

    def load_image(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 [H, W, 3] (a view of ``read_image``), in the json's frame."""
        return self.read_image(i).permute(1, 2, 0).numpy()

    def load_instances(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-crowd instances of image ``i`` (json frame): masks uint8 [N, H, W], labels
        int64 [N] and the masks' tight boxes float32 [N, 4] XYXY (kept from construction)."""
        img = self._images[i]
        labels, values, runs, boxes = self._instances[i]
        masks = np.repeat(values, runs).reshape(len(labels), img["height"], img["width"])
        return masks, labels.copy(), boxes.copy()

    def __getitem__(
        self, key: int | tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # ``(i, seed)`` (from seglib.data.loaders.GroupedBatchSampler) seeds the augmentation of
        # image i, so it depends on no worker's RNG state.
        i, seed = key if isinstance(key, tuple) else (key, None)
        image = self.read_image(i)
        masks, labels, boxes = self.load_instances(i)
        hwc = image.permute(1, 2, 0).numpy()
        if self.copy_paste is not None and self.copy_paste.prob > 0:
            hwc, masks, labels, boxes = self._paste(i, seed, hwc, masks, labels, boxes)
        if self.transforms is not None:
            extra = {} if seed is None else {"seed": seed}
            hwc, masks, labels, boxes = self.transforms(
                image=hwc, masks=masks, labels=labels, boxes=boxes, **extra
            )
        image = torch.from_numpy(hwc).permute(2, 0, 1)  # channels-last, like decode_image
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep = (
            (widths > 0)
            & (heights > 0)
            & (widths >= self.min_box_size)
            & (heights >= self.min_box_size)
        )
        if not keep.all():
            masks, boxes, labels = masks[keep], boxes[keep], np.asarray(labels)[keep]
        masks = np.ascontiguousarray(masks, dtype=np.uint8)
        n = len(masks)
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
            "masks": torch.from_numpy(masks),
            "image_id": torch.tensor(self._images[i]["id"], dtype=torch.int64),
            "area": torch.from_numpy(_mask_areas(masks, boxes)),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
        }
        return image, target

    def _paste(
        self,
        i: int,
        seed: int | None,
        image: np.ndarray,
        masks: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Image ``i``'s arrays with ``copy_paste`` applied, when its draw says so."""
        if seed is None:
            seed = int(torch.randint(0, 2**32, (1,)).item())
        rng = paste_generator(seed)
        j = self.copy_paste.pick_source(rng, i, self._with_instances)
        if j is None:
            return image, masks, labels, boxes
        out = self.copy_paste.paste(
            rng, image, masks, labels, boxes, self.load_image(j), *self.load_instances(j)
        )
        return out.image, out.masks, out.labels, out.boxes

    def __repr__(self) -> str:
        return (
            f"CocoSubsetDataset({self.split_json}, {len(self)} images, classes={self.class_names}, "
            f"transforms={self.transforms!r}, min_box_size={self.min_box_size}, "
            f"copy_paste={self.copy_paste!r})"
        )


def open_split(
    data_dir: str | Path,
    split: str,
    transforms: Transform | None = None,
    min_box_size: float = 2.0,
    copy_paste: CopyPaste | None = None,
) -> CocoSubsetDataset:
    """The dataset over ``data_dir/{split}.json`` with images in ``data_dir/images``.

    Raises:
        FileNotFoundError: the split json or the images folder is missing (says which command makes it).
    """
    data_dir = Path(data_dir)
    split_json = data_dir / f"{split}.json"
    image_dir = data_dir / "images"
    for path in (split_json, image_dir):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist: `python -m seglib subset --coco-root DIR --out {data_dir}` makes it"
            )
    return CocoSubsetDataset(
        split_json,
        image_dir,
        transforms=transforms,
        min_box_size=min_box_size,
        copy_paste=copy_paste,
    )


def split_categories(data_dir: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """The categories of ``data_dir/{split}.json`` in label order (``id`` = COCO's id,
    ``name``, ...): ``[c["name"] for c in ...]`` gives the class names in label order.

    Raises:
        FileNotFoundError: the split json is missing.
        DatasetError: it is not valid JSON, or it numbers its categories as an older seglib did.
    """
    path = Path(data_dir) / f"{split}.json"
    return _subset_categories(_read_split_json(path), str(path))[0]


def collate_fn(batch: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """``[(image, target), ...]`` -> ``([images], [targets])``; module-level so workers can pickle it."""
    return [item[0] for item in batch], [item[1] for item in batch]
