"""Reading image files as RGB uint8, in the frame each use needs.

``decode_image`` reads the stored frame, the one COCO annotates (an EXIF Orientation tag is
not applied): training and evaluation data. ``load_rgb`` turns a photo upright by its EXIF
tag: pictures without annotations, as ``python -m seglib predict`` gets them.

``torchvision.io.decode_image`` (libjpeg-turbo, libpng, libwebp, straight into a tensor)
decodes JPEG (grayscale and CMYK included), PNG (every colour type; 16-bit samples keep
their high byte, as PIL does) and, in the stored frame, WebP. PIL decodes the rest, which
torchvision 0.29 reads wrongly or not at all:

- BMP and TIFF: torchvision refuses them;
- GIF: torchvision paints transparent pixels black, where PIL keeps their palette colour;
- WebP for ``load_rgb``: torchvision ignores a WebP's EXIF orientation;
- any file torchvision refuses (corrupt, or a JPEG colour space libjpeg-turbo lacks): PIL
  then decodes it or names the problem.

Grayscale, CMYK, palette, alpha (dropped, not composited) and 16-bit files all come out RGB,
with the same pixels whichever library decodes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.io
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "decode_image", "load_rgb"]


class ImageError(ValueError):
    """An image file that cannot be decoded (truncated, not an image); the message names it."""


# --- PIL: what torchvision cannot read --------------------------------------------------------
def _open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path`` so truncated files fail here, naming the file."""
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(
            f"image {path} cannot be decoded ({e}); delete it and re-run `python -m seglib subset`"
        ) from e
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode as uint8 [H, W, 3]."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # PIL's own conversion clips these to 0..255 instead of rescaling them.
        arr = np.asarray(image)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr.astype(np.uint32) >> 8
        gray = np.clip(arr, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        # Palette transparency must go through RGBA, or PIL warns and may mis-map colours.
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _pil_rgb(path: Path, upright: bool) -> torch.Tensor:
    """``path`` through PIL, as ``_torchvision_rgb`` returns it."""
    image = _open_image(path)
    if upright:
        image = ImageOps.exif_transpose(image)
    # A copy: PIL's array is read-only, and torch wants to own writable memory.
    return torch.from_numpy(np.array(_to_rgb(image))).permute(2, 0, 1)


# --- torchvision ------------------------------------------------------------------------------
def _file_format(head: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"webp"`` from a file's first 12 bytes; None for the rest."""
    if head.startswith(b"\xff\xd8\xff"):  # SOI marker, then the start of the next marker
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


#: Formats torchvision decodes, in the stored frame and upright (see the module docstring).
_TORCHVISION_FORMATS = {False: {"jpeg", "png", "webp"}, True: {"jpeg", "png"}}


def _torchvision_rgb(data: torch.Tensor, upright: bool) -> torch.Tensor | None:
    """uint8 [3, H, W] RGB of an encoded file, or None when torchvision cannot decode it."""
    try:
        image = torchvision.io.decode_image(
            data, mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=upright
        )
    except RuntimeError:
        return None  # corrupt, or a colour space libjpeg-turbo lacks: PIL decides which
    if image.dtype == torch.uint16:  # a 16-bit PNG; uint16 tensors have no shift operator
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    return image


def _read(path: str | Path, upright: bool) -> torch.Tensor:
    """uint8 [3, H, W] RGB of ``path``, channels-last in memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"image {path} does not exist (re-run `python -m seglib subset` to fetch it)"
        )
    data = torchvision.io.read_file(str(path))
    image = None
    if _file_format(bytes(data[:12].tolist())) in _TORCHVISION_FORMATS[upright]:
        image = _torchvision_rgb(data, upright)
    if image is None:
        image = _pil_rgb(path, upright)
    # torchvision and the PIL path both give channels-last already: then this copies nothing.
    return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)


# --- the two frames ---------------------------------------------------------------------------
def decode_image(path: str | Path) -> torch.Tensor:
    """Read an image as RGB in its stored frame (EXIF orientation not applied).

    Returns:
        uint8 [3, H, W], laid out channels-last in memory as ``torchvision.io.decode_image``
        returns it (so ``.permute(1, 2, 0).numpy()`` is a contiguous [H, W, 3] array, with
        no copy).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: the file cannot be decoded (truncated, not an image); names the file.
    """
    return _read(path, upright=False)


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image as RGB, upright according to its EXIF orientation.

    Args:
        path: any format PIL reads; modes L, LA, P, CMYK, RGBA, I;16, ... are converted.

    Returns:
        uint8 [H, W, 3].

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: the file cannot be decoded (truncated, not an image); names the file.
    """
    return _read(path, upright=True).permute(1, 2, 0).numpy()
