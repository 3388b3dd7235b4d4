"""Image bytes -> RGB uint8 pixels, the one decoder every stage uses.

Training, the export parity gate, bulk indexing and the API all decode through this module, so the
model sees the same pixels in each. OpenCV decodes (libjpeg-turbo, libpng, libwebp); Pillow only
reads headers (format by content, size before decoding, EXIF orientation), which lets us refuse a
decompression bomb or a wrong format before spending any work on it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})  # what a folder walk treats as an image file
# Pillow names a JPEG with a multi-picture (MPF) segment, as many cameras write, "MPO"; it is still a JPEG.
FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}
# Transparent pixels are composited over the ImageNet mean colour: after the model's mean/std
# normalisation they are zero, the least informative input there is.
ALPHA_BACKGROUND = np.array([124.0, 116.0, 104.0], dtype=np.float32)
EXIF_ORIENTATION = 0x0112

Image.MAX_IMAGE_PIXELS = None  # we enforce our own cap, with a clear error instead of a warning


class ImageError(ValueError):
    """Bytes that cannot become model input. ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def with_prefix(self, prefix: str) -> ImageError:
        """The same error with ``prefix`` before its message (which image of a batch it was)."""
        return type(self)(self.code, f"{prefix}{self.message}")


class ImageDecodeError(ImageError):
    """Not decodable: empty, truncated, corrupt or an unreadable header."""


class ImageFormatError(ImageError):
    """A format other than JPEG, PNG or WEBP."""


class ImageLimitError(ImageError):
    """Decodable, but outside the size or aspect-ratio limits."""


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 25_000_000  # width * height, checked from the header before decoding
    min_side: int = 16
    max_aspect: float = 8.0  # max(h/w, w/h): person crops are tall, but not slivers


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageLimitError(
            "image_too_large", f"image has {width}x{height} pixels, more than the limit of {limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise ImageLimitError(
            "image_too_small", f"image is {width}x{height}; both sides must be at least {limits.min_side} pixels"
        )
    if max(width / height, height / width) > limits.max_aspect:
        raise ImageLimitError(
            "bad_aspect_ratio",
            f"image is {width}x{height}; the aspect ratio must be within 1:{limits.max_aspect:g}",
        )


def _orientation(im: Image.Image) -> int:
    # Pillow's PNG getexif() decodes the whole image when the eXIf chunk is not ahead of the pixel data;
    # read only what the header pass already saw, so a PNG bomb costs nothing.
    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = im.getexif()
    return int(exif.get(EXIF_ORIENTATION, 1) or 1)


def _header(data: bytes, limits: ImageLimits) -> tuple[str, int, int, int]:
    """Format, width, height and EXIF orientation (1 = upright) from the header alone; size limits checked."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            if fmt not in FORMATS:
                raise ImageFormatError(
                    "unsupported_media_type",
                    f"image format {fmt or 'unknown'} is not supported; send JPEG, PNG or WEBP",
                )
            _check_size(im.width, im.height, limits)
            return FORMATS[fmt], im.width, im.height, _orientation(im)
    except UnidentifiedImageError:
        raise ImageFormatError("unsupported_media_type", "the upload is not a JPEG, PNG or WEBP image") from None
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types on a broken header
        raise ImageDecodeError("invalid_image", f"the image header could not be read ({type(exc).__name__})") from None


def _check_complete(fmt: str, data: bytes) -> None:
    # OpenCV decodes a truncated JPEG into a grey-padded image with only a warning; refuse it instead.
    if fmt == "jpeg" and data.rstrip(b"\x00").rfind(b"\xff\xd9") < 0:
        raise ImageDecodeError("invalid_image", "the JPEG is truncated (no end-of-image marker)")


def _to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """OpenCV's IMREAD_UNCHANGED output (gray, BGR, BGRA; 8 or 16 bit) -> RGB uint8."""
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(np.float32) / 257.0
    elif pixels.dtype != np.uint8:
        raise ImageDecodeError("invalid_image", f"unsupported pixel type {pixels.dtype}")
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)  # the common case in one C pass (a reversed view copies slowly)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0  # 16-bit input is already scaled to 0..255
        bgr = pixels[:, :, :3].astype(np.float32)
        pixels = bgr * alpha + ALPHA_BACKGROUND[::-1] * (1.0 - alpha)
    rgb = pixels[:, :, 2::-1]
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (values 1..8) so the person stands upright."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return rgb if op is None else np.ascontiguousarray(op(rgb))


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Validate and decode image bytes to an upright (H, W, 3) RGB uint8 array, or raise ImageError."""
    if not data:
        raise ImageDecodeError("invalid_image", "the upload is empty")
    fmt, width, height, orientation = _header(data, limits)
    _check_complete(fmt, data)
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        pixels = None
    if pixels is None or pixels.size == 0 or pixels.shape[:2] != (height, width):
        raise ImageDecodeError("invalid_image", f"the {fmt.upper()} data could not be decoded (corrupt or truncated)")
    return _orient(_to_rgb8(pixels), orientation)


def resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize to the model's input size (the spec's ``resize: bilinear``)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)


def load_image(
    path: str, height: int | None = None, width: int | None = None, limits: ImageLimits = ImageLimits()
) -> np.ndarray:
    """Read a file through the same path as an upload; resize when a size is given."""
    with open(path, "rb") as f:
        rgb = decode_image(f.read(), limits)
    return rgb if height is None or width is None else resize(rgb, height, width)
