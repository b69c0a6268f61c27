"""RoIAlign on the CPU as one sparse matrix product over every FPN level.

torchvision's CPU RoIAlign runs one ROI after another in one thread, and its backward adds
each bin's gradient into the feature map one channel at a time: in a demo training step on
the 2-core Xeon kind that backward alone was 29% of the step (docs/benchmarks.md). The same
bilinear samples can be written as a sparse matrix ``S``: one row per output bin, and for
each of its samples the four neighbouring pixels' weights, divided by the samples per bin.
With every level's features laid out as one ``(pixels, channels)`` matrix ``F``, the pooled
features are ``S @ F`` and their gradient is ``S.T @ grad``: two sparse products over 256
contiguous channels, which autograd gives through ``torch.sparse.mm``.

The numbers are torchvision's ``roi_align(..., aligned=False)`` with a fixed
``sampling_ratio`` (> 0), to float rounding: ROIs at least 1 px wide on their level, samples
at ``start + (bin + (i + 0.5) / ratio) * bin_size``, clamped to the edge pixel within one
pixel of the map and zero beyond (tested against torchvision's op, forward and backward).
Under autocast the product runs in fp32 and the result comes back in the features' dtype, as
torchvision's autocast rule for its op does.

Only training pools this way (4-5x faster forward and backward at the demo's and the seed's
sizes, ``bench/bench_roi_align.py``). Without gradients the forward alone gains 0.8-2.3x, and
loses on one thread in some shapes, as the side-by-side notebooks run it; so prediction and
validation keep torchvision's op, and their numbers bit for bit. ``sampling_ratio <= 0``
(samples per ROI size) and CUDA keep it too.
"""

from __future__ import annotations

import itertools

import torch
import torchvision
from torch import Tensor
from torchvision.ops import poolers


def _sample_axis(coords: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear neighbours along one axis for sample coordinates ``coords`` (ROIs first):
    the low and high pixel, and their weights, zero where the sample lies outside
    ``[-1, size]`` (torchvision's ``bilinear_interpolate``)."""
    size = size.view(-1, *([1] * (coords.dim() - 1)))
    inside = (coords >= -1.0) & (coords <= size)
    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low)
    return low, high, (1.0 - frac) * inside, frac * inside


def sampling_matrix(
    rois: Tensor,
    levels: Tensor,
    shapes: list[tuple[int, int, int]],
    scales: list[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> Tensor:
    """The sparse ``(rois * bins, pixels)`` matrix that pools ``rois`` (``(K, 5)``: image
    index, x1, y1, x2, y2 in image pixels) from their ``levels``, where level ``l`` holds
    ``shapes[l]`` = (images, height, width) pixels, one row after another, and is
    ``scales[l]`` times the image's size."""
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be > 0 here, got {sampling_ratio}")
    ph, pw = output_size
    rois = rois.float()
    heights = torch.tensor([s[1] for s in shapes])[levels]
    widths = torch.tensor([s[2] for s in shapes])[levels]
    level_start = torch.tensor([0] + [n * h * w for n, h, w in shapes]).cumsum(0)[levels]
    scale = torch.tensor(scales, dtype=torch.float32)[levels]
    x1, y1 = rois[:, 1] * scale, rois[:, 2] * scale
    roi_w = (rois[:, 3] * scale - x1).clamp(min=1.0)
    roi_h = (rois[:, 4] * scale - y1).clamp(min=1.0)
    # Sample positions within a bin, in bins: (i + 0.5) / ratio for i < ratio.
    offsets = (torch.arange(sampling_ratio, dtype=torch.float32) + 0.5) / sampling_ratio

    def coords(start: Tensor, extent: Tensor, bins: int) -> Tensor:  # (K, bins, ratio)
        steps = torch.arange(bins, dtype=torch.float32).view(1, -1, 1) + offsets.view(1, 1, -1)
        return start.view(-1, 1, 1) + steps * (extent / bins).view(-1, 1, 1)

    y_low, y_high, wy_low, wy_high = _sample_axis(coords(y1, roi_h, ph), heights)
    x_low, x_high, wx_low, wx_high = _sample_axis(coords(x1, roi_w, pw), widths)
    # Broadcast to (K, ph, pw, ratio_y, ratio_x) per corner, then list a row's entries last.
    image_start = level_start + rois[:, 0].long() * heights * widths

    def grid(y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        return y[:, :, None, :, None], x[:, None, :, None, :]

    columns, weights = [], []
    rows_of = ((y_low, wy_low), (y_high, wy_high))
    for (ys, wys), (xs, wxs) in itertools.product(rows_of, ((x_low, wx_low), (x_high, wx_high))):
        y, x = grid(ys, xs)
        columns.append(image_start.view(-1, 1, 1, 1, 1) + y * widths.view(-1, 1, 1, 1, 1) + x)
        wy, wx = grid(wys, wxs)
        weights.append(wy * wx)
    per_row = 4 * sampling_ratio * sampling_ratio
    columns = torch.stack(columns, -1).reshape(-1)
    weights = (torch.stack(weights, -1) / (sampling_ratio * sampling_ratio)).reshape(-1)
    rows = torch.arange(len(rois) * ph * pw).repeat_interleave(per_row)
    pixels = int(sum(n * h * w for n, h, w in shapes))
    return torch.sparse_coo_tensor(
        torch.stack([rows, columns]),
        weights,
        (len(rois) * ph * pw, pixels),
        check_invariants=False,  # built in range above; checking would cost a pass
    )


def multiscale_roi_align(
    features: list[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: list[float],
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> Tensor:
    """``(K, channels, *output_size)`` features of ``rois`` (``(K, 5)``), each pooled from
    its level of ``features`` (NCHW, one per level), as torchvision's ``MultiScaleRoIAlign``
    pools them; in the first level's dtype."""
    channels, dtype = features[0].shape[1], features[0].dtype
    shapes = [(f.shape[0], f.shape[2], f.shape[3]) for f in features]
    flat = torch.cat([f.float().permute(0, 2, 3, 1).reshape(-1, channels) for f in features])
    matrix = sampling_matrix(rois.detach(), levels, shapes, scales, output_size, sampling_ratio)
    with torch.autocast("cpu", enabled=False):
        pooled = torch.sparse.mm(matrix, flat)
    pooled = pooled.view(len(rois), *output_size, channels).permute(0, 3, 1, 2)
    return pooled.to(dtype).contiguous()


class MultiScaleRoIAlign(torchvision.ops.MultiScaleRoIAlign):
    """torchvision's pooler, pooling with ``multiscale_roi_align`` in training on the CPU when
    ``sparse`` and the sampling ratio is fixed; torchvision's own op elsewhere."""

    def __init__(self, *args, sparse: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sparse = sparse

    @classmethod
    def replacing(cls, pool: torchvision.ops.MultiScaleRoIAlign, sparse: bool):
        """This pooler with ``pool``'s feature maps, output size, sampling ratio and level rule."""
        return cls(
            pool.featmap_names,
            pool.output_size,
            pool.sampling_ratio,
            canonical_scale=pool.canonical_scale,
            canonical_level=pool.canonical_level,
            sparse=sparse,
        )

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = poolers._filter_input(x, self.featmap_names)
        training = torch.is_grad_enabled() and features[0].requires_grad
        if not (
            self.sparse
            and training
            and self.sampling_ratio > 0
            and features[0].device.type == "cpu"
        ):
            return super().forward(x, boxes, image_shapes)
        return self.pool_sparse(features, boxes, image_shapes)

    def pool_sparse(
        self, features: list[Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """``multiscale_roi_align`` over this pooler's ``features`` (its maps, in order), with
        torchvision's level rule: what ``forward`` pools with in CPU training."""
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = poolers._setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = poolers._convert_to_roi_format(boxes)
        levels = self.map_levels(boxes) if len(features) > 1 else rois.new_zeros(len(rois))
        return multiscale_roi_align(
            features, rois, levels.long(), self.scales, self.output_size, self.sampling_ratio
        )
