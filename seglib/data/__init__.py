"""COCO data, from the source to batches.

Fetching COCO's files, building the category subset, the synthetic COCO stand-in, reading
images and annotation files, the ``Dataset`` of one split, training augmentations (flip, crop,
colour and scale jitter, Copy-Paste) and the loaders.

Imports: ``seglib.core`` only. ``data`` and ``models`` never import each other.
"""

__all__ = [
    "annotations",
    "copy_paste",
    "dataset",
    "download",
    "images",
    "loaders",
    "scale_jitter",
    "subset",
    "synthetic",
    "synthetic_scenes",
    "synthetic_shapes",
    "transforms",
]
