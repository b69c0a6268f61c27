"""Pretrained weight files of torchvision's Mask R-CNN: where they live, and fetching them.

Nothing here downloads implicitly. Files are looked for in the torch hub cache,
``$TORCH_HOME/hub/checkpoints`` under torchvision's own file names, and
``fetch_maskrcnn_weights`` is the one function here that downloads. A missing file raises
``MissingWeightsError``, whose message names the file, the folder, the URL and the commands
that put it there.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.models import ResNet50_Weights
from torchvision.models.detection import (
    MaskRCNN_ResNet50_FPN_V2_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
)

from seglib.models.checkpoint import read_torch_file

WEIGHT_KINDS = ("coco", "imagenet")
MASKRCNN_ARCHS = ("v1", "v2")
# Both torchvision R50-FPN Mask R-CNN recipes start from the ImageNet V1 ResNet-50.
_URLS = {
    ("coco", "v1"): MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url,
    ("coco", "v2"): MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url,
    ("imagenet", "v1"): ResNet50_Weights.IMAGENET1K_V1.url,
    ("imagenet", "v2"): ResNet50_Weights.IMAGENET1K_V1.url,
}


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight file is not in the torch hub cache (and was not downloaded)."""


def weights_file(kind: str, arch: str = "v1") -> Path:
    """Where the ``kind`` ("coco" or "imagenet") weights of Mask R-CNN ``arch`` are expected.

    Returns ``$TORCH_HOME/hub/checkpoints/<torchvision file name>`` (torch.hub.get_dir()).

    Raises:
        ValueError: unknown kind or arch.
    """
    if arch not in MASKRCNN_ARCHS:
        raise ValueError(f"arch must be one of {MASKRCNN_ARCHS} for these weights, got {arch!r}")
    if kind not in WEIGHT_KINDS:
        raise ValueError(f"weights kind must be one of {WEIGHT_KINDS}, got {kind!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_URLS[(kind, arch)])


def fetch_maskrcnn_weights(kind: str, arch: str = "v1", *, progress: bool = False) -> Path:
    """Download the ``kind`` weights of ``arch`` into the hub cache (no-op when present).

    The sha256 prefix in torchvision's file name is checked.

    Raises:
        MissingWeightsError: the download failed (offline, proxy); says how to fetch by hand.
    """
    dst = weights_file(kind, arch)
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(dst.name)
    try:
        torch.hub.download_url_to_file(
            _URLS[(kind, arch)],
            str(dst),
            hash_prefix=match.group(1) if match else None,
            progress=progress,
        )
    except Exception as e:  # urllib, ssl and hash errors all mean "not obtained"
        raise MissingWeightsError(
            _missing_message(kind, arch) + f"\nThe download failed: {e}"
        ) from e
    return dst


def load_weight_file(kind: str, arch: str) -> dict[str, torch.Tensor]:
    """The state dict in the cached ``kind`` file of ``arch``.

    Raises:
        MissingWeightsError: the file is not cached. CheckpointError: it is damaged.
    """
    path = weights_file(kind, arch)
    if not path.is_file():
        raise MissingWeightsError(_missing_message(kind, arch))
    return read_torch_file(path)


def _missing_message(kind: str, arch: str) -> str:
    path = weights_file(kind, arch)
    url = _URLS[(kind, arch)]
    return (
        f"{kind} weights for Mask R-CNN {arch} need the file {path.name}, looked for in "
        f"{path.parent} ($TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to ~/.cache/torch). "
        f"seglib never downloads implicitly. To put it there: run "
        f"`python -m seglib fetch-weights {kind} --arch {arch}` on a machine with internet, or "
        f"`mkdir -p {path.parent} && curl -L -o {path} {url}` (or wget), then copy the file over. "
        f"Offline, `--weights none` (random init) works without any file."
    )
