"""Check that user-supplied bytes are an image we can safely decode, and decode them for
use, under a memory budget.

A few hundred KiB of PNG can hold a 7000x7000 picture: 196 MB once decoded, twice that
while converted. Three of them in one request, decoded at once at intake and again, at full
size, by the renderer, took a server to 2.9 GB (issue 15). So:

* the pixel count is checked from the header, before any pixel is decoded;
* every full decode takes its estimated bytes from one process-wide budget
  (``DECODE_BUDGET``), so concurrent decodes, from any number of requests and workers,
  wait for each other instead of adding up;
* a picture for rendering is decoded no larger than the output needs: JPEG's ``draft()``
  decodes at 1/2, 1/4 or 1/8 scale directly, other formats are ``reduce()``d right after
  decoding and the full-size frame is released at once.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import threading
from collections.abc import Iterator
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from reelgate.errors import InvalidInput

# Only the common web formats: every extra Pillow plugin is extra parser attack surface, and
# nothing downstream needs TIFF, PSD, EPS (which would run Ghostscript) and the like.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

DEFAULT_MAX_PIXELS = 50_000_000

_ORIENTATION = 0x0112
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the picture by 90 degrees


class DecodeBudget:
    """A semaphore counted in bytes, for threads and, once ``share()``d, for processes
    (decoding runs in worker threads, and sandbox renders in worker processes).

    A request larger than the whole budget still runs, alone, so one near-limit image is
    never refused by the budget, only made to wait until nothing else is decoding."""

    def __init__(self, capacity: int | None, *, shared: tuple[Any, Any] | None = None) -> None:
        # None: REELGATE_IMAGE_DECODE_BUDGET_MB, read when first needed.
        self._capacity = None if capacity is None else max(1, capacity)
        if shared is None:
            self._cond: Any = threading.Condition()
            self._used: Any = _Counter()
        else:
            self._cond, self._used = shared

    @property
    def capacity(self) -> int:
        if self._capacity is None:
            mb = int(os.environ.get("REELGATE_IMAGE_DECODE_BUDGET_MB", "256"))
            self._capacity = max(1, mb * 1024 * 1024)
        return self._capacity

    def share(self) -> tuple[int, Any, Any]:
        """Switch to a lock and counter that child processes can use too, and return what
        ``adopt()`` needs in a child (pass it to the pool's initializer)."""
        if isinstance(self._used, _Counter):
            ctx = multiprocessing.get_context("spawn")
            cond, used = ctx.Condition(), ctx.RawValue("q", 0)
            with self._cond:
                used.value = self._used.value
                self._cond, self._used = cond, used
        return self.capacity, self._cond, self._used

    @contextlib.contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        want = min(max(0, nbytes), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self._used.value + want <= self.capacity)
            self._used.value += want
        try:
            yield
        finally:
            with self._cond:
                self._used.value -= want
                self._cond.notify_all()


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


# 256 MiB: one 50-megapixel RGBA frame (200 MB) fits; two do not, so the largest inputs are
# decoded one at a time. REELGATE_IMAGE_DECODE_BUDGET_MB changes it (read once, at the first
# decode rather than at import, so a process whose environment is set after its imports
# gets its own: the budget belongs to the process, and to the render processes it shares
# it with).
DECODE_BUDGET = DecodeBudget(None)


def adopt_budget(capacity: int, cond: Any, used: Any) -> None:
    """In a child process: decode under the parent's budget (see DecodeBudget.share)."""
    global DECODE_BUDGET
    DECODE_BUDGET = DecodeBudget(capacity, shared=(cond, used))


# Pillow stores a decoded image in blocks of 16 MiB by default, under glibc's largest
# automatic mmap threshold (32 MiB): after the first big free, such blocks come from the
# heap, and the heap keeps them after the image is gone (measured: 170-225 MB held after
# decoding one 7000x7000 PNG, against 15-30 MB with 64 MiB blocks). Blocks above the
# threshold are mmap'd and handed back to the system when the image is released.
Image.core.set_block_size(64 * 1024 * 1024)


def decoded_bytes(im: Image.Image) -> int:
    """What decoding ``im`` will allocate: Pillow keeps 1 byte per pixel for L/P/1 and 4 for
    RGB (stored as RGBX), RGBA, CMYK, I and F; 2 for the 16-bit modes."""
    w, h = im.size
    per_pixel = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}.get(im.mode, 4)
    return w * h * per_pixel


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
        # decode it for real from a fresh handle: JPEG at 1/8 scale (the whole entropy
        # stream is still decoded, 1/64 of the memory), the others within the budget.
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            with DECODE_BUDGET.hold(decoded_bytes(im)):
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


def open_for_render(data: bytes, size: tuple[int, int], *,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode ``data`` as an upright RGB picture at least ``size`` (width, height) in both
    directions where the source allows, and no larger than needed for that (within a
    factor of two), for a renderer that scales it to cover or fit ``size``. Transparent
    areas are laid on dark grey. Raises what Pillow raises for bad data."""
    im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    try:
        w, h = im.size
        if w <= 0 or h <= 0 or w * h > max_pixels:
            raise ValueError(f"the image has {w}x{h} pixels; the limit is {max_pixels}")
        tw, th = size
        if im.getexif().get(_ORIENTATION) in _SWAPS_SIDES:
            tw, th = th, tw  # stored sideways: compare with the target turned the same way
        # The largest whole factor that still leaves both sides >= the target.
        factor = max(1, min(w // max(1, tw), h // max(1, th)))
        if im.format == "JPEG" and factor > 1:
            # Decodes at 1/2, 1/4 or 1/8 of the size straight from the DCT data.
            im.draft("RGB", (w // factor, h // factor))
        # Decode, shrink and convert under the budget; the full-size frame is dropped as
        # soon as the smaller one exists. Twice the estimate: a conversion copies.
        with DECODE_BUDGET.hold(2 * decoded_bytes(im)):
            im.load()
            factor = max(1, min(im.width // max(1, tw), im.height // max(1, th)))
            small = im.reduce(factor) if factor > 1 else im.copy()
            im.close()
            upright = ImageOps.exif_transpose(small)
            if upright.mode in ("RGBA", "LA", "PA") or (
                upright.mode == "P" and "transparency" in upright.info
            ):
                rgba = upright.convert("RGBA")
                back = Image.new("RGBA", rgba.size, (32, 32, 32, 255))
                return Image.alpha_composite(back, rgba).convert("RGB")
            return upright.convert("RGB")
    finally:
        im.close()
