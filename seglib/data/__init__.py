"""COCO data, from the source to batches.

Fetching COCO's files, building the category subset, the synthetic COCO stand-in, reading
images and annotation files, the ``Dataset`` of one split, training augmentations and the
loaders.

Imports: ``seglib.core`` only. ``data`` and ``models`` never import each other.
"""

__all__ = [
    "annotations",
    "dataset",
    "download",
    "images",
    "loaders",
    "subset",
    "synthetic",
    "synthetic_scenes",
    "synthetic_shapes",
    "transforms",
]
