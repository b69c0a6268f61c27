"""decode_image (stored frame) and load_rgb (upright) on awkward files, through torchvision
where it reads the format and PIL where it does not."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image, ImageOps

from seglib.data import images
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


# --- which library decodes what ------------------------------------------------------------
def _reference(path, upright: bool = False) -> np.ndarray:
    """PIL's RGB of ``path`` (turned upright by its EXIF tag if asked), alpha dropped."""
    with Image.open(path) as image:
        if upright:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"))


def _save(tmp_path, mode: str, fmt: str, **kw) -> Path:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), np.uint8))
    path = tmp_path / f"{mode}.{fmt.lower()}"
    image.convert(mode).save(path, format=fmt, **kw)
    return path


@pytest.fixture
def no_pil(monkeypatch):
    """Fail if the PIL fallback is used."""

    def refuse(path, upright):
        raise AssertionError(f"{path} went through PIL")

    monkeypatch.setattr(images, "_pil_rgb", refuse)


@pytest.fixture
def no_torchvision(monkeypatch):
    """Fail if torchvision decodes."""

    def refuse(*args, **kwargs):
        raise AssertionError("torchvision decoded a file it should leave to PIL")

    monkeypatch.setattr(torchvision.io, "decode_image", refuse)


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("L", "PNG")]
    + [("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("RGB", "WEBP")]
    + [("RGBA", "WEBP")],
)
def test_torchvision_decodes_jpeg_png_and_webp_as_pil_does(tmp_path, no_pil, mode, fmt):
    path = _save(tmp_path, mode, fmt, **({"transparency": 3} if mode == "P" else {}))
    stored = decode_image(path)
    assert stored.dtype == torch.uint8 and stored.shape == (3, 30, 40)
    assert stored.permute(1, 2, 0).is_contiguous()  # channels-last, as documented
    np.testing.assert_array_equal(stored.permute(1, 2, 0).numpy(), _reference(path))
    if fmt != "WEBP":  # torchvision ignores a WebP's EXIF orientation: load_rgb uses PIL
        np.testing.assert_array_equal(load_rgb(path), _reference(path, upright=True))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_pngs_keep_the_high_byte_through_torchvision(tmp_path, no_pil, channels):
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 65536, (30, 40, channels)).astype(np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), samples if channels > 1 else samples[..., 0])
    high = (samples >> 8).astype(np.uint8)
    # cv2 writes BGR(A): RGB is channels 2, 1, 0; alpha is dropped
    expected = np.repeat(high, 3, axis=2) if channels == 1 else high[..., [2, 1, 0]]
    np.testing.assert_array_equal(decode_image(path).permute(1, 2, 0).numpy(), expected)
    np.testing.assert_array_equal(load_rgb(path), expected)


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "BMP"), ("P", "BMP"), ("L", "TIFF"), ("RGBA", "TIFF"), ("CMYK", "TIFF")]
    + [("P", "GIF"), ("RGB", "GIF")],
)
def test_pil_decodes_bmp_tiff_and_gif(tmp_path, no_torchvision, mode, fmt):
    path = _save(tmp_path, mode, fmt, **({"transparency": 5} if fmt == "GIF" else {}))
    stored = decode_image(path)
    assert stored.dtype == torch.uint8 and stored.shape == (3, 30, 40)
    assert stored.permute(1, 2, 0).is_contiguous()
    np.testing.assert_array_equal(stored.permute(1, 2, 0).numpy(), _reference(path))
    np.testing.assert_array_equal(load_rgb(path), _reference(path, upright=True))


def test_a_jpeg_torchvision_refuses_goes_to_pil(tmp_path, monkeypatch):
    path = _save(tmp_path, "RGB", "JPEG")

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported")

    monkeypatch.setattr(torchvision.io, "decode_image", refuse)
    np.testing.assert_array_equal(decode_image(path).permute(1, 2, 0).numpy(), _reference(path))
    np.testing.assert_array_equal(load_rgb(path), _reference(path, upright=True))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_load_rgb_turns_upright_decode_image_keeps_stored(
    tmp_path, fmt, orientation
):
    """Every EXIF orientation: load_rgb gives PIL's exif_transpose, through torchvision for
    JPEG and PNG and through PIL for WebP and TIFF; decode_image leaves the stored pixels."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    extra = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    path = _save(tmp_path, "RGB", fmt, exif=exif.tobytes(), **extra)
    with Image.open(path) as check:
        assert check.getexif().get(0x0112) == orientation
    upright = load_rgb(path)
    assert upright.shape == ((40, 30, 3) if orientation >= 5 else (30, 40, 3))
    np.testing.assert_array_equal(upright, _reference(path, upright=True))
    np.testing.assert_array_equal(decode_image(path).permute(1, 2, 0).numpy(), _reference(path))
