"""The video probe: does a downloaded file decode, and do its duration and picture match what
was asked? Also extracts poster frames (first frame as a small JPEG) for the gallery.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import av.video.frame

    from omni_batch.store.base import VideoStore

DURATION_TOLERANCE_S = 0.5
RATIO_TOLERANCE = 0.02  # relative: 1280x720 vs 16:9 is exact, 1920x1088 is 0.7% off
POSTER_SIZE = 320  # px, the long side: tiles show 240 px, with room for sharper screens


@dataclass(frozen=True, slots=True)
class Probe:
    """What the probe found; ``message`` is empty when ``ok``, else one line saying why not."""

    ok: bool
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    message: str = ""


def _parse_ratio(aspect_ratio: str) -> tuple[int, int] | None:
    a, sep, b = str(aspect_ratio).partition(":")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit():
        return None
    x, y = int(a), int(b)
    return (x, y) if x > 0 and y > 0 else None


def _shape(x: int, y: int) -> str:
    return "landscape" if x > y else "portrait" if x < y else "square"


def ratio_problem(width: int, height: int, aspect_ratio: str) -> str:
    """Empty when ``width``x``height`` has the asked ratio, else why not (one line)."""
    wanted = _parse_ratio(aspect_ratio)
    if wanted is None:
        return ""  # not an a:b ratio (a catalog may name ratios otherwise): nothing to compare
    x, y = wanted
    got = f"{width}x{height}, expected {_shape(x, y)} {aspect_ratio}"
    if width <= 0 or height <= 0:
        return got
    if x != y and _shape(x, y) != _shape(width, height):
        return got
    target = x / y  # a square target is judged by the tolerance alone: 720x722 is square
    return got if abs(width / height - target) > RATIO_TOLERANCE * target else ""


# where a poster goes: a file (replaced atomically), or a function given the JPEG's bytes
PosterTo = Path | Callable[[bytes], object]


def _empty(source: Path | BinaryIO) -> bool:
    if isinstance(source, Path):
        return source.stat().st_size == 0
    start = source.tell()
    end = source.seek(0, os.SEEK_END)
    source.seek(start)
    return end == start


def probe(
    source: Path | BinaryIO,
    aspect_ratio: str,
    duration: int | float,
    poster_to: PosterTo | None = None,
) -> Probe:
    """Open ``source`` (a file, or a readable seekable file object), decode its first frame
    and read every video packet's timing.

    The duration is measured from the packets rather than taken from the header, so a file cut
    short after a complete header still shows its real length. With ``poster_to``, the first
    frame (decoded here anyway) is also made the gallery's poster: one decode.
    """
    import av  # lazily: importing this module must stay cheap for the CLI

    if not hasattr(source, "read"):
        source = Path(source)
    try:
        if _empty(source):
            return Probe(False, message="does not decode: the file is empty")
        with av.open(str(source) if isinstance(source, Path) else source, "r") as container:
            if not container.streams.video:
                return Probe(False, message="does not decode: no video stream")
            stream = container.streams.video[0]
            # one frame to decode: a decoder thread pool would cost more than it saves
            stream.thread_type = "NONE"
            first: av.video.frame.VideoFrame | None = None
            start: int | None = None  # in the stream's time base: integers until the end
            end = 0
            broken = ""
            try:
                for packet in container.demux(stream):
                    pts = packet.pts
                    if pts is not None:
                        start = pts if start is None or pts < start else start
                        end = max(end, pts + (packet.duration or 0))
                    if first is None:
                        first = next(iter(packet.decode()), None)
            except (av.error.FFmpegError, ValueError) as exc:
                if first is None:
                    raise
                broken = str(exc)  # the picture decoded, the rest is damaged: judge what we got
            if first is None:
                return Probe(False, message="does not decode: no frame could be decoded")
            if poster_to is not None:
                _write_poster(first, poster_to)
            width, height = first.width, first.height
            sar = stream.sample_aspect_ratio
            display_width = round(width * sar) if sar else width  # anamorphic pixels
            base = stream.time_base
            measured = float((end - (start or 0)) * base) if base else 0.0
            if measured <= 0 and container.duration:
                measured = container.duration / av.time_base
    except FileNotFoundError:
        return Probe(False, message="does not decode: file not found")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return Probe(False, message=f"does not decode: {_reason(exc)}")
    duration_s = round(measured, 2)
    problems = []
    shape = ratio_problem(display_width, height, aspect_ratio)
    if shape:
        problems.append(shape)
    if abs(duration_s - float(duration)) > DURATION_TOLERANCE_S:
        problems.append(f"duration {duration_s:.1f} s, expected {duration:g} s")
    if broken:
        problems.append(f"damaged after {duration_s:.1f} s: {broken}")
    return Probe(not problems, width, height, duration_s, "; ".join(problems))


def _reason(exc: BaseException) -> str:
    # FFmpeg errors carry the path in their str(); the caller already knows which file it was.
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip() or type(exc).__name__


def probe_stored(
    store: VideoStore,
    name: str,
    aspect_ratio: str,
    duration: int | float,
    *,
    poster: bool = False,
) -> Probe:
    """`probe` the video ``name`` of ``store`` (its file when the store has one here); with
    ``poster``, its first frame is stored as its poster."""
    to = (lambda jpeg: store.put_poster(name, jpeg)) if poster else None
    path = store.local_path(name)
    if path is not None:
        return probe(path, aspect_ratio, duration, poster_to=to)
    try:
        with store.open(name) as fh:
            return probe(fh, aspect_ratio, duration, poster_to=to)
    except FileNotFoundError:
        return Probe(False, message="does not decode: file not found")
    except OSError as exc:
        return Probe(False, message=f"does not decode: {_reason(exc)}")


def poster_stored(store: VideoStore, name: str) -> bool:
    """Store the first frame of the video ``name`` as its poster; False if it won't decode."""
    path = store.local_path(name)
    if path is not None:
        return poster(path, lambda jpeg: store.put_poster(name, jpeg))
    try:
        with store.open(name) as fh:
            return poster(fh, lambda jpeg: store.put_poster(name, jpeg))
    except OSError:
        return False


def poster(source: Path | BinaryIO, out: PosterTo, size: int = POSTER_SIZE) -> bool:
    """Write the first frame of ``source`` as a JPEG whose long side is at most ``size``
    pixels; False (and nothing written) if the video won't decode.

    PyAV's own ``mjpeg`` encoder does the work, so no imaging library is needed. A file
    ``out`` is replaced atomically, so a gallery never links a half-written poster.
    """
    import av

    try:
        with av.open(str(source) if isinstance(source, Path) else source, "r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # one frame: a decoder thread pool costs more
            frame = next(container.decode(stream), None)
    except (av.error.FFmpegError, OSError, ValueError, IndexError, StopIteration):
        return False
    return frame is not None and _write_poster(frame, out, size)


def _write_poster(frame: Any, out: PosterTo, size: int = POSTER_SIZE) -> bool:
    """Encode one decoded frame as a small JPEG to ``out`` (a file: atomically); False if it
    fails."""
    import av

    try:
        scale = min(1.0, size / max(frame.width, frame.height))
        width = max(2, round(frame.width * scale / 2) * 2)  # even sides for 4:2:0 chroma
        height = max(2, round(frame.height * scale / 2) * 2)
        # yuvj420p: JPEG wants full-range YUV; reformat converts from the video's limited range
        # AREA: the sharpest downscale here, and cheaper than the default bilinear
        small = frame.reformat(width=width, height=height, format="yuvj420p", interpolation="AREA")
        codec = av.CodecContext.create("mjpeg", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
        codec.time_base = Fraction(1, 25)
        codec.thread_count, codec.thread_type = (
            1,
            "NONE",
        )  # one small picture: threads cost more than they save
        data = b"".join(bytes(p) for p in codec.encode(small))
        data += b"".join(bytes(p) for p in codec.encode(None))
    except (av.error.FFmpegError, OSError, ValueError, StopIteration):
        return False
    if not data:
        return False
    if callable(out):
        try:
            out(data)
        except OSError:
            return False
        return True
    out = Path(out)
    temp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(data)
        os.replace(temp, out)
    except OSError:
        temp.unlink(missing_ok=True)
        return False
    return True
