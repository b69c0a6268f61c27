"""seglib: Mask R-CNN instance segmentation on a four-category COCO 2017 subset.

Importing the package does no work: no downloads, no folders, no output.
"""

__version__ = "0.1.0"
