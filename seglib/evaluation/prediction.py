"""Prediction and evaluation: a model over a split or over image files, as COCO results.

``predict`` is what validation, notebooks 04/05 and ``python -m seglib evaluate`` run;
``evaluate`` adds the COCO metrics; ``to_coco_results`` turns one image's output into COCO
results (``seglib.app.predict_files`` uses it for ``python -m seglib predict``). Any model following ``seglib.models.builder.SegmentationModel``
works: only ``model(images)`` is called.

Masks are thresholded at 0.5 and cut to their extent on the device, so only uint8 crops cross
to the host (``masks_to_host``); image ids are plain ints, never tensors, or pycocotools'
``loadRes`` rejects the results. Under torchrun ``evaluate`` shards the images across the
ranks and rank 0 runs COCOeval on the gathered results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset, Subset

from seglib.core.atomic import write_json_atomic
from seglib.core.distributed import broadcast_from_main, gather_to_main, rank_and_world
from seglib.core.runtime import images_to_device
from seglib.data.dataset import collate_fn
from seglib.evaluation.coco_ap import evaluate_results
from seglib.evaluation.coco_results import to_coco_ids
from seglib.models.checkpoint import unwrap


def masks_to_host(probs: torch.Tensor) -> np.ndarray:
    """Binary masks on the host from mask probabilities on any device.

    Each mask is thresholded at 0.5 and cut to its own extent on the device; only those
    uint8 crops are copied (one copy), then pasted back into full-size masks on the host.

    Args:
        probs: float [N, 1, H, W] probabilities (torchvision's ``masks`` output).

    Returns:
        uint8 [N, H, W] with values 0/1.
    """
    binary = probs[:, 0] > 0.5
    n, h, w = binary.shape
    out = np.zeros((n, h, w), dtype=np.uint8)
    if n == 0:
        return out
    rows, cols = binary.any(dim=2), binary.any(dim=1)  # [N, H], [N, W]
    present = rows.any(dim=1)
    y0 = rows.int().argmax(dim=1)
    y1 = h - rows.flip(1).int().argmax(dim=1)
    x0 = cols.int().argmax(dim=1)
    x1 = w - cols.flip(1).int().argmax(dim=1)
    extents = (torch.stack([y0, y1, x0, x1], dim=1) * present[:, None]).cpu().tolist()
    crops = [binary[i, a:b, c:d].reshape(-1) for i, (a, b, c, d) in enumerate(extents)]
    flat = torch.cat(crops).to(torch.uint8).cpu().numpy()
    start = 0
    for i, (a, b, c, d) in enumerate(extents):
        size = (b - a) * (d - c)
        out[i, a:b, c:d] = flat[start : start + size].reshape(b - a, d - c)
        start += size
    return out


def _image_id(target: Any) -> int:
    value = target["image_id"] if isinstance(target, dict) else target
    return int(value.item() if torch.is_tensor(value) else value)  # never a tensor


def to_coco_results(
    image_id: int, output: dict[str, torch.Tensor], score_thresh: float
) -> list[dict[str, Any]]:
    """One image's model output as COCO results: xywh boxes, RLE masks, labels 1..k.

    Only detections scoring at least ``score_thresh`` are kept; ``image_id`` is a plain int.
    """
    keep = output["scores"] >= score_thresh
    if not bool(keep.any()):
        return []
    boxes = output["boxes"][keep]
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    masks = masks_to_host(output["masks"][keep])
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    results = []
    for box, label, score, rle in zip(
        xywh, output["labels"][keep].tolist(), output["scores"][keep].tolist(), rles, strict=True
    ):
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": image_id,
                "category_id": int(label),
                "bbox": [float(v) for v in box],
                "score": float(score),
                "segmentation": rle,
            }
        )
    return results


def _as_loader(data: DataLoader | Dataset, batch_size: int, num_workers: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator(),
    )


def predict(
    model: torch.nn.Module,
    loader_or_dataset: DataLoader | Dataset,
    device: torch.device | str,
    *,
    score_thresh: float = 0.0,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """COCO results for every image: model in eval mode under torch.inference_mode.

    Args:
        model: follows ``seglib.models.builder.SegmentationModel``; only ``model(images)`` is called.
        loader_or_dataset: yields/holds ``(image, target)`` with ``target["image_id"]``; images
            uint8 [3,H,W] (made float on the device) or float in 0..1.
        score_thresh: detections below it are left out (0 keeps all, as AP needs).

    Returns:
        One dict per detection: image_id int, category_id int (the model's label 1..k, not
        yet COCO's id), bbox [x,y,w,h] float pixels, score float, segmentation compressed RLE
        with ``counts`` as str. Write them with ``write_results``, which gives files COCO's
        category ids.
    """
    device = torch.device(device)
    loader = _as_loader(loader_or_dataset, batch_size, num_workers)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    results: list[dict[str, Any]] = []
    batches: Iterable = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="predict", leave=False)
    try:
        with torch.inference_mode():
            for images, targets in batches:
                try:
                    outputs = net(images_to_device(images, device))
                except torch.cuda.OutOfMemoryError as e:
                    raise torch.cuda.OutOfMemoryError(
                        f"CUDA out of memory while predicting on {len(images)} images: use a smaller "
                        "batch_size or smaller min_size/max_size"
                    ) from e
                for target, output in zip(targets, outputs, strict=True):
                    results.extend(to_coco_results(_image_id(target), output, score_thresh))
    finally:
        net.train(was_training)
    return results


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset | DataLoader,
    device: torch.device | str,
    *,
    score_thresh: float = 0.5,
    batch_size: int = 2,
    num_workers: int = 0,
) -> dict[str, Any]:
    """``predict`` on every image (all scores), then ``seglib.evaluation.coco_ap.evaluate_results``.

    ``score_thresh`` applies to the thresholded metrics (best-match and pixel IoU), not to AP. A
    DataLoader lends its dataset, batch size and worker count.

    Under torchrun (an initialised process group) every rank must call it: each predicts
    every ``world_size``-th image, rank 0 gathers the results in the dataset's image order
    (the order one process produces, so COCOeval's tie-breaking is the same) and evaluates,
    and every rank gets the metrics back.
    """

    if isinstance(dataset, DataLoader):
        batch_size = dataset.batch_size or batch_size
        num_workers, dataset = dataset.num_workers, dataset.dataset
    rank, world = rank_and_world()
    shard = dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))
    results = predict(
        model, shard, device, score_thresh=0.0, batch_size=batch_size, num_workers=num_workers
    )
    parts = gather_to_main(results)
    metrics = None
    if parts is not None:
        position = {image_id: n for n, image_id in enumerate(dataset.ids)}
        merged = sorted((r for part in parts for r in part), key=lambda r: position[r["image_id"]])
        metrics = evaluate_results(dataset.coco, merged, score_thresh=score_thresh)
    return broadcast_from_main(metrics)


def write_results(
    path: str | Path, results: Sequence[dict[str, Any]], categories: Sequence[dict]
) -> Path:
    """Write in-memory results (labels 1..k) as a COCO results file, with COCO's category ids.

    Every results file seglib writes goes through here, so pycocotools scores it against the
    split's json (or COCO's own annotations) as it is; ``seglib.evaluation.coco_results.read_results`` turns
    the ids back into labels.

    Args:
        categories: the split's or checkpoint's category dicts in label order (``id`` COCO's).

    Raises:
        ValueError: a result's label is outside 1..k, or ``categories`` are numbered as an
            older seglib did.
    """

    return write_json_atomic(path, to_coco_ids(results, categories), indent=None)


def check_postprocess(arch: str, postprocess: str = "nms", tta_hflip: bool = False) -> None:
    """Refuse a post-processing variant on a model that has no NMS to replace.

    ``seglib.models.postprocess`` (``--postprocess``, ``--tta-hflip``) works inside torchvision's
    Mask R-CNN, in place of its box NMS. Mask2Former predicts a fixed set of masks and
    suppresses nothing, so only the model's own output ("nms", no flip) applies to it.

    Raises:
        ValueError: ``arch`` is "mask2former" and another rule or flip TTA is asked for.
    """
    if arch != "mask2former" or (postprocess == "nms" and not tta_hflip):
        return
    asked = [f"--postprocess {postprocess}"] if postprocess != "nms" else []
    asked += ["--tta-hflip"] if tta_hflip else []
    raise ValueError(
        f"{' and '.join(asked)} cannot apply to a Mask2Former model (arch 'mask2former'): "
        "post-processing replaces the box NMS inside torchvision's Mask R-CNN, and Mask2Former "
        "has no NMS to replace. Use a Mask R-CNN (arch 'v1' or 'v2'), or leave postprocess "
        "at 'nms' and tta_hflip off"
    )
