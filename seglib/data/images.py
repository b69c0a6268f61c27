"""Reading image files as RGB uint8, in the frame each use needs.

``decode_image`` reads the stored frame, the one COCO annotates (an EXIF Orientation tag is
not applied): training and evaluation data. ``load_rgb`` turns a photo upright by its EXIF
tag: pictures without annotations, as ``python -m seglib predict`` gets them. JPEGs are
decoded by ``torchvision.io.decode_jpeg`` (libjpeg-turbo straight into a tensor); other
formats, and JPEGs it cannot read, by PIL. Grayscale, CMYK, palette, alpha and 16-bit files
all come out RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg, read_file

__all__ = ["ImageError", "decode_image", "load_rgb"]


class ImageError(ValueError):
    """An image file that cannot be decoded (truncated, not an image); the message names it."""


def _open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path`` so truncated files fail here, naming the file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"image {path} does not exist (re-run `python -m seglib subset` to fetch it)"
        )
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


#: The first bytes of every JPEG file (SOI marker, then the start of the next marker).
_JPEG_MAGIC = b"\xff\xd8\xff"


def decode_image(path: str | Path) -> torch.Tensor:
    """Read an image as RGB in its stored frame (EXIF orientation not applied).

    JPEGs go through ``torchvision.io.decode_jpeg``; other formats, and any JPEG it cannot
    read, through PIL (which also names the problem when the file is corrupt).

    Returns:
        uint8 [3, H, W], laid out channels-last in memory as ``decode_jpeg`` returns it (so
        ``.permute(1, 2, 0).numpy()`` is a contiguous [H, W, 3] array, with no copy).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: the file cannot be decoded (truncated, not an image); names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"image {path} does not exist (re-run `python -m seglib subset` to fetch it)"
        )
    data = read_file(str(path))
    if bytes(data[:3].tolist()) == _JPEG_MAGIC:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # corrupt, or a colour space libjpeg-turbo lacks: PIL decides which
    # A copy: PIL's array is read-only, and torch wants to own writable memory.
    return torch.from_numpy(np.array(_to_rgb(_open_image(path)))).permute(2, 0, 1)


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
    image = _open_image(Path(path))
    return _to_rgb(ImageOps.exif_transpose(image))
