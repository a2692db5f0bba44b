"""The built-in sandbox backend: real, playable MP4s rendered locally, with no model.

It exists so that a client can be developed and tested end to end against reelgate
without a Google account: every request gets an H.264 (+ AAC) file of the requested
size and length that visibly uses the request (prompt, seed, input images), says on
every frame that it is a sandbox render, and is the same for the same request.

Two prompt directives simulate the failures a client must handle:
``[sandbox:fail]`` fails the job, ``[sandbox:nsfw]`` blocks it as the content policy
would. They are removed from the text drawn on the video; an unknown ``[sandbox:...]``
is left in, so a typo shows on the video instead of silently doing nothing.
"""

from __future__ import annotations

import asyncio
import colorsys
import contextlib
import dataclasses
import hashlib
import math
import multiprocessing
import os
import re
import textwrap
import threading
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from reelgate import catalog
from reelgate.backends.base import BackendBase, BackendError, Capabilities, Job
from reelgate.backends.sandbox.config import SandboxSettings, load_sandbox_settings
from reelgate.media.images import DECODE_BUDGET, adopt_budget, open_for_render
from reelgate.media.video import AUDIO_SAMPLE_RATE, encode_mp4

if TYPE_CHECKING:
    from reelgate.settings import Settings

__all__ = [
    "NSFW_MESSAGE",
    "SandboxBackend",
    "output_size",
    "parse_directives",
    "render_sandbox_video",
]

SANDBOX_NOTICE = "reelgate sandbox - not a real generation"
NSFW_MESSAGE = "The output was blocked by the content policy (sandbox simulation)"

_DIRECTIVE_RE = re.compile(r"\[\s*sandbox\s*:\s*([a-z_-]+)\s*\]", re.IGNORECASE)
DIRECTIVES = frozenset({"fail", "nsfw"})

# x264's fastest preset: the sandbox is for developing clients, where a quick answer
# matters more than a small file ("veryfast" halves the size but costs 30-50% more time).
_X264_PRESET = "ultrafast"
_BACKGROUND_SHORT_SIDE = 144  # the animated field is computed this small, then scaled up


# --- request helpers -------------------------------------------------------------------


def parse_directives(prompt: str) -> tuple[str, frozenset[str]]:
    """Split the known ``[sandbox:...]`` directives off the prompt: (text, their names)."""
    names: set[str] = set()

    def strip(match: re.Match[str]) -> str:
        name = match.group(1).lower()
        if name not in DIRECTIVES:
            return match.group(0)
        names.add(name)
        return " "

    text = _DIRECTIVE_RE.sub(strip, prompt)
    return " ".join(text.split()), frozenset(names)


def output_size(resolution: str, aspect_ratio: str, max_height: int = 0) -> tuple[int, int]:
    """Frame size (width, height) for the job, its short side capped at ``max_height``."""
    width, height = catalog.frame_size(resolution, aspect_ratio)
    short = min(width, height)
    if max_height > 0 and short > max_height:
        scale = max_height / short
        # yuv420p needs even sizes; round each side to the nearest even number.
        width = max(2, round(width * scale / 2) * 2)
        height = max(2, round(height * scale / 2) * 2)
    return width, height


def _digest(*parts: object) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.digest()


def _unit_draw(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (the same on every machine and run)."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2**64


# --- rendering -------------------------------------------------------------------------


def render_sandbox_video(job: Job, out_path: Path, *, fps: int = 24, max_height: int = 0) -> None:
    """Render ``job`` as an MP4 at ``out_path``. Blocking and CPU-bound: run it in a thread.

    The picture depends on the scene's inputs: text-to-video animates a background drawn
    from the prompt and seed; image-to-video starts on the input image (and ends on
    ``last_image`` when given); reference-to-video shows the reference images over the
    background. Raises BackendError when an input image cannot be decoded.
    """
    text, _ = parse_directives(job.prompt)
    width, height = output_size(job.resolution, job.aspect_ratio, max_height)
    frame_count = round(job.duration * fps)
    # Everything random is drawn from this generator, seeded by what the user asked for
    # (never the job id or the clock), so the same request renders the same video.
    seed = _digest(text, job.seed, job.negative_prompt)
    rng = np.random.default_rng(int.from_bytes(seed[:16], "big"))

    overlay = _Overlay.build(job, text, width, height)
    frames = _scene_frames(job, rng, width, height, frame_count, fps, overlay)
    audio = _chord(seed, job.duration) if job.generate_audio else None

    encode_mp4(
        out_path,
        (overlay.apply(frame, i / max(1, frame_count - 1)) for i, frame in enumerate(frames)),
        width=width,
        height=height,
        fps=fps,
        frame_count=frame_count,
        audio=audio,
        preset=_X264_PRESET,
        # Draw the next frames in a second thread while this one is encoded.
        prefetch=3,
    )


def _scene_frames(
    job: Job,
    rng: np.random.Generator,
    width: int,
    height: int,
    frame_count: int,
    fps: int,
    overlay: _Overlay,
) -> Iterator[np.ndarray]:
    inputs = job.inputs
    # Pick by the inputs present, not only by the scene name: validation has already
    # tied the two together, and this way a missing input can never crash a render.
    if job.scene == "reference-to-video" and inputs.images:
        background = _Background(rng, width, height)
        refs = [_decode_image(b, "reference image", (width, height)) for b in inputs.images]
        return _reference_frames(background, refs, rng, width, height, frame_count, fps, overlay)
    if inputs.image is not None:
        first = _cover(_decode_image(inputs.image, "image", (width, height)), width, height)
        if inputs.last_image is not None:
            last = _cover(_decode_image(inputs.last_image, "last_image", (width, height)),
                          width, height)
            return _morph_frames(first, last, rng, frame_count)
        return _ken_burns_frames(first, rng, frame_count)
    return _background_frames(_Background(rng, width, height), frame_count, fps)


# --- input images ----------------------------------------------------------------------


def _decode_image(data: bytes, what: str, size: tuple[int, int]) -> Image.Image:
    # Decoded no larger than the frame needs, under the process-wide decode budget
    # (media/images.py): a 50-megapixel input costs a frame's worth of memory, not 400 MB.
    try:
        return open_for_render(data, size)
    except Exception as e:  # Pillow raises many types for bad data
        raise BackendError(f"sandbox: cannot decode the {what}: {e}") from e


def _cover(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover the frame and crop the middle, as the hosted models frame inputs."""
    return ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS)


def _contain(img: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / img.width, height / img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


def _zoomed(img: Image.Image, zoom: float, pan: tuple[float, float]) -> Image.Image:
    """``img`` seen through a camera zoomed in by ``zoom`` (>= 1) and panned by ``pan``
    (each in [-1, 1], a share of the room the zoom leaves), at the same size."""
    w, h = img.size
    if zoom <= 1.0 + 1e-6:  # sin(pi) is not quite 0: treat a hair's zoom as none
        return img
    cw, ch = w / zoom, h / zoom
    x0 = (w - cw) / 2 * (1 + pan[0])
    y0 = (h - ch) / 2 * (1 + pan[1])
    return img.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))


def _camera_move(rng: np.random.Generator) -> tuple[float, tuple[float, float]]:
    zoom = 1.08 + 0.08 * float(rng.random())
    angle = 2 * math.pi * float(rng.random())
    return zoom, (0.6 * math.cos(angle), 0.6 * math.sin(angle))


def _ken_burns_frames(
    img: Image.Image, rng: np.random.Generator, frame_count: int
) -> Iterator[np.ndarray]:
    # Frame 0 is the image itself; the camera then eases in towards a seeded direction.
    max_zoom, pan = _camera_move(rng)
    for i in range(frame_count):
        t = _smoothstep(i / max(1, frame_count - 1))
        zoom = 1 + (max_zoom - 1) * t
        yield np.array(_zoomed(img, zoom, (pan[0] * t, pan[1] * t)))


def _morph_frames(
    first: Image.Image, last: Image.Image, rng: np.random.Generator, frame_count: int
) -> Iterator[np.ndarray]:
    # A cross-fade under a camera that pushes in and back out again: the zoom is 1 at
    # both ends, so frame 0 is exactly ``first`` and the last frame exactly ``last``. The
    # fade holds still for the first and last 12% so both ends are seen clearly.
    max_zoom, pan = _camera_move(rng)
    hold = 0.12
    for i in range(frame_count):
        t = i / max(1, frame_count - 1)
        mix = _smoothstep((t - hold) / (1 - 2 * hold))
        if mix <= 0.0:
            picture = first
        elif mix >= 1.0:
            picture = last
        else:
            picture = Image.blend(first, last, mix)
        lift = math.sin(math.pi * t)
        yield np.array(_zoomed(picture, 1 + (max_zoom - 1) * lift, (pan[0] * lift, pan[1] * lift)))


# --- generated pictures ----------------------------------------------------------------


class _Background:
    """Soft coloured blobs drifting over a gradient, all chosen by the seed.

    Computed at a small size and scaled up: the field is smooth, so this looks the same
    as computing it at full size and costs a fraction of it.
    """

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.size = (width, height)
        scale = _BACKGROUND_SHORT_SIDE / min(width, height)
        lw, lh = max(2, round(width * scale)), max(2, round(height * scale))
        aspect = width / height
        self.xs = ((np.arange(lw) + 0.5) / lw * aspect)[None, :]
        self.ys = ((np.arange(lh) + 0.5) / lh)[:, None]

        hue = float(rng.random())
        k = 6
        # Hues from a seeded base hue and its complement read as one palette.
        offsets = np.array([0.0, 0.06, -0.06, 0.5, 0.44, 0.12])
        hues = (hue + offsets + rng.uniform(-0.03, 0.03, k)) % 1.0
        sats, vals = rng.uniform(0.5, 0.9, k), rng.uniform(0.7, 1.0, k)
        self.colors = np.array(
            [colorsys.hsv_to_rgb(*hsv) for hsv in zip(hues, sats, vals, strict=True)]
        )
        self.base_top = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.10))
        self.base_bottom = np.array(colorsys.hsv_to_rgb(hue, 0.7, 0.28))
        self.centers = rng.uniform(0.15, 0.85, (k, 2)) * np.array([aspect, 1.0])
        self.amps = rng.uniform(0.1, 0.3, (k, 2)) * np.array([aspect, 1.0])
        self.freqs = rng.uniform(0.05, 0.16, (k, 2))  # cycles per second
        self.phases = rng.uniform(0, 2 * math.pi, (k, 2))
        self.radii = rng.uniform(0.08, 0.2, k) * max(1.0, aspect**0.5)

    def at(self, seconds: float) -> np.ndarray:
        angle = 2 * math.pi * self.freqs * seconds + self.phases
        cx = self.centers[:, 0] + self.amps[:, 0] * np.sin(angle[:, 0])
        cy = self.centers[:, 1] + self.amps[:, 1] * np.sin(angle[:, 1])
        # weights[k, y, x]: a Gaussian blob per colour, glowing over a dark gradient.
        d2 = (self.xs[None] - cx[:, None, None]) ** 2 + (self.ys[None] - cy[:, None, None]) ** 2
        weights = np.exp(-d2 / (2 * self.radii[:, None, None] ** 2))
        blobs = np.einsum("kyx,kc->yxc", weights, self.colors)
        blobs /= weights.sum(axis=0)[..., None] + 1e-6
        coverage = (1 - np.prod(1 - 0.9 * weights, axis=0))[..., None]
        base = self.base_top + (self.base_bottom - self.base_top) * self.ys[..., None]
        colour = base * (1 - coverage) + blobs * coverage
        low = (colour * 255 + 0.5).astype(np.uint8)
        # swscale scales up 3-4x faster than Pillow; on a smooth field the cheapest
        # bilinear filter looks no different.
        big = av.VideoFrame.from_ndarray(low, format="rgb24").reformat(
            *self.size, format="rgb24", interpolation="FAST_BILINEAR"
        )
        return big.to_ndarray()


def _background_frames(background: _Background, frame_count: int, fps: int) -> Iterator[np.ndarray]:
    for i in range(frame_count):
        yield background.at(i / fps)


def _reference_frames(
    background: _Background,
    refs: list[Image.Image],
    rng: np.random.Generator,
    width: int,
    height: int,
    frame_count: int,
    fps: int,
    overlay: _Overlay,
) -> Iterator[np.ndarray]:
    # The references are laid out as framed cards in the space between the banners (side
    # by side in landscape, stacked in portrait) and drift gently, each on its own path.
    short = min(width, height)
    drift = max(2, round(short * 0.02))
    gap = max(4, round(short * 0.03)) + drift
    border = max(2, round(short * 0.008))
    top, bottom = overlay.top_height + gap, height - overlay.bottom_height - gap
    left, right = gap, width - gap
    n = len(refs)
    landscape = width >= height
    cell_w: float
    cell_h: float
    if landscape:
        cell_w, cell_h = (right - left - (n - 1) * gap) / n, bottom - top
    else:
        cell_w, cell_h = right - left, (bottom - top - (n - 1) * gap) / n

    cards: list[tuple[np.ndarray, int, int]] = []
    for j, ref in enumerate(refs):
        inner = _contain(ref, max(1, int(cell_w) - 2 * border), max(1, int(cell_h) - 2 * border))
        card = ImageOps.expand(inner, border=border, fill=(245, 245, 245))
        cw, ch = card.size
        # Centre the card in its cell.
        if landscape:
            x = left + j * (cell_w + gap) + (cell_w - cw) / 2
            y = top + (cell_h - ch) / 2
        else:
            x = left + (cell_w - cw) / 2
            y = top + j * (cell_h + gap) + (cell_h - ch) / 2
        cards.append((np.array(card), round(x), round(y)))
    phases = rng.uniform(0, 2 * math.pi, (n, 2))
    speed = 2 * math.pi * 0.15  # radians per second

    for i in range(frame_count):
        seconds = i / fps
        frame = background.at(seconds)
        for (pixels, x, y), (px, py) in zip(cards, phases, strict=True):
            dx = round(drift * math.sin(speed * seconds + px))
            dy = round(drift * math.sin(speed * 0.8 * seconds + py))
            ch, cw = pixels.shape[:2]
            x0 = min(max(0, x + dx), width - cw)
            y0 = min(max(0, y + dy), height - ch)
            frame[y0 : y0 + ch, x0 : x0 + cw] = pixels
        yield frame


# --- text overlay ----------------------------------------------------------------------

# The default font (Pillow's bundled Aileron) covers ASCII and little else; fold what
# has an ASCII look-alike so common prompts stay readable.
_PUNCTUATION = str.maketrans(
    {"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u00a0": " ", "\u2018": "'", "\u2019": "'"}
)


def _printable(text: str) -> str:
    text = text.translate(_PUNCTUATION)
    folded = []
    for ch in text:
        if ch.isascii():
            folded.append(ch)
            continue
        base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
        folded.append(base or ch)  # no look-alike: keep it (drawn as a box)
    return "".join(folded)


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: int, max_lines: int) -> list[str]:
    """Greedy word wrap by rendered width; the last line ends in "..." if text is left."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for word in words:
        # A word wider than a line (a URL, a language without spaces) is cut into pieces.
        pieces = [word]
        if font.getlength(word) > max_width:
            approx = max(1, int(len(word) * max_width / font.getlength(word)))
            pieces = textwrap.wrap(word, approx, break_long_words=True) or [word]
        for piece in pieces:
            candidate = f"{current} {piece}" if current else piece
            if font.getlength(candidate) <= max_width:
                current = candidate
            else:
                if current:
                    lines.append(current)
                current = piece
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    # Without FreeType, Pillow falls back to a fixed-size bitmap font that ignores size.
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("the sandbox needs Pillow built with FreeType")
    return font


@dataclass
class _Band:
    """Rows [y0, y1) of the overlay, premultiplied, ready to blend onto frames."""

    y0: int
    y1: int
    premultiplied: np.ndarray  # uint16 (rows, width, 3): colour * alpha, alpha in 0..256
    inverse_alpha: np.ndarray  # uint16 (rows, width, 1): 256 - alpha


@dataclass
class _Overlay:
    """The text drawn on every frame, rendered once and blended per frame with numpy.

    A thin banner at the top carries the sandbox mark; one at the bottom carries the
    model and the prompt. Both are kept to the edges so the middle of the picture (the
    user's image, in image-to-video) is left untouched.
    """

    width: int
    height: int
    top_height: int
    bottom_height: int
    bands: list[_Band]
    progress_rows: tuple[int, int]

    @classmethod
    def build(cls, job: Job, text: str, width: int, height: int) -> _Overlay:
        short = min(width, height)
        pad = max(4, round(short * 0.018))
        layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)

        # Top: an amber "SANDBOX" badge and the notice, shrunk until they fit the width.
        size = max(8, round(short * 0.03))
        while True:
            font = _font(size)
            badge_w = round(font.getlength("SANDBOX")) + 2 * pad
            notice_w = round(font.getlength(SANDBOX_NOTICE))
            if badge_w + pad + notice_w + 2 * pad <= width or size <= 8:
                break
            size -= 1
        ascent, descent = font.getmetrics()
        line_h = ascent + descent
        top_h = min(height, line_h + 2 * pad)
        draw.rectangle((0, 0, width, top_h - 1), fill=(0, 0, 0, 150))
        badge = (pad, pad // 2, pad + badge_w, top_h - pad // 2)
        draw.rectangle(badge, fill=(255, 176, 0, 255))
        draw.text(
            (2 * pad, pad),
            "SANDBOX",
            font=font,
            fill=(0, 0, 0, 255),
            stroke_width=max(1, size // 24),
            stroke_fill=(0, 0, 0, 255),
        )
        draw.text((badge[2] + pad, pad), SANDBOX_NOTICE, font=font, fill=(255, 255, 255, 255))

        # Bottom: a smaller line naming the model, then the prompt, wrapped to 3 lines.
        meta_font = _font(max(8, round(short * 0.024)))
        prompt_font = _font(max(8, round(short * 0.034)))
        meta = f"{job.model} | {job.scene} | {width}x{height} | {job.duration}s"
        if job.seed is not None:
            meta += f" | seed {job.seed}"
        meta = _wrap(_printable(meta), meta_font, width - 2 * pad, 1)[0]
        lines = _wrap(_printable(text) or "(no prompt)", prompt_font, width - 2 * pad, 3)
        meta_h = sum(meta_font.getmetrics())
        prompt_line_h = round(sum(prompt_font.getmetrics()) * 1.1)
        bottom_h = 2 * pad + meta_h + pad // 2 + prompt_line_h * len(lines)
        bottom_h = min(bottom_h, height - top_h)  # only matters for absurdly small frames
        y = height - bottom_h
        draw.rectangle((0, y, width, height), fill=(0, 0, 0, 140))
        draw.text((pad, y + pad), meta, font=meta_font, fill=(255, 210, 120, 255))
        y += pad + meta_h + pad // 2
        for line in lines:
            draw.text((pad, y), line, font=prompt_font, fill=(255, 255, 255, 255))
            y += prompt_line_h

        rgba = np.array(layer)
        bands = [cls._band(rgba, 0, top_h), cls._band(rgba, height - bottom_h, height)]
        bar = max(2, round(short / 240))
        return cls(width, height, top_h, bottom_h, bands, (height - bar, height))

    @staticmethod
    def _band(rgba: np.ndarray, y0: int, y1: int) -> _Band:
        alpha = rgba[y0:y1, :, 3:4].astype(np.uint16)
        alpha += alpha >> 7  # 0..255 -> 0..256, so a full alpha copies exactly
        premultiplied = rgba[y0:y1, :, :3].astype(np.uint16) * alpha
        return _Band(y0, y1, premultiplied, 256 - alpha)

    def apply(self, frame: np.ndarray, progress: float) -> np.ndarray:
        """Blend the overlay onto ``frame`` in place (and return it)."""
        for band in self.bands:
            rows = frame[band.y0 : band.y1].astype(np.uint16)
            rows *= band.inverse_alpha
            rows += band.premultiplied
            rows >>= 8
            frame[band.y0 : band.y1] = rows
        # A thin progress bar on the bottom edge shows where playback is.
        y0, y1 = self.progress_rows
        frame[y0:y1, : round(self.width * progress)] = (255, 176, 0)
        return frame


# --- audio -----------------------------------------------------------------------------

# Semitone offsets of the chords a seed can pick: major, minor, sus2, major 7th, minor 7th.
_CHORDS = ((0, 4, 7, 12), (0, 3, 7, 12), (0, 2, 7, 12), (0, 4, 7, 11), (0, 3, 7, 10))


def _chord(seed: bytes, duration_s: float) -> np.ndarray:
    """A soft seeded chord: a sustained pad plus a slow arpeggio, faded in and out.

    Returns planar stereo float32 of shape (2, samples) at AUDIO_SAMPLE_RATE.
    """
    rng = np.random.default_rng(int.from_bytes(seed[16:], "big"))
    sr = AUDIO_SAMPLE_RATE
    n = round(duration_s * sr)
    t = np.arange(n) / sr
    root = 110.0 * 2 ** (int(rng.integers(0, 12)) / 12)  # A2..G#3
    chord = _CHORDS[int(rng.integers(0, len(_CHORDS)))]
    freqs = [root * 2 ** (s / 12) for s in chord]

    left = np.zeros(n)
    right = np.zeros(n)
    for j, f in enumerate(freqs):
        # Slightly detuned between the channels for width; a slow tremolo keeps it alive.
        tremolo = 0.8 + 0.2 * np.sin(2 * np.pi * (0.2 + 0.07 * j) * t + j)
        left += tremolo * (np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t))
        right += tremolo * (np.sin(2 * np.pi * (f + 0.4) * t) + 0.2 * np.sin(4 * np.pi * f * t))
    pad = np.stack([left, right]) / len(freqs)

    # Arpeggio: one octave up, a plucked note every half second, panned left and right.
    notes = np.zeros((2, n))
    step = sr // 2
    decay = np.exp(-np.arange(sr) / (0.35 * sr))
    for k, start in enumerate(range(0, n, step)):
        f = 2 * freqs[int(rng.integers(0, len(freqs)))]
        length = min(len(decay), n - start)
        tone = np.sin(2 * np.pi * f * np.arange(length) / sr) * decay[:length]
        pan = 0.3 if k % 2 else 0.7
        notes[0, start : start + length] += (1 - pan) * tone
        notes[1, start : start + length] += pan * tone

    audio = 0.18 * pad + 0.22 * notes
    fade_in, fade_out = min(n, round(0.4 * sr)), min(n, round(0.8 * sr))
    envelope = np.ones(n)
    envelope[:fade_in] = np.linspace(0.0, 1.0, fade_in)
    envelope[n - fade_out :] *= np.linspace(1.0, 0.0, fade_out)
    audio *= envelope
    peak = float(np.abs(audio).max()) or 1.0
    return (audio * min(1.0, 0.5 / peak)).astype(np.float32)


# --- the backend -----------------------------------------------------------------------


async def _no_upstream(ref: str) -> None:
    return None


async def _no_progress(step: int, steps: int) -> bool:
    return False


def _exit_with(parent: int) -> None:
    # A pool's worker holds both ends of its task pipe, so it never sees EOF when the
    # server is SIGKILLed; without this it would wait for work forever.
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def _init_render_process(server_pid: int, capacity: int, cond: object, used: object) -> None:
    # Renders are batch work; the server process answers people. Lower priority here keeps
    # the server's answers prompt when the CPUs are busy.
    with contextlib.suppress(OSError):
        os.nice(10)
    adopt_budget(capacity, cond, used)
    # The server's pid comes from the server, not os.getppid(): a worker that starts after
    # the server has already died (killed while its pool was spawning) would read its new
    # parent (init) here and wait for that to change forever.
    threading.Thread(target=_exit_with, args=(server_pid,), daemon=True).start()


def _render_in_child(job: Job, out_path: Path, fps: int, max_height: int) -> None:
    render_sandbox_video(job, out_path, fps=fps, max_height=max_height)


class SandboxBackend(BackendBase):
    """Renders every job locally (see the module docstring). No network, no keys.

    Renders run in a pool of ``processes`` worker processes, not in threads of the server:
    a render is CPU-bound Python and numpy that holds the GIL most of the time, and in a
    thread it starved the event loop that answers requests (profiled: with six renders in
    threads the loop held the GIL a fifth of the time, and held sync-mode clients heard of
    their predictions' ends seconds late). ``processes=0`` renders in a thread instead."""

    name = "sandbox"

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        failure_rate: float = 0.0,
        max_height: int = 0,
        fps: int = 24,
        processes: int = 0,
        concurrency: int = 2,
    ) -> None:
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.latency_s = max(0.0, latency_s)
        self.failure_rate = failure_rate
        self.max_height = max(0, max_height)
        self.fps = fps
        self.processes = max(0, processes)
        # Renders are CPU work: about one per core (worker_concurrency, 2 by default).
        self.concurrency = max(1, concurrency)
        self._pool: ProcessPoolExecutor | None = None
        if self.processes:
            # Now, before any decode can be waiting on the process-local lock.
            self._budget = DECODE_BUDGET.share()

    @classmethod
    def from_settings(cls, settings: Settings,
                      ss: SandboxSettings | None = None) -> SandboxBackend:
        """The sandbox of ``ss`` (default: the process's REELGATE_SANDBOX_* settings), as
        many renders at once as the main settings give it."""
        ss = ss or load_sandbox_settings()
        concurrency = settings.backend_concurrency.get("sandbox", settings.worker_concurrency)
        return cls(
            latency_s=ss.latency_s,
            failure_rate=ss.failure_rate,
            max_height=ss.max_height,
            fps=ss.fps,
            processes=(ss.render_processes if ss.render_processes is not None
                       else min(concurrency, os.cpu_count() or 1)),
            concurrency=concurrency,
        )

    def capabilities(self, model: str) -> Capabilities:
        # Everything the catalog accepts, at exactly the asked size and length (the short
        # side capped by REELGATE_SANDBOX_MAX_HEIGHT, when the operator sets one).
        return Capabilities(exact_output=not self.max_height)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the server has threads (uvloop's, aiosqlite's) whose locks a
            # forked child would inherit in whatever state they were in.
            self._pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_render_process, initargs=(os.getpid(), *self._budget),
            )
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)

    async def generate(self, job: Job, workdir: Path) -> Path:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        _, directives = parse_directives(job.prompt)
        if "nsfw" in directives:
            raise BackendError(NSFW_MESSAGE, nsfw=True)
        if "fail" in directives:
            raise BackendError("sandbox: simulated failure (the prompt asked for it)")
        # Drawn from the job id, so one job fails or succeeds the same way every attempt
        # while different jobs spread over the configured rate.
        if self.failure_rate and _unit_draw("sandbox-failure", job.id) < self.failure_rate:
            raise BackendError(f"sandbox: simulated failure (failure_rate={self.failure_rate:g})")
        workdir.mkdir(parents=True, exist_ok=True)
        out_path = workdir / f"{job.id}.mp4"
        if not self.processes:
            await asyncio.to_thread(
                render_sandbox_video, job, out_path, fps=self.fps, max_height=self.max_height
            )
            return out_path
        # The job's callbacks (checkpoint, intend, ...) are closures over the runner: not for
        # another process, and unused here (the sandbox has no upstream). Only data crosses.
        callbacks: dict[str, Any] = {
            f.name: _no_upstream for f in dataclasses.fields(job)
            if callable(getattr(job, f.name))
        }
        portable = dataclasses.replace(job, **callbacks)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor(), _render_in_child, portable, out_path,
                                       self.fps, self.max_height)
        except BrokenProcessPool:
            # A render process died (killed, out of memory): start a fresh pool next time.
            self._pool = None
            raise BackendError("sandbox: the render process died; please try again",
                               retryable=True) from None
        return out_path
