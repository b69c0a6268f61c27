"""From a model's predictions to numbers.

Running a model over a split, predictions as COCO results, COCO AP through pycocotools, the
mask-IoU measures, error matching for the galleries, and occlusion levels and AP per bucket.

Imports: ``seglib.core``, ``seglib.data`` and ``seglib.models``.
"""

__all__ = [
    "coco_ap",
    "coco_results",
    "iou_measures",
    "matching",
    "occlusion",
    "prediction",
    "shown_results",
]
