"""A model over a split: its predictions as COCO results, and those scored (``evaluate``).

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

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from seglib.core.config import postprocess_applies
from seglib.core.distributed import broadcast_from_main, gather_to_main, rank_and_world
from seglib.core.runtime import images_to_device, prediction_dtype
from seglib.data.dataset import collate_fn
from seglib.evaluation.coco_ap import evaluate_results
from seglib.evaluation.coco_results import to_coco_results
from seglib.models.checkpoint import unwrap
from seglib.models.precision import autocast_parts


def _image_id(target: Any) -> int:
    value = target["image_id"] if isinstance(target, dict) else target
    return int(value.item() if torch.is_tensor(value) else value)  # never a tensor


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
    cpu_amp: str = "off",
) -> list[dict[str, Any]]:
    """COCO results for every image: model in eval mode under torch.inference_mode.

    Args:
        model: follows ``seglib.models.builder.SegmentationModel``; only ``model(images)`` is called.
        loader_or_dataset: yields/holds ``(image, target)`` with ``target["image_id"]``; images
            uint8 [3,H,W] (made float on the device) or float in 0..1.
        score_thresh: detections below it are left out (0 keeps all, as AP needs).
        cpu_amp: bf16 on the CPU (``TrainConfig.cpu_amp_eval``, ``runtime.prediction_dtype``)
            in a Mask R-CNN's convolutions only (``seglib.models.precision``); "off" is fp32.

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
        with torch.inference_mode(), autocast_parts(net, prediction_dtype(device, cpu_amp)):
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
    cpu_amp: str = "off",
) -> dict[str, Any]:
    """``predict`` on every image (all scores, at ``cpu_amp``), then
    ``seglib.evaluation.coco_ap.evaluate_results``.

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
        model,
        shard,
        device,
        score_thresh=0.0,
        batch_size=batch_size,
        num_workers=num_workers,
        cpu_amp=cpu_amp,
    )
    parts = gather_to_main(results)
    metrics = None
    if parts is not None:
        position = {image_id: n for n, image_id in enumerate(dataset.ids)}
        merged = sorted((r for part in parts for r in part), key=lambda r: position[r["image_id"]])
        metrics = evaluate_results(dataset.coco, merged, score_thresh=score_thresh)
    return broadcast_from_main(metrics)


def check_postprocess(arch: str, postprocess: str = "nms", tta_hflip: bool = False) -> None:
    """Refuse a post-processing variant (``--postprocess``, ``--tta-hflip``) that a model of
    ``arch`` cannot take (``seglib.core.config.postprocess_applies``: Mask2Former has no NMS
    to replace).

    Raises:
        ValueError: ``arch`` is "mask2former" and another rule or flip TTA is asked for.
    """
    if postprocess_applies(arch, postprocess, tta_hflip):
        return
    asked = [f"--postprocess {postprocess}"] if postprocess != "nms" else []
    asked += ["--tta-hflip"] if tta_hflip else []
    raise ValueError(
        f"{' and '.join(asked)} cannot apply to a Mask2Former model (arch 'mask2former'): "
        "post-processing replaces the box NMS inside torchvision's Mask R-CNN, and Mask2Former "
        "has no NMS to replace. Use a Mask R-CNN (arch 'v1' or 'v2'), or leave postprocess "
        "at 'nms' and tta_hflip off"
    )
