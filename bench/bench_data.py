"""Data-pipeline benchmark: seglib's dataset + train augmentation against the naive baseline.

    python bench/bench_data.py [--images N] [--size PX] [--iters N] [--work DIR] [--coco-tiny DIR]

It builds (or reuses, under ``--work``) a synthetic COCO at COCO resolution and a four-category
subset of it, then times full passes over the same training images, on one core (one process,
torch and OpenCV limited to one thread), for:

(a) ``seglib.data.dataset.CocoSubsetDataset`` + ``train_transforms()``: JPEGs decoded by
    ``torchvision.io.decode_jpeg``; each mask rasterised once at construction and kept as
    row-major run lengths, rebuilt per ``__getitem__`` with one ``np.repeat``, with its tight box
    kept from construction; the augmentation crops and flips the masks as one stacked array and
    finds the new boxes inside the moved old ones; the image stays uint8 (the float conversion
    happens on the device, after the copy);
(b) the torchvision tutorial's approach, as its detection references apply it to COCO: PIL
    decodes (``Image.open(...).convert("RGB")``, ``pil_to_tensor``), every ``__getitem__``
    rebuilds every mask from its polygons with pycocotools ``annToMask``, and the dataset hands
    out float images in 0..1; its boxes come from the decoded masks (the tutorial's
    ``masks_to_boxes``). The augmentation and the target building are seglib's own (a
    subclass overriding ``read_image``, ``load_instances`` and the final conversion).

The same repeats also time (a) with the optional augmentations of ``seglib.core.config``
(off in the seed recipe): scale jitter ("standard" 0.8-1.25 and "large", LSJ 0.1-2.0, after the
crop and flip) and Copy-Paste at probability 1 (every image gets objects of another pasted onto
it, ``CopyPaste()``'s defaults: up to 10 objects, scaled 0.1-2.0), so their cost per image sits
next to the baseline's, measured in the same run.

Both passes draw identical augmentations (same torch seed per pass) and the script checks that
they produce identical targets and, once (a)'s image is made float the way the device copy
does it, identical images; so only the data path differs. Each repeat times (a) and (b) back to
back, after a warm-up pass, in the process's CPU time (other load on a shared machine does not
count; cache and memory-bandwidth contention still do); the medians are reported. When the real coco-tiny excerpt is
present, the same comparison runs on its 16 real images (all 80 categories, real polygons).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from seglib.core.config import SCALE_JITTERS
from seglib.data.copy_paste import CopyPaste
from seglib.data.dataset import CocoSubsetDataset
from seglib.data.subset import build_subset
from seglib.data.synthetic import make_synthetic_coco
from seglib.data.transforms import boxes_from_masks, train_transforms

COCO_TINY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coco-tiny"


class NaiveTutorialDataset(CocoSubsetDataset):
    """The torchvision tutorial's data path on COCO: PIL decoding, every mask rebuilt from its
    annotation with pycocotools ``annToMask`` on every access, float images out of the dataset.
    The augmentation and the target building are seglib's own code."""

    def read_image(self, i: int) -> torch.Tensor:
        with Image.open(self._images[i]["path"]) as image:
            return pil_to_tensor(image.convert("RGB"))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        image, target = super().__getitem__(i)
        return image.float().div_(255.0), target

    def load_instances(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img_id = self.ids[i]
        h, w = self.get_height_and_width(i)
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, iscrowd=False))
        masks = np.zeros((len(anns), h, w), np.uint8)
        for j, ann in enumerate(anns):
            masks[j] = self.coco.annToMask(ann)
        # The tutorial's boxes: from each decoded mask (its masks_to_boxes).
        labels = np.array([self.category_labels[a["category_id"]] for a in anns], np.int64)
        return masks, labels, boxes_from_masks(masks)


def one_pass(ds, seed: int) -> float:
    """CPU seconds to read every item once, with the augmentation seeded by ``seed``."""
    torch.manual_seed(seed)
    start = time.process_time()
    for i in range(len(ds)):
        ds[i]
    return time.process_time() - start


def same_targets(ours, naive) -> bool:
    """Identical targets and images for the same seeds; ours made float as on the device."""
    torch.manual_seed(123)
    first = [ours[i] for i in range(len(ours))]
    torch.manual_seed(123)
    second = [naive[i] for i in range(len(naive))]
    for (ia, ta), (ib, tb) in zip(first, second, strict=True):
        if ia.dtype != torch.uint8 or not torch.equal(ia.float().div_(255.0), ib):
            return False
        if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
            return False
    return True


def augmented(split_json: Path, image_dir: Path) -> dict[str, CocoSubsetDataset]:
    """(a) with each optional augmentation on, by the label its row is reported under."""

    def ds(scale_jitter: str = "none", copy_paste: CopyPaste | None = None) -> CocoSubsetDataset:
        transforms = train_transforms(scale_range=SCALE_JITTERS[scale_jitter])
        return CocoSubsetDataset(split_json, image_dir, transforms, copy_paste=copy_paste)

    return {
        "(a) + scale jitter standard (0.8-1.25)": ds("standard"),
        "(a) + scale jitter large (LSJ, 0.1-2.0)": ds("large"),
        "(a) + Copy-Paste, prob 1": ds(copy_paste=CopyPaste(prob=1.0)),
        "(a) + Copy-Paste, prob 1, + LSJ": ds("large", CopyPaste(prob=1.0)),
    }


def compare(name: str, split_json: Path, image_dir: Path, iters: int) -> dict:
    ours = CocoSubsetDataset(split_json, image_dir, transforms=train_transforms())
    extra = augmented(split_json, image_dir)
    naive = NaiveTutorialDataset(split_json, image_dir, transforms=train_transforms())
    plain_naive = NaiveTutorialDataset(split_json, image_dir)
    data = ours.coco.dataset
    polys = [a for a in data["annotations"] if not a["iscrowd"]]
    vertices = [
        sum(len(p) for p in a["segmentation"]) / 2
        for a in polys
        if isinstance(a["segmentation"], list)
    ]
    sizes = [(img["width"], img["height"]) for img in data["images"]]
    identical = same_targets(ours, naive)

    # Stage costs, no augmentation: the two image decoders and the two ways of making masks.
    plain = CocoSubsetDataset(split_json, image_dir)
    steps = {
        "decode: decode_jpeg (ours)": plain.read_image,
        "decode: PIL (naive)": plain_naive.read_image,
        "masks: run lengths (ours)": plain.load_instances,
        "masks: annToMask (naive)": plain_naive.load_instances,
    }
    stage: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(max(1, iters)):
        for key, step in steps.items():
            start = time.process_time()
            for i in range(len(plain)):
                step(i)
            stage[key].append((time.process_time() - start) / len(plain) * 1000)
    pixels = statistics.mean(plain.read_image(i).numel() for i in range(len(plain)))

    one_pass(ours, 0)  # warm-up: page cache, allocator, lazy imports
    one_pass(naive, 0)
    ours_s, naive_s = [], []
    extra_s: dict[str, list[float]] = {key: [] for key in extra}
    for rep in range(iters):
        ours_s.append(one_pass(ours, rep + 1))
        naive_s.append(one_pass(naive, rep + 1))
        for key, ds in extra.items():
            extra_s[key].append(one_pass(ds, rep + 1))
    n = len(ours)
    ours_ips = sorted(n / s for s in ours_s)
    naive_ips = sorted(n / s for s in naive_s)
    return {
        "name": name,
        "images": n,
        "size": f"{statistics.median(w for w, _ in sizes):.0f}x{statistics.median(h for _, h in sizes):.0f} (median WxH)",
        "instances_per_image": len(polys) / n,
        "vertices_per_polygon_instance": statistics.mean(vertices) if vertices else 0.0,
        "identical_targets": identical,
        "stage_ms": {k: statistics.median(v) for k, v in stage.items()},
        "image_kib": {"uint8 (ours)": pixels / 1024, "float32 (naive)": 4 * pixels / 1024},
        "ours": ours_ips,
        "naive": naive_ips,
        "ratio": statistics.median(ours_ips) / statistics.median(naive_ips),
        "augmented": {key: sorted(n / s for s in times) for key, times in extra_s.items()},
    }


def prepare_synthetic(work: Path, images: int, size: int) -> tuple[Path, Path]:
    """A synthetic root and a subset of it under ``work``, rebuilt only when the settings change."""
    # "frame": synthetic roots before the stored-frame EXIF file must be rebuilt.
    stamp = {"images": images, "size": size, "seed": 0, "frame": "stored"}
    root, subset = work / "synthetic-coco", work / "subset"
    stamp_file = work / "stamp.json"
    if (
        stamp_file.is_file()
        and json.loads(stamp_file.read_text()) == stamp
        and (subset / "train.json").is_file()
    ):
        return subset / "train.json", subset / "images"
    summary = make_synthetic_coco(root, images_per_split=images, size=size, seed=0)
    qualifying = summary["splits"]["train"]["qualifying_images"]
    val_qualifying = summary["splits"]["val"]["qualifying_images"]
    build_subset(
        root,
        subset,
        num_train=qualifying,
        num_val=max(1, val_qualifying - 1),
        num_test=1,
        seed=0,
        progress=False,
    )
    stamp_file.write_text(json.dumps(stamp))
    return subset / "train.json", subset / "images"


def tiny_split(coco_tiny: Path) -> Path:
    """coco-tiny's annotations, all 80 categories: COCO's own file is already a split as seglib
    reads it (COCO's category ids, listed in label order); images are read in place."""
    return coco_tiny / "instances_train2017_tiny.json"


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return f"{model}; {cores} logical cores ({affinity} usable by this process)"


def report(result: dict) -> None:
    med = statistics.median
    print(f"\n## {result['name']}")
    print(
        f"images: {result['images']}, {result['size']}, {result['instances_per_image']:.1f} non-crowd "
        f"instances/image, {result['vertices_per_polygon_instance']:.0f} polygon vertices/instance"
    )
    print(
        f"identical targets and images from both pipelines (same seeds): {result['identical_targets']}"
    )
    print(
        "stage costs per image, no augmentation (median ms): "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["stage_ms"].items())
    )
    print(
        "image bytes per sample through DataLoader workers and pinned memory (KiB): "
        + ", ".join(f"{k} {v:.0f}" for k, v in result["image_kib"].items())
    )
    for key, label in (
        ("ours", "(a) seglib CocoSubsetDataset + train_transforms"),
        ("naive", "(b) tutorial: PIL, annToMask, float + same aug"),
    ):
        ips = result[key]
        print(
            f"{label}: {med(ips):7.1f} images/s per core  (min {ips[0]:.1f}, max {ips[-1]:.1f}, {len(ips)} repeats)"
        )
    print(f"ratio (a)/(b): {result['ratio']:.2f}x")
    base_ms = 1000 / med(result["ours"])
    for label, ips in result["augmented"].items():
        print(
            f"{label}: {med(ips):7.1f} images/s per core  (min {ips[0]:.1f}, max {ips[-1]:.1f}); "
            f"{1000 / med(ips) - base_ms:+.2f} ms/image over (a)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=48, help="synthetic images per split (default 48)"
    )
    parser.add_argument(
        "--size", type=int, default=640, help="synthetic image side in px (default 640, COCO's)"
    )
    parser.add_argument(
        "--iters", type=int, default=7, help="timed passes over the images (default 7)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/seglib-bench-data"),
        help="where the synthetic root and subset are built and reused",
    )
    parser.add_argument(
        "--coco-tiny",
        type=Path,
        default=COCO_TINY,
        help="real COCO excerpt to benchmark too, when present (default ../shared/fixtures/coco-tiny)",
    )
    args = parser.parse_args(argv)
    if args.images < 4 or args.size < 32 or args.iters < 1:
        parser.error("need --images >= 4, --size >= 32, --iters >= 1")

    # Per-core figures: one process, one thread for every library that would spread out.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    args.work.mkdir(parents=True, exist_ok=True)

    print("# seglib data-pipeline benchmark")
    print(f"machine: {machine()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"albumentations {version('albumentations')}, pycocotools {version('pycocotools')}, "
        f"numpy {np.__version__}, opencv {cv2.__version__}, pillow {Image.__version__}"
    )
    print(
        "one process, torch.set_num_threads(1), cv2.setNumThreads(1): images/s are per core, "
        "timed in this process's CPU time (time.process_time), so other load on a shared machine "
        "does not count"
    )

    split_json, image_dir = prepare_synthetic(args.work, args.images, args.size)
    report(
        compare(
            f"synthetic COCO, size {args.size}, four-category subset (train split)",
            split_json,
            image_dir,
            args.iters,
        )
    )
    if (args.coco_tiny / "instances_train2017_tiny.json").is_file():
        tiny = tiny_split(args.coco_tiny)
        report(
            compare(
                "coco-tiny: 16 real COCO train2017 images, all 80 categories",
                tiny,
                args.coco_tiny / "train2017",
                args.iters,
            )
        )
    else:
        print(f"\n(coco-tiny not found at {args.coco_tiny}; real-image comparison skipped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
