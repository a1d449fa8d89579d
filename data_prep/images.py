"""One image: decode, orient, 8-bit RGB, center crop, resize, every lower resolution, encode."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.files import DEFAULT_MAX_FILE_MB, MB
from gan_hr.resolutions import resolutions_between

# Pillow's own default (about 89 Mpixels, e.g. 9459x9459): far above CelebA-HQ's 1 Mpixel and
# most photos, and small enough that a few workers decoding at once stay within memory.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
FORMATS = {"png": "PNG", "jpg": "JPEG"}
# Measured on photos: level 3 is within 5% of level 6's size at about half its encode time.
PNG_COMPRESS_LEVEL = 3

# EXIF orientation tag value -> the transpose that shows the image upright (EXIF 2.3, 4.6.4).
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class ImageSpec:
    """Everything that decides the output bytes of one image."""

    max_res: int
    min_res: int = 4
    image_format: str = "png"
    jpeg_quality: int = 95
    allow_upscale: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_mb: int = DEFAULT_MAX_FILE_MB  # larger inputs are skipped unread

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb * MB

    @property
    def resolutions(self) -> list[int]:
        """min_res, 2*min_res, ..., max_res."""
        return resolutions_between(self.min_res, self.max_res)

    @property
    def extension(self) -> str:
        return self.image_format


class SkipImage(Exception):
    """This input cannot be used; the message is the reason written to the manifest."""


@contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Apply our decompression-bomb limit to Pillow for the duration (it is a global)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _upright(im: Image.Image) -> Image.Image:
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # unreadable EXIF: keep the stored orientation rather than lose the image
        return im
    method = _UPRIGHT.get(orientation)
    return im.transpose(method) if method is not None else im


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> L conversion clips at 255 instead of scaling.
    values = np.asarray(im, dtype=np.float64)
    scaled = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def _float_to_l(im: Image.Image) -> Image.Image:
    values = np.asarray(im, dtype=np.float64)
    # Float images hold either [0, 1] (most TIFF writers) or [0, 255].
    scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
    scaled = np.clip(np.nan_to_num(values) * scale, 0, 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), "L")


def to_rgb8(im: Image.Image) -> Image.Image:
    """8-bit RGB; transparency is composited over white."""
    if im.mode in _HIGH_DEPTH_MODES:
        im = _high_depth_to_l(im)
    elif im.mode == "F":
        im = _float_to_l(im)
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB"):
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise SkipImage(f"unsupported colour mode {im.mode}") from exc


def crop_resize(im: Image.Image, res: int) -> Image.Image:
    """The centered square, resized to res x res with Lanczos."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    out = im.crop(box) if side == res else im.resize((res, res), Image.Resampling.LANCZOS, box=box)
    out.info = {}  # no ICC profile or EXIF carried into the shards
    return out


def load_square(data: bytes, spec: ImageSpec) -> Image.Image:
    """Decode `data` into a max_res x max_res RGB image, or raise SkipImage with the reason.

    Pillow's pixel limit must be set to spec.max_pixels (see `pixel_limit`); its warning for
    sizes between the limit and twice the limit is turned into a rejection here.
    """
    if not data:
        raise SkipImage("empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as src:
                w, h = src.size
                if w * h > spec.max_pixels:
                    raise SkipImage(f"decompression bomb: {w}x{h} is over the limit of "
                                    f"{spec.max_pixels} pixels")
                if min(w, h) < spec.max_res and not spec.allow_upscale:
                    raise SkipImage(f"too small: {w}x{h}, needs a side of at least {spec.max_res}"
                                    " (or --allow-upscale)")
                if src.format == "JPEG":
                    # libjpeg's DCT scaling decodes at 1/2..1/8 size, keeping at least 2*max_res
                    # so the Lanczos step still has detail to work with.
                    src.draft(None, (2 * spec.max_res, 2 * spec.max_res))
                src.load()
                # Finished while the file is open: `src` itself may be the image returned.
                return crop_resize(to_rgb8(_upright(src)), spec.max_res)
        except SkipImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Pillow's message names its own error threshold (twice ours); state ours instead.
            raise SkipImage(f"decompression bomb: over the limit of {spec.max_pixels} pixels"
                            ) from exc
        except UnidentifiedImageError as exc:
            raise SkipImage("not an image: unrecognised format") from exc
        except Exception as exc:  # any decoder failure on hostile input is a skip, never a crash
            raise SkipImage(f"corrupt or truncated: {type(exc).__name__}: {exc}") from exc


def pyramid(im: Image.Image, spec: ImageSpec) -> dict[int, Image.Image]:
    """max_res and each power of two below it down to min_res: the 2x2 box mean of the next."""
    out = {spec.max_res: im}
    res = spec.max_res
    while res > spec.min_res:
        im = im.reduce(2)
        res //= 2
        out[res] = im
    return out


def encode(im: Image.Image, spec: ImageSpec) -> bytes:
    buf = io.BytesIO()
    if spec.image_format == "png":
        im.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        # 4:4:4 chroma: subsampling would smear colour badly at 4x4 .. 32x32.
        im.save(buf, "JPEG", quality=spec.jpeg_quality, subsampling=0)
    return buf.getvalue()


def encode_all(im: Image.Image, spec: ImageSpec) -> dict[int, bytes]:
    return {res: encode(level, spec) for res, level in pyramid(im, spec).items()}
