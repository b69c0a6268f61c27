"""Mask2Former (Hugging Face transformers) behind seglib's model contract.

``Mask2FormerSegmenter`` takes and returns what torchvision's Mask R-CNN does, so the one
training loop, ``prediction.predict``/``evaluate``, every metric, figure and occlusion bucket
work unchanged:

- training: ``model(images, targets) -> {"loss_cross_entropy", "loss_mask", "loss_dice"}``,
  each summed over the final and the auxiliary decoder layers, already weighted as in
  Mask2Former (class 2, mask 5, dice 5);
- inference: ``model(images) -> [{"boxes", "labels", "scores", "masks"}]`` with boxes float
  [N,4] XYXY pixels (from the masks), labels int64 1..k, scores float, masks float
  [N,1,H,W] probabilities at the input image's size.

Images are float [3,H,W] in 0..1 (uint8 is accepted and scaled). The module resizes them
(shorter side to ``min_size``, longer side at most ``max_size``), normalises with the
ImageNet mean/std of Mask2Former's image processor, and pads the batch to a multiple of 32
with a ``pixel_mask``, all in torch. Targets become per-instance binary ``mask_labels`` and
0-based ``class_labels``: overlapping instances stay separate. (The image processor builds
them from one instance-id map per image, where a pixel belongs to one instance only, so
where two instances overlap one of them would lose those pixels.)

Post-processing is done here, not with ``post_process_instance_segmentation``: that resizes
every mask to 384x384 whatever the padding and, by default, merges overlaps into one id map,
so an occluded instance loses the pixels it shares. Here, as in Mask2Former's own instance
inference: score = class probability x mean mask probability inside the mask, top
``detections_per_img`` (query, class) pairs, sigmoid masks cropped to the unpadded image and
resized to the original size.

Weights, the Hugging Face cache and the configuration presets are in
``seglib.models.mask2former_weights``. ``transformers`` is imported only when a Mask2Former is
built (the ``detr`` extra), and nothing downloads implicitly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import masks_to_boxes

from seglib.core.categories import category_labels
from seglib.core.config import TrainConfig
from seglib.models.checkpoint import CheckpointError, load_model_state, load_state_file
from seglib.models.mask2former_weights import (
    MODEL_ID,
    coco_id2label,
    hf_config,
    load_pretrained,
    map_head_to_subset,
    pretrained_available,
    require_transformers,
    subset_head_rows,
)

LOSS_NAMES = ("loss_cross_entropy", "loss_mask", "loss_dice")
#: Mask2Former's image processor normalises with the ImageNet statistics.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
SIZE_DIVISOR = 32


# --- the seglib module -------------------------------------------------------------------------
class Mask2FormerSegmenter(nn.Module):
    """A Hugging Face Mask2Former speaking torchvision's detection contract (module docstring).

    Args:
        hf_model: a ``Mask2FormerForUniversalSegmentation``.
        class_to_label: for each of its classes (0-based), the seglib label 1..k it reports,
            or 0 to drop it (the zero-shot COCO model); identity ``[1..k]`` for a trained one.
        min_size, max_size: px; the resize of the shorter side and the cap of the longer one.
        score_thresh: detections scoring below are dropped inside the model (as Mask R-CNN's
            box_score_thresh; AP wants it low).
        detections_per_img: (query, class) pairs kept per image, best first.
    """

    loss_names = LOSS_NAMES

    def __init__(
        self,
        hf_model: nn.Module,
        class_to_label: Sequence[int],
        *,
        min_size: int = 800,
        max_size: int = 1333,
        score_thresh: float = 0.05,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        lut = torch.as_tensor(list(class_to_label), dtype=torch.int64)
        if lut.numel() != hf_model.config.num_labels:
            raise ValueError(
                f"class_to_label has {lut.numel()} entries, the model {hf_model.config.num_labels} classes"
            )
        self.model = hf_model
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.score_thresh = float(score_thresh)
        self.detections_per_img = int(detections_per_img)
        self.trainable = bool(torch.equal(lut, torch.arange(1, lut.numel() + 1)))
        self.register_buffer("class_to_label", lut, persistent=False)
        self.register_buffer("kept_classes", torch.nonzero(lut > 0)[:, 0], persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(3, 1, 1), persistent=False)

    # --- input -------------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) after the resize: shorter side min_size, longer side at most max_size."""
        scale = min(self.min_size / min(height, width), self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def batch_images(
        self, images: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Resize, normalise and pad a list of [3,H,W] images.

        Returns:
            pixel_values float [B,3,Hp,Wp] (Hp, Wp multiples of 32, zero padding after
            normalisation), pixel_mask int64 [B,Hp,Wp] (1 on image pixels), and each image's
            resized (h, w).
        """
        resized, sizes = [], []
        for image in images:
            image = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
            h, w = self.resized_size(*image.shape[-2:])
            if (h, w) != tuple(image.shape[-2:]):
                image = F.interpolate(
                    image[None], size=(h, w), mode="bilinear", align_corners=False
                )[0]
            resized.append((image - self.mean) / self.std)
            sizes.append((h, w))
        hp = math.ceil(max(h for h, _ in sizes) / SIZE_DIVISOR) * SIZE_DIVISOR
        wp = math.ceil(max(w for _, w in sizes) / SIZE_DIVISOR) * SIZE_DIVISOR
        pixel_values = resized[0].new_zeros((len(resized), 3, hp, wp))
        pixel_mask = torch.zeros((len(resized), hp, wp), dtype=torch.int64, device=self.mean.device)
        for i, (image, (h, w)) in enumerate(zip(resized, sizes, strict=True)):
            pixel_values[i, :, :h, :w] = image
            pixel_mask[i, :h, :w] = 1
        return pixel_values, pixel_mask, sizes

    def batch_targets(
        self, targets: Sequence[dict], sizes: Sequence[tuple[int, int]], padded: tuple[int, int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: ``mask_labels`` float [N,Hp,Wp] (one binary mask per instance, resized
        like the image and zero-padded) and ``class_labels`` int64 [N] (label - 1)."""
        mask_labels, class_labels = [], []
        for target, (h, w) in zip(targets, sizes, strict=True):
            masks = target["masks"]
            out = torch.zeros((masks.shape[0], *padded), device=self.mean.device)
            if masks.shape[0]:
                out[:, :h, :w] = F.interpolate(masks[None].float(), size=(h, w), mode="nearest")[0]
            mask_labels.append(out)
            class_labels.append(target["labels"].to(torch.int64) - 1)
        return mask_labels, class_labels

    # --- forward -------------------------------------------------------------------------------
    def forward(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Losses in train mode (needs ``targets``), detections in eval mode (module docstring).

        Raises:
            ValueError: train mode without targets. RuntimeError: training a zero-shot model.
        """
        pixel_values, pixel_mask, sizes = self.batch_images(images)
        if self.training:
            if targets is None:
                raise ValueError("in train mode Mask2Former needs targets; call .eval() to predict")
            if not self.trainable:
                raise RuntimeError(
                    "the zero-shot Mask2Former is for evaluation only: call .eval() and pass images alone"
                )
            return self._losses(pixel_values, pixel_mask, sizes, targets)
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return [
            self._detections(out.class_queries_logits[i], out.masks_queries_logits[i], size, image)
            for i, (size, image) in enumerate(zip(sizes, images, strict=True))
        ]

    def _losses(self, pixel_values, pixel_mask, sizes, targets) -> dict[str, torch.Tensor]:
        mask_labels, class_labels = self.batch_targets(targets, sizes, pixel_values.shape[-2:])
        out = self.model(
            pixel_values=pixel_values, pixel_mask=pixel_mask, output_auxiliary_logits=True
        )
        # The loss's point sampling and matching are numerically fragile in bf16.
        with torch.autocast(pixel_values.device.type, enabled=False):
            parts = self.model.get_loss_dict(
                out.masks_queries_logits.float(),
                out.class_queries_logits.float(),
                mask_labels,
                class_labels,
                [{k: v.float() for k, v in aux.items()} for aux in out.auxiliary_logits or []],
            )
        # Group the final layer's loss with its auxiliary copies (loss_mask_0, ...).
        return {
            name: sum(v for k, v in parts.items() if k == name or k.startswith(name + "_"))
            for name in LOSS_NAMES
        }

    def _detections(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        size: tuple[int, int],
        image: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        height, width = image.shape[-2:]
        probs = class_logits.float().softmax(-1)[:, :-1][:, self.kept_classes]  # [Q, C']
        num_cols = probs.shape[1]
        k = min(self.detections_per_img, probs.numel())
        scores, flat = probs.flatten().topk(k)
        keep = scores >= self.score_thresh  # final score <= class prob: safe to drop early
        scores, flat = scores[keep], flat[keep]
        labels = self.class_to_label[self.kept_classes[flat % num_cols]]
        if flat.numel() == 0:  # interpolate refuses empty batches
            return {
                "boxes": torch.zeros((0, 4), device=scores.device),
                "labels": labels,
                "scores": scores,
                "masks": torch.zeros((0, 1, height, width), device=scores.device),
            }
        logits = mask_logits[flat // num_cols].float()[None]  # [1, K, h/4, w/4]
        padded = tuple(s * 4 for s in mask_logits.shape[-2:])
        logits = F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)
        logits = logits[..., : size[0], : size[1]]
        masks = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        masks = masks[0].sigmoid()  # [K, H, W]
        binary = masks > 0.5
        area = binary.flatten(1).sum(1)
        mask_scores = (masks * binary).flatten(1).sum(1) / area.clamp(min=1)
        scores = scores * mask_scores
        keep = (area > 0) & (scores >= self.score_thresh)
        order = scores[keep].argsort(descending=True)
        masks, binary, scores, labels = (t[keep][order] for t in (masks, binary, scores, labels))
        # torchvision's x2, y2 are the last column and row; seglib's are one past them
        # (``seglib.data.transforms.boxes_from_masks``). Every mask kept here is non-empty.
        boxes = masks_to_boxes(binary)
        boxes[:, 2:] += 1
        return {
            "boxes": boxes,
            "labels": labels,
            "scores": scores,
            "masks": masks[:, None],
        }


# --- builders ------------------------------------------------------------------------------------
def _wrap(hf_model: nn.Module, class_to_label: Sequence[int], cfg: TrainConfig):
    return Mask2FormerSegmenter(
        hf_model,
        class_to_label,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        score_thresh=cfg.box_score_thresh,
        detections_per_img=cfg.detections_per_img,
    )


def _structure(cfg: TrainConfig) -> nn.Module:
    transformers = require_transformers()
    config = hf_config(cfg.m2f_config, dict(enumerate(cfg.categories)))
    return transformers.Mask2FormerForUniversalSegmentation(config)


def build_mask2former(
    cfg: TrainConfig, *, arch: str = "mask2former", num_classes: int, weights: str, load: bool
) -> Mask2FormerSegmenter:
    """The builder of "mask2former" (``builder.BUILDERS``): a head for ``cfg.categories``.

    Args:
        num_classes: k + 1, as for Mask R-CNN (Mask2Former's own no-object class is the +1).
        weights: "coco" loads ``cfg.m2f_pretrained`` (Hugging Face cache or folder, offline)
            and maps its 80-class COCO head to the categories by name
            (``map_head_to_subset``); "none" is a random init of the ``cfg.m2f_config``
            preset; a .pt/.pth path is a seglib checkpoint or state dict of this model.
        load: False reads no file (the structure a checkpoint is loaded into).

    Returns:
        The model in train mode, on the CPU.

    Raises:
        MissingDependencyError: transformers is not installed.
        MissingWeightsError: the COCO checkpoint is not cached (names id, cache, command).
        CheckpointError: the weights do not fit the ``m2f_config`` preset or class count.
        ValueError: ``num_classes`` disagrees with the categories; a category is not a
            COCO class of the checkpoint; "imagenet" weights (no such file for Mask2Former).
    """
    if num_classes != len(cfg.categories) + 1:
        raise ValueError(
            f"num_classes {num_classes} disagrees with the {len(cfg.categories)} categories {cfg.categories}"
        )
    model = _wrap(_structure(cfg), range(1, num_classes), cfg)
    if not load or weights == "none":
        return model.train()
    if weights == "coco":
        pretrained = map_head_to_subset(load_pretrained(cfg.m2f_pretrained), cfg.categories)
        try:
            model.model.load_state_dict(pretrained.state_dict())
        except RuntimeError as e:
            raise CheckpointError(
                f"Mask2Former weights {cfg.m2f_pretrained} do not fit the m2f_config preset "
                f"{cfg.m2f_config!r} ({str(e)[:400]}); {MODEL_ID} needs m2f_config='swin-tiny'"
            ) from e
    elif str(weights).endswith((".pt", ".pth")):
        load_model_state(model, load_state_file(weights), source=str(weights))
    else:
        raise ValueError(
            f"weights for Mask2Former must be 'coco', 'none' or a .pt/.pth file, got {weights!r}"
        )
    return model.train()


def build_zero_shot_mask2former(
    categories: list[dict], cfg: TrainConfig | None = None, *, hf_model: nn.Module | None = None
) -> Mask2FormerSegmenter:
    """The unmodified COCO-trained Mask2Former, reporting only the subset's categories.

    All 80 classes compete in the softmax, as in the COCO model; pairs of other classes are
    dropped and the rest relabelled 1..k by name (the torchvision baseline maps by COCO id).

    Args:
        categories: the split's category dicts in label order (``seglib.core.categories``).
        hf_model: an 80-class model to wrap instead of loading ``cfg.m2f_pretrained`` (tests,
            the offline stand-in).

    Raises:
        MissingWeightsError: not cached. ValueError: a category is not a COCO class.
    """
    cfg = cfg if cfg is not None else TrainConfig(arch="mask2former")
    if hf_model is None:
        hf_model = load_pretrained(cfg.m2f_pretrained)
    id2label = hf_model.config.id2label
    lut = [0] * len(id2label)
    rows = subset_head_rows(id2label, [c["name"] for c in categories])
    labels = category_labels(categories, source="zero-shot categories")
    for cat, row in zip(categories, rows, strict=False):
        lut[row] = labels[int(cat["id"])]
    return _wrap(hf_model, lut, cfg).eval()


def zero_shot_mask2former(categories: list[dict], cfg: TrainConfig) -> Mask2FormerSegmenter:
    """The zero-shot baseline of a Mask2Former run: the COCO model when it is cached.

    When it is not and the run itself did not start from it (the offline profiles), a
    randomly initialised 80-class ``cfg.m2f_config`` model stands in, with a loud warning:
    the comparison then checks the plumbing (the label mapping by name), nothing more.

    Raises:
        MissingWeightsError: ``cfg.weights == "coco"`` and the checkpoint is not cached.
    """
    if cfg.weights == "coco" or pretrained_available(cfg.m2f_pretrained):
        return build_zero_shot_mask2former(categories, cfg)
    warnings.warn(
        f"ZERO-SHOT STAND-IN: {cfg.m2f_pretrained} is not cached, so a randomly initialised "
        f"80-class Mask2Former ({cfg.m2f_config!r}) stands in for the COCO-trained baseline. "
        "Its AP means nothing.",
        UserWarning,
        stacklevel=2,
    )
    transformers = require_transformers()
    stand_in = transformers.Mask2FormerForUniversalSegmentation(
        hf_config(cfg.m2f_config, coco_id2label())
    )
    return build_zero_shot_mask2former(categories, cfg, hf_model=stand_in)
