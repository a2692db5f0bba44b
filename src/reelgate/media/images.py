"""Check that user-supplied bytes are an image we can safely decode."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from reelgate.errors import InvalidInput

# Only the common web formats: every extra Pillow plugin is extra parser attack surface, and
# nothing downstream needs TIFF, PSD, EPS (which would run Ghostscript) and the like.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

DEFAULT_MAX_PIXELS = 50_000_000


def check_image(
    data: bytes, *, field: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[str, int, int]:
    """Decode ``data`` fully and return ``(format, width, height)``, format in lower case.

    Raises ``InvalidInput(field, ...)`` when the bytes are not a JPEG/PNG/WEBP/GIF/BMP image
    that decodes completely, or when the image has more than ``max_pixels`` pixels.
    CPU-bound for large images: call it from a worker thread in async code.
    """
    if not data:
        raise InvalidInput(field, "is not a decodable image (the file is empty)")
    try:
        # First pass reads the header only, so the size guard runs before any pixel data is
        # decompressed: a few KiB of PNG can claim 100000x100000 pixels (a decompression bomb).
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            fmt = im.format or ""
            width, height = im.size
            _check_pixels(width, height, field=field, max_pixels=max_pixels)
            # verify() checks the structure (chunk CRCs for PNG) without decoding pixels...
            im.verify()
        # ...but leaves the image unusable and misses truncated or corrupt pixel data, so
        # decode it for real from a fresh handle.
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            im.load()
    except InvalidInput:
        raise
    except Image.DecompressionBombError:
        # Pillow's own global guard fired while reading the header (> 2x MAX_IMAGE_PIXELS).
        raise InvalidInput(
            field, f"is too large to decode (the limit is {max_pixels} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise InvalidInput(
            field,
            "is not a decodable image (not a JPEG, PNG, WEBP, GIF or BMP file)",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # Pillow reports corrupt and truncated data with any of these.
        detail = str(exc) or type(exc).__name__
        raise InvalidInput(field, f"is not a decodable image ({detail})") from None
    return fmt.lower(), width, height


def _check_pixels(width: int, height: int, *, field: str, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(field, f"is not a decodable image (it claims {width}x{height} pixels)")
    if width * height > max_pixels:
        raise InvalidInput(
            field,
            f"is too large to decode ({width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels)",
        )
