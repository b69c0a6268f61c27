"""The models and what turns their raw output into detections.

Mask R-CNN and Mask2Former behind one contract, the zero-shot baselines, the architecture
table, weights and checkpoints, the suppression rules and flip TTA hooked into a model, the
ROI heads under several settings over one backbone pass, the bf16 parts of prediction, and
RoIAlign as a sparse product on the CPU.

Imports: ``seglib.core`` only. ``data`` and ``models`` never import each other.
"""

__all__ = [
    "builder",
    "checkpoint",
    "mask2former",
    "mask2former_weights",
    "maskrcnn",
    "one_pass",
    "overlaps",
    "postprocess",
    "precision",
    "roi_align",
    "suppression",
    "weights",
    "zeroshot",
]
