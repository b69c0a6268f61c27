"""Mask IoU against numpy's, pair by pair, on boolean masks, at the sizes users run.

Every test runs at 128 px, 480 x 640 and 800 x 1333 (or 800 x 1067): exact IoU for pasted
masks, the IoU of torchvision's pasted masks for masks in box coordinates, exactly 1.0 for
identical masks wherever they lie, and the same answer when memory forces small chunks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from seglib.models import overlaps
from seglib.models.overlaps import box_mask_iou, mask_iou
from seglib.models.suppression import mask_nms

SIZES = [(128, 128), (480, 640)]
IOU_SIZES = [(128, 128), (480, 640), (800, 1333)]


def naive_iou(masks: np.ndarray) -> np.ndarray:
    """IoU of boolean masks [N, H, W], pair by pair."""
    n = len(masks)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            union = np.logical_or(masks[i], masks[j]).sum()
            out[i, j] = np.logical_and(masks[i], masks[j]).sum() / union if union else 0.0
    return out


# --- scenes ---------------------------------------------------------------------------------------
def random_masks(size, n, seed, *, duplicates=2, empty=1) -> torch.Tensor:
    """float [N, 1, H, W] in 0..1: ellipses and rectangles, some tiny, some copied, some empty."""
    h, w = size
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    masks = []
    for k in range(n):
        side = float(
            torch.empty(1).uniform_(math.log(6), math.log(min(h, w) * 0.7), generator=g).exp()
        )
        cx, cy = float(torch.rand(1, generator=g)) * w, float(torch.rand(1, generator=g)) * h
        rx, ry = side / 2, side / 2 * float(torch.empty(1).uniform_(0.5, 1.5, generator=g))
        if k % 2:
            inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        else:
            inside = ((xx - cx).abs() <= rx) & ((yy - cy).abs() <= ry)
        prob = torch.rand(h, w, generator=g) * 0.4  # background below 0.5
        masks.append(torch.where(inside, 0.55 + 0.45 * torch.rand(h, w, generator=g), prob))
    masks += [masks[k].clone() for k in range(duplicates)]
    masks += [torch.rand(h, w, generator=g) * 0.5 for _ in range(empty)]  # nothing above 0.5
    return torch.stack(masks)[:, None]


def random_box_masks(size, n, seed):
    """Masks in box coordinates [N, 1, 28, 28] and their boxes, as a mask head gives them."""
    h, w = size
    g = torch.Generator().manual_seed(seed)
    side = torch.empty(n).uniform_(math.log(4), math.log(min(h, w) * 0.6), generator=g).exp()
    ratio = torch.empty(n).uniform_(0.5, 2.0, generator=g)
    centre = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    half = torch.stack([side * ratio.sqrt(), side / ratio.sqrt()], 1) / 2
    boxes = torch.cat([centre - half, centre + half], 1)
    boxes[3::7] = boxes[2::7][: len(boxes[3::7])]  # some identical boxes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    blob = torch.sigmoid(5 * (1 - xx**2 - yy**2))
    masks = torch.sigmoid(torch.logit(blob) + 1.5 * torch.randn(n, 28, 28, generator=g))
    masks[3::7] = masks[2::7][: len(masks[3::7])]
    return masks[:, None], boxes


# --- mask IoU -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", IOU_SIZES)
def test_mask_iou_equals_the_naive_iou_and_is_one_for_identical_masks(size):
    masks = random_masks(size, 10, seed=size[0])
    ref = naive_iou((masks[:, 0] > 0.5).numpy())
    ious = mask_iou(masks)
    assert np.abs(ious.numpy() - ref).max() < 1e-6
    assert ious[0, 10].item() == 1.0 and ious[1, 11].item() == 1.0  # the copies
    assert ious[-1, -1].item() == 0.0  # an empty mask: 0, not NaN
    labels = torch.arange(len(masks)) % 3 + 1
    same = (labels[:, None] == labels[None, :]).numpy()
    assert np.abs(mask_iou(masks, labels).numpy() - ref * same).max() < 1e-6


@pytest.mark.parametrize("size", SIZES)
def test_mask_iou_is_the_same_when_memory_forces_small_chunks(size, monkeypatch):
    masks = random_masks(size, 8, seed=3)
    labels = torch.arange(len(masks)) % 2
    whole = mask_iou(masks, labels)
    monkeypatch.setattr(overlaps, "CHUNK_ELEMENTS", overlaps.TILE**2 * 2)
    assert torch.equal(mask_iou(masks, labels), whole)


@pytest.mark.parametrize("size", IOU_SIZES)
def test_box_mask_iou_is_the_iou_of_the_pasted_masks(size):
    masks, boxes = random_box_masks(size, 40, seed=size[1])
    pasted = paste_masks_in_image(masks, boxes, size)[:, 0] > 0.5
    ref = naive_iou(pasted.numpy())
    labels = torch.arange(40) // 2 % 2 + 1  # 2 and 3, the identical pair, share one
    same = (labels[:, None] == labels[None, :]).numpy()
    ious = box_mask_iou(masks, boxes, size, labels)
    assert np.abs(ious.numpy() - ref * same).max() <= 0.02
    assert ious[2, 3].item() == 1.0  # an identical box and mask
    assert box_mask_iou(masks[:0], boxes[:0], size).shape == (0, 0)
    away = torch.tensor([[-60.0, -60.0, -20.0, -20.0], [size[1] + 5.0, 0.0, size[1] + 50.0, 30.0]])
    assert torch.equal(box_mask_iou(masks[:2], away, size), torch.zeros(2, 2))  # off the image


@pytest.mark.parametrize("path", ["pasted", "box coordinates"])
def test_mask_nms_suppresses_exact_duplicates_wherever_they_lie(path):
    """At 800 x 1067, 8 px squares and larger, anywhere: each copy goes at mask IoU 0.5."""
    h, w = size = (800, 1067)
    g = torch.Generator().manual_seed(0)
    sides = torch.tensor([8, 8, 8, 8, 13, 21, 40, 90] * 4)
    n = len(sides)
    # One object per cell of a 4 x 8 grid, at a random place inside it: objects never touch.
    cell = torch.stack([torch.arange(n) % 8 * (w // 8), torch.arange(n) // 8 * (h // 4)], 1)
    room = torch.tensor([w // 8, h // 4]) - sides[:, None] - 1
    corner = cell + (torch.rand(n, 2, generator=g) * room).floor() + torch.rand(n, 2, generator=g)
    boxes = torch.cat([corner, corner + sides[:, None]], 1).repeat(2, 1)
    labels = torch.ones(2 * n, dtype=torch.int64)
    scores = torch.cat([torch.rand(n, generator=g) * 0.5 + 0.5, torch.rand(n, generator=g) * 0.5])
    if path == "pasted":
        masks = torch.zeros(2 * n, 1, h, w)
        yy, xx = torch.arange(h)[:, None] + 0.5, torch.arange(w)[None, :] + 0.5
        for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            masks[k, 0] = ((xx >= x1) & (xx < x2) & (yy >= y1) & (yy < y2)).float()
        ious = mask_iou(masks, labels)
    else:
        masks = torch.ones(n, 1, 28, 28).repeat(2, 1, 1, 1)
        ious = box_mask_iou(masks, boxes, size, labels)
    assert torch.all(ious[torch.arange(n), torch.arange(n) + n] == 1.0)
    keep = mask_nms(None, scores, labels, iou_thresh=0.5, ious=ious)
    assert sorted(keep.tolist()) == list(range(n))
