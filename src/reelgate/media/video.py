"""Encode and inspect MP4 files with PyAV (FFmpeg): no ffmpeg binary is needed.

``encode_mp4`` writes what the sandbox renders; ``probe_video`` and ``check_video`` read
any MP4 back with the real demuxer and decoder, so tests and the delivery path look at
the file the user gets, not at what we meant to write.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import av.error
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "InvalidVideo",
    "VideoInfo",
    "check_video",
    "encode_mp4",
    "poster_frame",
    "probe_video",
    "read_frame",
]

AUDIO_SAMPLE_RATE = 48_000

_T = TypeVar("_T")

# FFmpeg names the demuxer of every ISO-BMFF flavour this way.
_MP4_FORMAT_NAMES = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2"})

_DECODE_INTERPOLATION = int(
    Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
)


@dataclass(frozen=True)
class VideoInfo:
    container: str  # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    video_codec: str  # e.g. "h264"
    width: int
    height: int
    duration_s: float  # of the video stream
    fps: float
    frames: int  # video frames actually in the file
    audio_codec: str | None  # None when there is no audio stream
    audio_channels: int
    audio_sample_rate: int
    audio_duration_s: float = 0.0  # of the audio stream, as its track header says

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


class InvalidVideo(Exception):
    """The file is not a video we can deliver; the message says why."""


# --- reading -------------------------------------------------------------------------


def probe_video(path: Path) -> VideoInfo:
    """Read the facts of a video file by demuxing it (and decoding its first frame).

    Frames are counted from the packets rather than trusted from the header, and at
    least one frame is decoded, so a file whose header looks fine but holds no picture
    fails here. Raises InvalidVideo for anything FFmpeg cannot read.
    """
    try:
        container = av.open(str(path), "r")
    except (av.error.FFmpegError, OSError) as e:
        raise InvalidVideo(f"not a readable video file: {e}") from e
    with container:
        if not container.streams.video:
            raise InvalidVideo("the file has no video stream")
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if container.streams.audio else None
        vctx = vstream.codec_context

        frames = 0
        first_pts: int | None = None
        end_pts: int | None = None
        decoded_one = False
        try:
            for packet in container.demux(vstream):
                if packet.size == 0:  # the flush packet demux() yields at the end
                    continue
                frames += 1
                if packet.pts is not None:
                    first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                    end = packet.pts + (packet.duration or 0)
                    end_pts = end if end_pts is None else max(end_pts, end)
                if not decoded_one:
                    # Decoders may hold frames back (B-frame reordering), so keep feeding
                    # packets until one frame comes out.
                    decoded_one = bool(vctx.decode(packet))
            if frames and not decoded_one:
                decoded_one = bool(vctx.decode(None))
        except av.error.FFmpegError as e:
            raise InvalidVideo(f"the video stream cannot be decoded: {e}") from e

        if not decoded_one:
            raise InvalidVideo("the video stream holds no decodable frame")

        time_base = vstream.time_base or Fraction(1, 1)
        if vstream.duration:
            duration_s = float(vstream.duration * time_base)
        elif first_pts is not None and end_pts is not None:
            duration_s = float((end_pts - first_pts) * time_base)
        elif container.duration:
            duration_s = container.duration / av.time_base
        else:
            duration_s = 0.0

        rate = vstream.average_rate or vstream.guessed_rate
        fps = float(rate) if rate else (frames / duration_s if duration_s else 0.0)

        return VideoInfo(
            container=container.format.name,
            video_codec=vctx.name,
            width=vctx.width,
            height=vctx.height,
            duration_s=duration_s,
            fps=fps,
            frames=frames,
            audio_codec=astream.codec_context.name if astream else None,
            audio_channels=astream.codec_context.layout.nb_channels if astream else 0,
            audio_sample_rate=astream.codec_context.sample_rate if astream else 0,
            audio_duration_s=_stream_duration_s(astream) if astream else 0.0,
        )


def _stream_duration_s(stream: av.stream.Stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return 0.0


def check_video(path: Path, *, max_bytes: int | None = None) -> VideoInfo:
    """Accept only what we promise to deliver: an MP4 with a decodable H.264 stream.

    Raises InvalidVideo with a message fit for a log or an error response.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise InvalidVideo(f"cannot read the video file: {e}") from e
    if size == 0:
        raise InvalidVideo("the video file is empty")
    # Checked before opening, so an oversized file costs no demuxing.
    if max_bytes is not None and size > max_bytes:
        raise InvalidVideo(f"the video is {size} bytes, over the limit of {max_bytes} bytes")

    info = probe_video(path)
    if not _MP4_FORMAT_NAMES.intersection(info.container.split(",")):
        raise InvalidVideo(f"the file is not an MP4 (container format {info.container!r})")
    if info.video_codec != "h264":
        raise InvalidVideo(f"the video stream is {info.video_codec!r}, not H.264")
    if info.width <= 0 or info.height <= 0:
        raise InvalidVideo("the video stream has no frame size")
    return info


def read_frame(path: Path, index: int = 0) -> Image.Image:
    """Decode frame ``index`` (0-based, in display order) as an RGB image.

    Raises IndexError when the video has fewer frames.
    """
    if index < 0:
        raise IndexError("frame index must be >= 0")
    with av.open(str(path), "r") as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                # The conversion follows the colour tags of the stream (BT.709 for ours).
                # Full chroma interpolation with accurate rounding: swscale's default
                # path is off by about 2 levels per channel, which blurs comparisons.
                rgb = frame.to_ndarray(format="rgb24", interpolation=_DECODE_INTERPOLATION)
                return Image.fromarray(rgb, "RGB")
    raise IndexError(f"the video has no frame {index}")


def poster_frame(video: Path, dest: Path, *, at_s: float = 1.0, max_width: int = 480) -> Path:
    """Write a JPEG still of ``video`` (the first frame at or after ``at_s``, or the last
    one of a shorter video), at most ``max_width`` wide: the thumbnail lists show.

    Decodes from the start instead of seeking: our videos are seconds long, and a seek
    lands on a keyframe that may be far from ``at_s``."""
    chosen = None
    with av.open(str(video), "r") as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            chosen = frame
            if frame.time is not None and frame.time >= at_s:
                break
        if chosen is None:
            raise InvalidVideo("the video has no frames")
        image = chosen.to_image()
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))))
    dest.parent.mkdir(parents=True, exist_ok=True)
    image.save(dest, "JPEG", quality=80)
    return dest


# --- writing -------------------------------------------------------------------------


def encode_mp4(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    fps: int,
    frame_count: int,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    crf: int = 23,
    preset: str = "veryfast",
    threads: int = 2,
    prefetch: int = 0,
) -> None:
    """Write ``frames`` (uint8 arrays of shape (height, width, 3), RGB) as an H.264 MP4.

    Exactly ``frame_count`` frames must come, each shown for 1/fps seconds, so the video
    lasts frame_count/fps seconds. ``audio``, if given, is float samples in [-1, 1] of
    shape (2, n) (planar stereo); it is cut or padded with silence to the same length as
    the video and encoded as AAC.

    ``threads`` is fixed rather than "auto" on purpose: x264's output depends on its
    thread count, and a fixed count makes the same input give the same bytes on every
    machine. The file is written beside ``path`` and renamed into place when complete,
    so a crash never leaves a truncated MP4 under the final name.

    With ``prefetch`` > 0 the ``frames`` iterable runs in a background thread, up to that
    many frames ahead, so drawing the next frame overlaps encoding this one (numpy,
    Pillow and FFmpeg all release the GIL for their heavy work).
    """
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    if frame_count <= 0:
        raise ValueError("frame_count must be positive")

    path = Path(path)
    # Unique per process and thread, so concurrent renders never share a temporary.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    source = _prefetched(iter(frames), prefetch) if prefetch > 0 else frames
    try:
        _encode(
            tmp,
            source,
            width=width,
            height=height,
            fps=fps,
            frame_count=frame_count,
            audio=audio,
            sample_rate=sample_rate,
            crf=crf,
            preset=preset,
            threads=threads,
        )
        os.replace(tmp, path)
    finally:
        if isinstance(source, Generator):
            source.close()  # stops the producer thread if encoding failed midway
        tmp.unlink(missing_ok=True)


def _prefetched(items: Iterator[_T], depth: int) -> Generator[_T, None, None]:
    """Yield what ``items`` yields, computed in a thread up to ``depth`` items ahead."""
    slots: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(done: bool, value: object) -> bool:
        # Time out now and then to notice a consumer that has gone away.
        while not stop.is_set():
            try:
                slots.put((done, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(False, item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            put(True, e)
        else:
            put(True, None)

    thread = threading.Thread(target=produce, name="reelgate-frames", daemon=True)
    thread.start()
    try:
        while True:
            done, value = slots.get()
            if done:
                if isinstance(value, BaseException):
                    raise value
                return
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def _encode(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    fps: int,
    frame_count: int,
    audio: np.ndarray | None,
    sample_rate: int,
    crf: int,
    preset: str,
    threads: int,
) -> None:
    # +faststart moves the index to the front so browsers can start playing (and seek)
    # before the whole file has arrived.
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        vstream = out.add_stream(
            "libx264",
            rate=fps,
            options={"crf": str(crf), "preset": preset, "threads": str(threads)},
        )
        vstream.width = width
        vstream.height = height
        vstream.pix_fmt = "yuv420p"
        # Tag BT.709 (limited range), the colours we convert with below: untagged HD is
        # guessed differently by different players.
        vctx = vstream.codec_context
        vctx.colorspace = 1  # AVCOL_SPC_BT709
        vctx.color_primaries = 1  # AVCOL_PRI_BT709
        vctx.color_trc = 1  # AVCOL_TRC_BT709
        vctx.color_range = 1  # AVCOL_RANGE_MPEG

        astream = None
        audio_frames: list[av.AudioFrame] = []
        samples_per_video_frame = Fraction(sample_rate, fps)
        if audio is not None:
            astream = out.add_stream("aac", rate=sample_rate, layout="stereo")
            astream.bit_rate = 128_000
            samples = round(frame_count * samples_per_video_frame)
            audio_frames = _audio_frames(
                _fit_audio(audio, samples), sample_rate, astream.codec_context.frame_size
            )
        next_audio = 0

        n = 0
        for array in frames:
            if n >= frame_count:
                raise ValueError(f"more than the {frame_count} frames promised")
            if array.shape != (height, width, 3) or array.dtype != np.uint8:
                raise ValueError(
                    f"frame {n} is {array.shape} {array.dtype}, want ({height}, {width}, 3) uint8"
                )
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame = frame.reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG"
            )
            # pts counts frames: the encoder's time base is 1/fps (from ``rate``).
            frame.pts = n
            out.mux(vstream.encode(frame))
            n += 1
            # Feed the audio along with the video, so the muxer interleaves the two as it
            # goes instead of holding the whole video back until the audio arrives.
            if astream is not None:
                until = n * samples_per_video_frame
                # (_audio_frames sets every frame's pts; PyAV types it as optional.)
                while (next_audio < len(audio_frames)
                       and audio_frames[next_audio].pts < until):  # type: ignore[operator]
                    out.mux(astream.encode(audio_frames[next_audio]))
                    next_audio += 1
        if n != frame_count:
            raise ValueError(f"got {n} frames, {frame_count} were promised")
        out.mux(vstream.encode(None))
        if astream is not None:
            for aframe in audio_frames[next_audio:]:
                out.mux(astream.encode(aframe))
            out.mux(astream.encode(None))


def _fit_audio(audio: np.ndarray, samples: int) -> np.ndarray:
    """Planar stereo float32 of exactly ``samples`` samples (cut or padded with silence)."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = np.stack([a, a])
    if a.ndim != 2 or a.shape[0] != 2:
        raise ValueError(f"audio must have shape (2, n), got {a.shape}")
    if a.shape[1] >= samples:
        a = a[:, :samples]
    else:
        a = np.pad(a, ((0, 0), (0, samples - a.shape[1])))
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0))


def _audio_frames(audio: np.ndarray, sample_rate: int, frame_size: int) -> list[av.AudioFrame]:
    # The AAC encoder wants 1024-sample frames; hand it exactly that (the last one may be
    # shorter), with pts in samples, so the track is as long as the video to the sample.
    frame_size = frame_size or 1024
    result = []
    for start in range(0, audio.shape[1], frame_size):
        chunk = np.ascontiguousarray(audio[:, start : start + frame_size])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        result.append(frame)
    return result
