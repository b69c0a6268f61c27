"""Prediction and evaluation with stand-in detectors whose outputs are known."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from seglib.dataset import open_split
from seglib.inference import evaluate, predict, predict_images

CPU = torch.device("cpu")


class _Echo(nn.Module):
    """Returns given outputs in order, one per image (a stand-in detector)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs, self.i = list(outputs), 0

    def forward(self, images):
        out = self.outputs[self.i : self.i + len(images)]
        self.i += len(images)
        return out


def test_predict_output_format(synthetic_subset):
    dataset = open_split(synthetic_subset, "val")
    probs = torch.zeros(2, 1, *dataset[0][0].shape[1:])
    probs[0, 0, 2:6, 3:9] = 0.6
    probs[0, 0, 6:8, 3:9] = 0.4  # below 0.5: not part of the mask
    probs[1, 0, 0:2, 0:2] = 0.9
    first = {
        "boxes": torch.tensor([[3.0, 2.0, 9.0, 6.0], [0.0, 0.0, 2.0, 2.0]]),
        "labels": torch.tensor([2, 4]),
        "scores": torch.tensor([0.8, 0.1]),
        "masks": probs,
    }
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
        "masks": torch.zeros(0, 1, 4, 4),
    }
    outputs = [first] + [empty] * (len(dataset) - 1)
    results = predict(_Echo(outputs), dataset, CPU, score_thresh=0.5)
    assert len(results) == 1
    (r,) = results
    assert type(r["image_id"]) is int and r["image_id"] == dataset.ids[0]
    assert type(r["category_id"]) is int and r["category_id"] == 2
    assert r["bbox"] == [3.0, 2.0, 6.0, 4.0] and r["score"] == pytest.approx(0.8)
    assert isinstance(r["segmentation"]["counts"], str)
    decoded = mask_utils.decode(
        {**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}
    )
    expected = np.zeros(probs.shape[2:], dtype=np.uint8)
    expected[2:6, 3:9] = 1
    assert np.array_equal(decoded, expected)
    json.dumps(results)  # plain JSON types only
    assert len(predict(_Echo(outputs), dataset, CPU)) == 2  # score_thresh 0 keeps all


def test_evaluate_perfect_predictions(synthetic_subset):
    dataset = open_split(synthetic_subset, "val", min_box_size=0)
    outputs = []
    for i in range(len(dataset)):
        t = dataset[i][1]
        n = len(t["labels"])
        outputs.append(
            {
                "boxes": t["boxes"],
                "labels": t["labels"],
                "scores": torch.full((n,), 0.9),
                "masks": t["masks"][:, None].float(),
            }
        )
    metrics = evaluate(_Echo(outputs), dataset, CPU, score_thresh=0.5)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    # mask-derived boxes differ from the polygon-derived COCO boxes by a fraction of a pixel
    assert metrics["bbox"]["AP"] > 0.95
    assert metrics["best_match_iou"] == pytest.approx(1.0)
    assert metrics["num_images"] == len(dataset)


def test_predict_images_writes_results_and_overlays(tmp_path, synthetic_subset):
    pytest.importorskip("seglib.viz")
    dataset = open_split(synthetic_subset, "val")
    files = [
        synthetic_subset / "images" / dataset.coco.imgs[i]["file_name"] for i in dataset.ids[:2]
    ]
    h, w = dataset.get_height_and_width(0)
    masks = torch.zeros(1, 1, h, w)
    masks[0, 0, 4:20, 4:20] = 1.0
    one = {
        "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.9]),
        "masks": masks,
    }
    categories = json.loads((synthetic_subset / "val.json").read_text())["categories"]
    written = predict_images(
        _Echo([one, one]), files, tmp_path / "pred", CPU, categories=categories, score_thresh=0.5
    )
    assert written["num_images"] == 2 and written["num_predictions"] == 2
    results = json.loads(Path(written["results"]).read_text())
    numeric = all(f.stem.isdigit() for f in files)
    assert {r["image_id"] for r in results} == ({int(f.stem) for f in files} if numeric else {1, 2})
    assert all(p.suffix == ".png" and p.stat().st_size > 0 for p in map(Path, written["overlays"]))
    # label 1 is the split's first category; the file names it by its COCO id
    first = next(c for c in categories if c["id"] == 1)
    assert first["coco_id"] != 1 and {r["category_id"] for r in results} == {first["coco_id"]}


def test_write_results_gives_files_coco_ids_that_evaluate_like_the_list(tmp_path, synthetic_subset):
    from seglib.inference import write_results
    from seglib.metrics import evaluate_results

    dataset = open_split(synthetic_subset, "val", min_box_size=0)
    results = []
    for i in range(len(dataset)):
        target = dataset[i][1]
        for label, mask in zip(target["labels"].tolist(), target["masks"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.numpy()))
            rle["counts"] = rle["counts"].decode("ascii")
            score = 0.9 if label != 2 else 0.3
            results.append(
                {
                    "image_id": dataset.ids[i],
                    "category_id": label,
                    "score": score,
                    "segmentation": rle,
                }
            )
    path = write_results(tmp_path / "results.json", results, dataset.categories)
    coco_ids = {c["id"]: c["coco_id"] for c in dataset.categories}
    written = json.loads(path.read_text())
    assert [r["category_id"] for r in written] == [coco_ids[r["category_id"]] for r in results]
    assert evaluate_results(dataset.coco, path) == evaluate_results(dataset.coco, results)
