"""server/imaging.py: the one decoder. EXIF handling is checked against Pillow's exif_transpose, conversions
against hand-computed pixels, and the property test holds that no byte string can make it fail other than
with an ImageError of status 400, 415 or 422."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from formats.images import (
    ALPHA_BACKGROUND,
    ImageDecodeError,
    ImageError,
    ImageFormatError,
    ImageLimitError,
    ImageLimits,
    decode_image,
    load_image,
    resize,
)
from tests.support import mutated

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, (40, 24, 3), dtype=np.uint8)  # tall and not square, so a wrong turn shows


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def lossless(fmt: str) -> dict:
    return {"JPEG": {"quality": 100}, "WEBP": {"lossless": True}, "PNG": {}}[fmt]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exif_transpose(fmt, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(PIXELS), fmt, exif=exif.tobytes(), **lossless(fmt))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB")))
    got = decode_image(data)
    assert got.shape == expected.shape
    # Same libjpeg-turbo behind both for JPEG; PNG and lossless WEBP are exact by construction.
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_png_is_exact_rgb():
    assert np.array_equal(decode_image(encode(Image.fromarray(PIXELS), "PNG")), PIXELS)


def test_16_bit_png_is_scaled_not_clipped():
    gray16 = (PIXELS[:, :, 0].astype(np.uint16) * 257) + 100  # 0..65535 range, not 0..255
    ok, png = cv2.imencode(".png", gray16)
    assert ok
    got = decode_image(png.tobytes())
    expected = np.rint(gray16.astype(np.float64) / 257).clip(0, 255).astype(np.uint8)
    assert got.dtype == np.uint8 and got.shape == (40, 24, 3)
    assert np.array_equal(got[:, :, 0], expected) and np.array_equal(got[:, :, 2], expected)


def test_16_bit_rgb_png_keeps_channel_order():
    rgb16 = PIXELS.astype(np.uint16) * 257
    ok, png = cv2.imencode(".png", rgb16[:, :, ::-1])  # OpenCV writes BGR
    assert ok
    assert np.array_equal(decode_image(png.tobytes()), PIXELS)


def test_rgba_png_is_composited_over_the_mean_colour():
    alpha = np.zeros((40, 24, 1), np.uint8)
    alpha[:20] = 255  # top half opaque, bottom half transparent
    data = encode(Image.fromarray(np.concatenate([PIXELS, alpha], axis=2), "RGBA"), "PNG")
    got = decode_image(data)
    assert np.array_equal(got[:20], PIXELS[:20])
    assert np.all(got[20:] == ALPHA_BACKGROUND.astype(np.uint8))


def test_grayscale_becomes_three_equal_channels():
    gray = PIXELS[:, :, 1]
    got = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert got.shape == (40, 24, 3)
    for c in range(3):
        assert np.array_equal(got[:, :, c], gray)


def test_palette_png_decodes_to_its_colours():
    image = Image.fromarray(PIXELS).quantize(16)
    got = decode_image(encode(image, "PNG"))
    assert np.array_equal(got, np.asarray(image.convert("RGB")))


@pytest.mark.parametrize(
    ("data", "kind", "code"),
    [
        (b"", ImageDecodeError, "invalid_image"),
        (b"hello, this is not an image at all", ImageFormatError, "unsupported_media_type"),
        (encode(Image.fromarray(PIXELS), "GIF"), ImageFormatError, "unsupported_media_type"),
        (encode(Image.fromarray(PIXELS), "BMP"), ImageFormatError, "unsupported_media_type"),
        (encode(Image.fromarray(PIXELS), "TIFF"), ImageFormatError, "unsupported_media_type"),
        (encode(Image.fromarray(PIXELS), "JPEG")[:200], ImageDecodeError, "invalid_image"),
        (encode(Image.fromarray(PIXELS), "PNG")[:-40], ImageDecodeError, "invalid_image"),
        (encode(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), "PNG"), ImageLimitError, "image_too_small"),
        (encode(Image.fromarray(np.zeros((200, 20, 3), np.uint8)), "PNG"), ImageLimitError, "bad_aspect_ratio"),
    ],
    ids=["empty", "text", "gif", "bmp", "tiff", "truncated-jpeg", "truncated-png", "too-small", "sliver"],
)
def test_refusals(data, kind, code):
    with pytest.raises(ImageError) as err:
        decode_image(data)
    assert (type(err.value), err.value.code) == (kind, code)


def test_pixel_cap_is_checked_from_the_header_before_decoding():
    # A 65-byte PNG claiming 20000x20000 pixels with no image data behind it: refused on size, not on corruption.
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + iend
    with pytest.raises(ImageError) as err:
        decode_image(bomb, ImageLimits(max_pixels=1_000_000))
    assert (type(err.value), err.value.code) == (ImageLimitError, "image_too_large")


def test_load_image_and_resize_agree_with_decode(tmp_path):
    path = tmp_path / "crop.png"
    path.write_bytes(encode(Image.fromarray(PIXELS), "PNG"))
    got = load_image(str(path), 64, 32)
    assert got.shape == (64, 32, 3)
    assert np.array_equal(got, resize(PIXELS, 64, 32))


SEEDS = [
    encode(Image.fromarray(PIXELS), "JPEG"),
    encode(Image.fromarray(PIXELS), "PNG"),
    encode(Image.fromarray(PIXELS), "WEBP"),
    encode(Image.fromarray(np.concatenate([PIXELS, PIXELS[:, :, :1]], axis=2), "RGBA"), "PNG"),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=512), mutated(SEEDS)))
def test_any_bytes_decode_or_raise_a_client_error(data):
    try:
        rgb = decode_image(data)
    except ImageError as err:
        assert type(err) in (ImageDecodeError, ImageFormatError, ImageLimitError)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 16
