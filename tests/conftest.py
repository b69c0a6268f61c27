"""Shared fixtures: a synthetic COCO root and subset built once per session, and coco-tiny."""

from __future__ import annotations

from pathlib import Path

import pytest

COCO_TINY = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "coco-tiny"


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory) -> Path:
    """A synthetic COCO 2017 root: 24 images per split, 128 px, seed 0."""
    from seglib.data.synthetic import make_synthetic_coco

    root = tmp_path_factory.mktemp("synthetic-coco")
    make_synthetic_coco(root, images_per_split=24, size=128, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_subset(synthetic_coco, tmp_path_factory) -> Path:
    """A four-category subset of ``synthetic_coco``: 12 train, 6 val, 4 test images."""
    from seglib.data.subset import build_subset

    out = tmp_path_factory.mktemp("subset")
    build_subset(synthetic_coco, out, num_train=12, num_val=6, num_test=4, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def coco_tiny() -> Path:
    """The read-only real COCO excerpt beside the checkout; skips when it is absent."""
    if not (COCO_TINY / "instances_train2017_tiny.json").is_file():
        pytest.skip(
            f"real-data fixture not found at {COCO_TINY} (it ships in ../shared, outside the repo)"
        )
    return COCO_TINY


@pytest.fixture(scope="session")
def gt_results():
    """A function ``(coco, anns=None, *, score=0.9, category_id=None) -> list``: in-memory
    COCO results (as ``prediction.predict`` returns them: ``category_id`` is the label 1..k, the
    position of the annotation's category in ``coco``'s list) equal to the ground truth of
    ``anns`` (default: every non-crowd annotation of ``coco``), one score for all, masks as
    RLE; ``category_id`` relabels them all."""
    import numpy as np
    import pycocotools.mask as mask_utils

    def make(coco, anns=None, *, score=0.9, category_id=None):
        if anns is None:
            anns = coco.loadAnns(coco.getAnnIds(iscrowd=False))
        label = {c["id"]: i for i, c in enumerate(coco.dataset["categories"], start=1)}
        results = []
        for ann in anns:
            rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
            results.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": category_id or label[ann["category_id"]],
                    "bbox": ann["bbox"],
                    "score": score,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                }
            )
        return results

    return make


@pytest.fixture(scope="session")
def oracle_model():
    """A function ``(dataset, low_label=None) -> nn.Module``: a stand-in detector that returns
    each image's ground truth at score 0.9 (0.3 for ``low_label``), knowing an image by its
    pixels, so a warm-up pass and a timed pass get the same answers."""
    import torch

    class Oracle(torch.nn.Module):
        def __init__(self, dataset, low_label):
            super().__init__()
            self.known = []
            for i in range(len(dataset)):
                image, t = dataset[i]
                output = {
                    "boxes": t["boxes"],
                    "labels": t["labels"],
                    "scores": torch.where(t["labels"] == (low_label or -1), 0.3, 0.9),
                    "masks": t["masks"][:, None].float(),
                }
                self.known.append(
                    (image.float() / 255 if image.dtype == torch.uint8 else image, output)
                )

        def forward(self, images):
            return [next(out for img, out in self.known if torch.equal(img, x)) for x in images]

    return lambda dataset, low_label=None: Oracle(dataset, low_label)
