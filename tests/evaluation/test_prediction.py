"""Prediction and evaluation with stand-in detectors whose outputs are known."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torch import nn

from seglib.app.predict_files import predict_images
from seglib.data.dataset import open_split
from seglib.evaluation.prediction import evaluate, predict

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
    # label 1 is the split's first category, cake; the file names it by its COCO id
    assert categories[0]["name"] == "cake"
    assert {r["category_id"] for r in results} == {61}


def test_write_results_gives_files_coco_ids_that_evaluate_like_the_list(tmp_path, synthetic_subset):
    from seglib.evaluation.coco_ap import evaluate_results
    from seglib.evaluation.coco_results import write_results

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
    coco_ids = {1: 61, 2: 3, 3: 18, 4: 1}  # cake, car, dog, person
    written = json.loads(path.read_text())
    assert {r["category_id"] for r in results} == {1, 2, 3, 4}
    assert [r["category_id"] for r in written] == [coco_ids[r["category_id"]] for r in results]
    # the file's category ids are the split json's own
    gt = {
        a["id"]: a for a in json.loads((synthetic_subset / "val.json").read_text())["annotations"]
    }
    assert {r["category_id"] for r in written} == {a["category_id"] for a in gt.values()}
    assert evaluate_results(dataset.coco, path) == evaluate_results(dataset.coco, results)


def test_masks_to_host_copies_only_each_mask_extent_and_matches_a_plain_threshold():
    from seglib.evaluation.coco_results import masks_to_host

    probs = torch.zeros(4, 1, 20, 30)
    probs[0, 0, 2:5, 3:9] = 0.9
    probs[0, 0, 5, 3:9] = 0.5  # not above 0.5: outside the mask
    probs[1, 0, 0:20, 29] = 0.7  # touches the right and bottom edges
    probs[2, 0, 10, 10] = 0.51  # one pixel
    # mask 3 stays empty
    copied = []
    real_cat = torch.cat

    def spy_cat(tensors, *args, **kwargs):
        out = real_cat(tensors, *args, **kwargs)
        copied.append(out.numel())
        return out

    torch.cat, restore = spy_cat, torch.cat
    try:
        masks = masks_to_host(probs)
    finally:
        torch.cat = restore
    expected = (probs[:, 0] > 0.5).to(torch.uint8).numpy()
    assert masks.dtype == np.uint8 and np.array_equal(masks, expected)
    assert copied[-1] == 3 * 6 + 20 * 1 + 1  # the crops, not 4 x 20 x 30 pixels
    assert masks_to_host(torch.zeros(0, 1, 5, 5)).shape == (0, 5, 5)


def test_predict_takes_uint8_images(synthetic_subset):
    dataset = open_split(synthetic_subset, "val")

    class Probe(nn.Module):
        def forward(self, images):
            assert all(img.dtype == torch.float32 and float(img.max()) <= 1.0 for img in images)
            h, w = images[0].shape[1:]
            return [
                {
                    "boxes": torch.zeros(0, 4),
                    "labels": torch.zeros(0, dtype=torch.int64),
                    "scores": torch.zeros(0),
                    "masks": torch.zeros(0, 1, h, w),
                }
                for _ in images
            ]

    image = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    pairs = [(image, {"image_id": torch.tensor(i)}) for i in dataset.ids[:3]]
    assert predict(Probe(), pairs, CPU) == []


DDP_EVAL_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from seglib.data.dataset import open_split
from seglib.evaluation.prediction import evaluate
sys.path.insert(0, sys.argv[3])
from stand_in import ImperfectDetector

dist.init_process_group("gloo")
dataset = open_split(sys.argv[1], "val")
model = ImperfectDetector(dataset)
metrics = evaluate(model, dataset, torch.device("cpu"), score_thresh=0.5)
with open(f"{sys.argv[2]}/rank{dist.get_rank()}.json", "w") as f:
    json.dump({"images": model.images_seen, "metrics": metrics}, f)
dist.destroy_process_group()
"""

STAND_IN = '''
import torch
from torch import nn


class ImperfectDetector(nn.Module):
    """Predictions from the ground truth of each image (found by its pixels), with one
    instance in three dropped, a false positive per image, and tied scores."""

    def __init__(self, dataset):
        super().__init__()
        self.truth = {}
        for i in range(len(dataset)):
            image, target = dataset[i]
            self.truth[float(image.float().sum())] = target
        self.images_seen = 0

    def forward(self, images):
        outputs = []
        for image in images:
            self.images_seen += 1
            t = self.truth[float((image * 255).round().sum())]
            keep = torch.arange(len(t["labels"])) % 3 != 2
            n, (h, w) = int(keep.sum()), image.shape[1:]
            fp_mask = torch.zeros(1, 1, h, w)
            fp_mask[..., : h // 4, : w // 4] = 1.0
            outputs.append({
                "boxes": torch.cat([t["boxes"][keep], torch.tensor([[0.0, 0.0, w / 4, h / 4]])]),
                "labels": torch.cat([t["labels"][keep], torch.tensor([1])]),
                "scores": torch.full((n + 1,), 0.7),
                "masks": torch.cat([t["masks"][keep][:, None].float(), fp_mask]),
            })
        return outputs
'''


@pytest.mark.slow
def test_evaluate_under_ddp_shards_the_images_and_equals_one_process(tmp_path, synthetic_subset):
    import os
    import subprocess
    import sys

    (tmp_path / "stand_in.py").write_text(STAND_IN)
    script = tmp_path / "ddp_eval.py"
    script.write_text(DDP_EVAL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*command, str(script), str(synthetic_subset), str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    sys.path.insert(0, str(tmp_path))
    try:
        from stand_in import ImperfectDetector
    finally:
        sys.path.remove(str(tmp_path))
    dataset = open_split(synthetic_subset, "val")
    single = evaluate(ImperfectDetector(dataset), dataset, CPU, score_thresh=0.5)
    n = len(dataset)
    assert [r["images"] for r in ranks] == [(n + 1) // 2, n // 2]  # each rank its share
    assert 0.2 < single["segm"]["AP"] < 0.95  # imperfect: ties and misses matter
    for r in ranks:  # every rank gets rank 0's metrics
        assert json.dumps(r["metrics"], sort_keys=True) == json.dumps(
            json.loads(json.dumps(single)), sort_keys=True
        )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_to_host_on_the_gpu_matches_a_plain_threshold():
    from seglib.evaluation.coco_results import masks_to_host

    g = torch.Generator().manual_seed(0)
    probs = torch.zeros(50, 1, 120, 160)
    for i in range(49):  # mask 49 stays empty
        y, x = torch.randint(0, 100, (2,), generator=g).tolist()
        probs[i, 0, y : y + 20, x : x + 40] = torch.rand(20, 40, generator=g)
    expected = (probs[:, 0] > 0.5).to(torch.uint8).numpy()
    assert np.array_equal(masks_to_host(probs.cuda()), expected)


def test_post_processing_is_refused_for_mask2former_only():
    from seglib.evaluation.prediction import check_postprocess

    for arch in ("v1", "v2"):
        check_postprocess(arch, "matrix-nms", True)  # Mask R-CNN takes every variant
    check_postprocess("mask2former")  # its own output: nothing asked
    check_postprocess("mask2former", "nms", False)
    with pytest.raises(ValueError, match=r"--postprocess mask-nms cannot apply to a Mask2Former"):
        check_postprocess("mask2former", "mask-nms")
    with pytest.raises(ValueError, match=r"^--tta-hflip cannot.*no NMS to replace"):
        check_postprocess("mask2former", "nms", True)
    with pytest.raises(ValueError, match=r"soft-nms-linear and --tta-hflip"):
        check_postprocess("mask2former", "soft-nms-linear", True)


@pytest.mark.parametrize("cpu_amp, conv_dtype", [("bf16", torch.bfloat16), ("off", torch.float32)])
def test_predict_and_predict_images_run_the_convolutions_at_cpu_amp(
    cpu_amp, conv_dtype, tmp_path, synthetic_subset
):
    """A real (random) Mask R-CNN: the mask head's convolutions run in the asked precision,
    the results keep fp32 scores either way, and the model is left as it was."""
    from seglib.core.config import TrainConfig
    from seglib.models.builder import build_model

    cfg = TrainConfig.smoke(box_score_thresh=0.0)
    torch.manual_seed(0)
    model = build_model(cfg.num_classes, cfg.weights, cfg.arch, cfg)
    seen = []
    model.roi_heads.mask_head[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    dataset = open_split(synthetic_subset, "val")
    results = predict(model, torch.utils.data.Subset(dataset, [0, 1]), CPU, cpu_amp=cpu_amp)
    assert results and set(seen) == {conv_dtype}
    scores = torch.tensor([r["score"] for r in results])
    assert not torch.equal(scores, scores.bfloat16().float())  # not rounded to bf16
    assert "forward" not in model.backbone.__dict__
    files = [synthetic_subset / "images" / dataset.coco.imgs[dataset.ids[0]]["file_name"]]
    seen.clear()
    written = predict_images(
        model,
        files,
        tmp_path,
        CPU,
        categories=dataset.categories,
        score_thresh=0.0,
        cpu_amp=cpu_amp,
    )
    assert written["num_predictions"] > 0 and set(seen) == {conv_dtype}
