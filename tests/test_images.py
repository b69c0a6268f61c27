"""decode_image (stored frame, torchvision or PIL) and load_rgb (upright) on awkward files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seglib.data.images import ImageError, decode_image, load_rgb

# torchvision 0.29 warns on every call of its image decoders (TorchCodec is to replace them).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _quadrants(h=30, w=40) -> np.ndarray:
    """Red top-left quadrant on blue, so orientation mistakes show."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 2] = 200
    arr[: h // 2, : w // 2] = (220, 0, 0)
    return arr


@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "RGBA", "I;16"])
def test_load_rgb_converts_any_mode_to_rgb(tmp_path, mode):
    base = Image.fromarray(_quadrants())
    if mode == "I;16":
        gray = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
        image, suffix = Image.fromarray(gray), ".png"
    elif mode == "P":
        image, suffix = base.convert("P"), ".png"
        image.info["transparency"] = 0
    else:
        image, suffix = base.convert(mode), (".jpg" if mode in ("L", "CMYK") else ".png")
    path = tmp_path / f"img{suffix}"
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode or (mode == "I;16" and reopened.mode == "I")
    arr = load_rgb(path)
    assert arr.dtype == np.uint8 and arr.shape == (30, 40, 3)
    top_left, bottom_right = arr[3, 3].astype(int), arr[-3, -3].astype(int)
    assert abs(top_left - bottom_right).sum() > 30, "the quadrants should differ"
    if mode == "I;16":  # 16-bit values are rescaled, not clipped to white
        np.testing.assert_allclose(arr[3, 3], np.asarray(base.convert("L"))[3, 3], atol=1)


def test_load_rgb_applies_exif_orientation(tmp_path):
    upright = _quadrants()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        path, exif=exif.tobytes(), quality=95
    )
    arr = load_rgb(path)
    assert arr.shape == upright.shape
    np.testing.assert_allclose(arr[3, 3], upright[3, 3], atol=25)
    np.testing.assert_allclose(arr[-3, -3], upright[-3, -3], atol=25)


def test_load_rgb_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_rgb(tmp_path / "nope.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="text.jpg"):
        load_rgb(tmp_path / "text.jpg")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        good
    )
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:600])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_rgb(tmp_path / "cut.jpg")


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "PNG"])
def test_decode_image_matches_pil_for_jpeg_modes_and_png(tmp_path, mode):
    """libjpeg-turbo through torchvision gives PIL's pixels for RGB, grayscale and CMYK JPEGs;
    other formats go through PIL itself."""
    base = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    ).convert("RGB")
    if mode == "PNG":
        path = tmp_path / "img.png"
        base.save(path)
    else:
        path = tmp_path / "img.jpg"
        base.convert(mode).save(path, quality=90)
    image = decode_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    with Image.open(path) as reference:
        expected = np.asarray(reference.convert("RGB"))
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), expected)


def test_decode_image_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        decode_image(tmp_path / "nope.jpg")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        good
    )
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:600])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.jpg", "text.jpg"):
        with pytest.raises(ImageError, match=name):
            decode_image(tmp_path / name)
