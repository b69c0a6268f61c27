"""``python -m seglib predict``: a model over image files, written as COCO results and overlays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglib.core.atomic import write_json_atomic
from seglib.core.runtime import images_to_device, prediction_dtype
from seglib.data.images import load_rgb
from seglib.evaluation.coco_results import masks_to_host, to_coco_results, write_results
from seglib.models.checkpoint import unwrap
from seglib.models.precision import autocast_parts
from seglib.viz import files, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _image_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither an image file nor a folder")
    if not files:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(p) for p in paths]}"
        )
    return files


def predict_images(
    model: torch.nn.Module,
    images: Sequence[str | Path],
    out_dir: str | Path,
    device: torch.device | str,
    *,
    categories: list[dict],
    score_thresh: float = 0.5,
    cpu_amp: str = "off",
) -> dict[str, Any]:
    """Predict on image files (or folders of them); write results JSON and overlay PNGs.

    ``categories`` are the checkpoint's, in label order (``seglib.core.categories``);
    ``cpu_amp`` is ``prediction.predict``'s.

    Image ids are the numeric file stems (COCO names such as 000000123456.jpg) when all are
    numeric and distinct, else 1..n in order. Writes OUT/results.json (COCO results with
    COCO's category ids, scores >= score_thresh), OUT/images.json (id, file_name, width,
    height) and OUT/<stem>.png. Photos are predicted upright (their EXIF orientation applied),
    and images.json gives that frame's size.

    Returns:
        num_images, num_predictions, results, images (paths) and overlays (list of paths).
    """

    device = torch.device(device)
    image_files = _image_files(images)
    stems = [f.stem for f in image_files]
    numeric = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    ids = [int(s) for s in stems] if numeric else list(range(1, len(image_files) + 1))
    unique_stems = len(set(stems)) == len(stems)
    out_dir = Path(out_dir)
    names = [c["name"] for c in categories]  # label order
    net = unwrap(model)
    dtype = prediction_dtype(device, cpu_amp)
    was_training = net.training
    net.eval()
    results, records, overlays = [], [], []
    try:
        for image_id, path in zip(ids, image_files, strict=True):
            rgb = load_rgb(path)
            tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
            with torch.inference_mode(), autocast_parts(net, dtype):
                output = net(images_to_device([tensor], device))[0]
            found = to_coco_results(image_id, output, score_thresh)
            results.extend(found)
            records.append(
                {
                    "id": image_id,
                    "file_name": path.name,
                    "width": rgb.shape[1],
                    "height": rgb.shape[0],
                }
            )
            keep = output["scores"] >= score_thresh
            ax = overlay.draw_instances(
                rgb,
                boxes=output["boxes"][keep].cpu(),
                masks=torch.from_numpy(masks_to_host(output["masks"][keep])),
                labels=output["labels"][keep].cpu(),
                scores=output["scores"][keep].cpu(),
                class_names=names,
                title=f"{path.name}: {len(found)} instances",
            )
            overlay_file = out_dir / (
                f"{path.stem}.png" if unique_stems else f"{image_id}-{path.stem}.png"
            )
            overlays.append(files.save_figure(ax.figure, overlay_file, close=True))
    finally:
        net.train(was_training)
    results_path = write_results(out_dir / "results.json", results, categories)
    images_path = write_json_atomic(out_dir / "images.json", records)
    return {
        "num_images": len(image_files),
        "num_predictions": len(results),
        "results": results_path,
        "images": images_path,
        "overlays": overlays,
    }
