"""Exact pairwise mask IoU, tile by tile: what the mask suppression rules compare.

Masks are binarised (probability > 0.5) at full resolution and cut into ``TILE`` x ``TILE``
tiles; only the tiles a mask covers are kept, and the intersections are the products of the
tiles that two masks of one class share (one batched matrix multiply per group of tiles of
similar occupancy). The work is that of the overlaps, the memory bounded by
``CHUNK_ELEMENTS`` at any image size, and identical masks give exactly 1.0. ``mask_iou``
takes pasted masks; ``box_mask_iou`` takes the mask head's M x M masks in box coordinates
and samples them only on the tiles their paste covers, as torchvision's
``paste_masks_in_image`` would paste them (``paste_geometry``), so the pool's masks are never
pasted at image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes

#: Side of the square tiles mask IoU works on, px: small enough that a mask's tiles hug it,
#: large enough that each tile's product is a real matrix multiply.
TILE = 32
#: Elements one step of mask IoU may hold (64 MB of float32): bounds memory at any size.
CHUNK_ELEMENTS = 1 << 24


def _grouped_gram(
    owner: torch.Tensor, group: torch.Tensor, bits: torch.Tensor, n: int
) -> torch.Tensor:
    """[n, n] sums of ``bits[e] . bits[f]`` over entry pairs of one group, by their owners.

    Groups are padded to a common size in batches of similar sizes (at most 2x apart, at most
    ``CHUNK_ELEMENTS`` elements), each batch one ``bmm``: the work is that of the pairs that
    share a group, the memory bounded. 0/1 products of at most ``TILE²`` terms are exact in
    float16 and float32 alike.
    """
    inter = torch.zeros(n * n, device=bits.device)
    if owner.numel() == 0:
        return inter.view(n, n)
    group, order = group.sort(stable=True)
    owner, bits = owner[order], bits[order]
    _, counts = torch.unique_consecutive(group, return_counts=True)
    starts = counts.cumsum(0) - counts
    by_size = counts.argsort(descending=True)
    sizes = counts[by_size].tolist()
    dtype = torch.float16 if bits.is_cuda else torch.float32
    a = 0
    while a < len(sizes):
        k = sizes[a]
        b = a + 1
        while (
            b < len(sizes)
            and sizes[b] * 2 > k
            and (b - a + 1) * k * bits.shape[1] <= CHUNK_ELEMENTS
        ):
            b += 1
        groups = by_size[a:b]
        slot = torch.arange(k, device=bits.device)
        valid = slot[None, :] < counts[groups][:, None]  # [g, k]
        index = torch.where(valid, starts[groups][:, None] + slot, 0)
        padded = bits[index].to(dtype) * valid[..., None]  # [g, k, P]
        gram = torch.bmm(padded, padded.transpose(1, 2)).float()  # [g, k, k]
        who = owner[index]
        pairs = (who[:, :, None] * n + who[:, None, :])[valid[:, :, None] & valid[:, None, :]]
        inter.index_add_(0, pairs, gram[valid[:, :, None] & valid[:, None, :]])
        a = b
    return inter.view(n, n)


def _iou_of_tiles(
    owner: torch.Tensor, tile: torch.Tensor, bits: torch.Tensor, n: int, labels: torch.Tensor | None
) -> torch.Tensor:
    """Pairwise IoU from each mask's non-empty tiles (``owner``, ``tile`` [E], ``bits`` [E, P])."""
    group = tile
    if labels is not None:
        classes, index = torch.unique(labels, return_inverse=True)
        group = tile * len(classes) + index[owner]
    inter = _grouped_gram(owner, group, bits, n)
    area = inter.diagonal()
    union = area[:, None] + area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def mask_iou(masks: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Exact pairwise IoU of binarised masks; with ``labels``, of same-class pairs only.

    Masks are binarised at full resolution and compared tile by tile (``TILE``), only where
    both have pixels, in chunks of masks: exact (identical masks give 1.0) and bounded in
    memory at 300 masks of 800 x 1333 px.

    Args:
        masks: [N, H, W] or [N, 1, H, W]; values > 0.5 are foreground (probabilities or 0/1).
        labels: int64 [N], optional; pairs of different labels then get 0.

    Returns:
        float32 [N, N]; 0 where both masks are empty.
    """
    masks = masks.reshape(masks.shape[0], *masks.shape[-2:])
    n, h, w = masks.shape
    rows, cols = math.ceil(h / TILE), math.ceil(w / TILE)
    step = max(1, CHUNK_ELEMENTS // max(rows * cols * TILE * TILE, 1))
    owners, tiles, bits = [], [], []
    for start in range(0, n, step):
        chunk = masks[start : start + step]
        binary = torch.zeros(
            len(chunk), rows * TILE, cols * TILE, dtype=torch.bool, device=masks.device
        )
        binary[:, :h, :w] = chunk > 0.5
        # [c, rows, cols, T, T]: a view, copied only for the tiles a mask covers
        grid = binary.view(len(chunk), rows, TILE, cols, TILE).transpose(2, 3)
        m, r, c = grid.any(-1).any(-1).nonzero().unbind(1)
        owners.append(m + start)
        tiles.append(r * cols + c)
        bits.append(grid[m, r, c].reshape(-1, TILE * TILE))
    if not owners:
        return torch.zeros(n, n, device=masks.device)
    return _iou_of_tiles(torch.cat(owners), torch.cat(tiles), torch.cat(bits), n, labels)


def paste_geometry(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's ``paste_masks_in_image`` geometry, for masks in box coordinates.

    Args:
        masks: [N, 1, M, M] (or [N, M, M]). boxes: float [N, 4] XYXY px. image_size: (H, W).

    Returns:
        ``(padded, pasted, lo, hi)``: float [N, 1, M+2, M+2] masks with a one-cell border of 0;
        int64 [N, 4] paste boxes (expanded by (M + 2) / M, truncated; pixels x0..x2, y0..y2);
        int64 [N, 2] (x, y) where the paste starts inside the image and [N, 2] where it ends
        (exclusive; <= start when it lies outside).
    """
    m = masks.shape[-1]
    padded = F.pad(masks.reshape(-1, 1, m, m).float(), (1, 1, 1, 1))
    pasted = expand_boxes(boxes.float(), (m + 2) / m).to(torch.int64)  # truncated, as there
    h, w = image_size
    lo = pasted[:, :2].clamp(min=0)
    hi = torch.minimum(pasted[:, 2:] + 1, torch.tensor([w, h], device=boxes.device))
    return padded, pasted, lo, hi


def _box_mask_tiles(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The non-empty tiles of masks in box coordinates once pasted, binarised (see box_mask_iou)."""
    padded, pasted, lo, hi = paste_geometry(masks, boxes, image_size)
    size = (pasted[:, 2:] - pasted[:, :2] + 1).clamp(min=1)  # pasted width, height
    first, last = lo // TILE, (hi - 1) // TILE
    span = torch.where(hi > lo, last - first + 1, 0)  # tiles across x, y
    count = span[:, 0] * span[:, 1]
    owner = torch.repeat_interleave(torch.arange(len(boxes), device=boxes.device), count)
    local = torch.arange(len(owner), device=boxes.device)
    local = local - torch.repeat_interleave(count.cumsum(0) - count, count)
    cols = math.ceil(image_size[1] / TILE)
    step = max(1, CHUNK_ELEMENTS // (3 * TILE * TILE))
    out_owner, out_tile = [owner[:0]], [owner[:0]]
    out_bits = [torch.zeros(0, TILE * TILE, dtype=torch.bool, device=boxes.device)]
    pixel = torch.arange(TILE, device=boxes.device)
    for s in range(0, len(owner), step):
        o, q = owner[s : s + step], local[s : s + step]
        t = first[o] + torch.stack([q % span[o, 0], q // span[o, 0]], dim=1)  # tile x, y
        xy = t[:, :, None] * TILE + pixel  # [e, 2, T] pixel x, y
        inside = (xy >= lo[o][:, :, None]) & (xy < hi[o][:, :, None])
        # F.interpolate(align_corners=False) samples pixel u of a size-s paste at
        # (u + 0.5) * (M + 2) / s - 0.5, clamped to the border: grid_sample's same rule.
        g = 2 * (xy - pasted[o, :2][:, :, None] + 0.5) / size[o][:, :, None] - 1
        grid = torch.stack(torch.broadcast_tensors(g[:, 0, None, :], g[:, 1, :, None]), dim=-1)
        values = F.grid_sample(padded[o], grid, padding_mode="border", align_corners=False)
        bits = (values[:, 0] > 0.5) & inside[:, 1, :, None] & inside[:, 0, None, :]
        bits = bits.reshape(len(o), -1)
        keep = bits.any(1)
        out_owner.append(o[keep])
        out_tile.append((t[:, 1] * cols + t[:, 0])[keep])
        out_bits.append(bits[keep])
    return torch.cat(out_owner), torch.cat(out_tile), torch.cat(out_bits)


def box_mask_iou(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mask_iou`` of masks in box coordinates, as pasted by torchvision, without pasting them.

    Each mask is sampled only on the tiles its paste box covers, with the geometry and
    bilinear rule of torchvision's ``paste_masks_in_image`` (one-cell padding, box expanded
    by (M + 2) / M, truncated to integers), so the IoU is that of the pasted masks > 0.5.

    Args:
        masks: float [N, 1, M, M] (or [N, M, M]) probabilities, the mask head's output.
        boxes: float [N, 4] XYXY px in the image. image_size: (H, W).
        labels: int64 [N], optional; pairs of different labels then get 0.

    Returns:
        float32 [N, N].
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, 0, device=boxes.device)
    return _iou_of_tiles(*_box_mask_tiles(masks, boxes, image_size), n, labels)
