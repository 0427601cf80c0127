"""Real, playable H.264 test clips for completed simulator tasks: one per (ratio, duration,
resolution, fps), rendered on first request and kept in memory for the life of the process.
"""

from __future__ import annotations

import io
import threading
from fractions import Fraction

import av
import numpy as np

# A 3x5 bitmap font, enough to stamp "16:9 6S 720P" on the picture. Rows top to bottom.
_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"),
    "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"),
    "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"),
    "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"),
    "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"),
    "9": ("111", "101", "111", "001", "111"),
    ":": ("000", "010", "000", "010", "000"),
    "P": ("111", "101", "111", "100", "100"),
    "S": ("111", "100", "111", "001", "111"),
    " ": ("000", "000", "000", "000", "000"),
}

_cache: dict[tuple[str, int, str, int], bytes] = {}
_locks: dict[tuple[str, int, str, int], threading.Lock] = {}
_guard = threading.Lock()


def frame_size(ratio: str, resolution: str) -> tuple[int, int]:
    """(width, height): the resolution names the short side (720P → 720), the ratio the rest.

    Sides are rounded to even numbers because yuv420p halves both for the colour planes.
    """
    short = int("".join(ch for ch in resolution if ch.isdigit()) or 720)
    a, b = (int(part) for part in ratio.split(":"))

    def even(x: float) -> int:
        return max(2, round(x / 2) * 2)

    if a >= b:
        return even(short * a / b), even(short)
    return even(short), even(short * b / a)


def _stamp(plane: np.ndarray, text: str, top: int, left: int, scale: int) -> None:
    """Draw ``text`` bright on ``plane`` (the luma plane) with the bitmap font."""
    for i, ch in enumerate(text.upper()):
        glyph = np.array([[c == "1" for c in row] for row in _GLYPHS.get(ch, _GLYPHS[" "])])
        big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        x = left + i * 4 * scale
        region = plane[top : top + big.shape[0], x : x + big.shape[1]]
        if region.shape == big.shape:
            region[big] = 235


def render_clip(width: int, height: int, duration: int, fps: int, label: str = "") -> bytes:
    """Encode a ``duration``-second MP4 test pattern: a gradient, a moving bar, the label.

    Frames are built straight in yuv420p so no colour conversion runs; a low frame rate keeps
    a 720p clip well under a second to encode.
    """
    frames = max(1, duration * fps)
    buf = io.BytesIO()
    luma = np.tile(np.linspace(40, 200, width, dtype=np.uint8), (height, 1))
    scale = max(2, min(width, height) // 60)
    luma[scale : 7 * scale, :] = 16
    _stamp(luma, label, 1 * scale, scale, scale)
    chroma = np.empty((height // 2, width), dtype=np.uint8)
    chroma[: height // 4] = 150  # U: a tint so the picture is not grey
    chroma[height // 4 :] = 110  # V
    bar = max(2, width // 24)
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            y = luma.copy()
            x = int(i * (width - bar) / max(1, frames - 1))
            y[7 * scale :, x : x + bar] = 235
            frame = av.VideoFrame.from_ndarray(np.concatenate([y, chroma]), format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def get_clip(ratio: str, duration: int, resolution: str, fps: int = 6) -> bytes:
    """The cached clip for these parameters, rendering it once even under concurrent calls."""
    key = (ratio, duration, resolution, fps)
    found = _cache.get(key)
    if found is not None:
        return found
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        if key not in _cache:
            width, height = frame_size(ratio, resolution)
            _cache[key] = render_clip(
                width, height, duration, fps, f"{ratio} {duration}S {resolution}"
            )
    return _cache[key]
