"""The simulator's hostile-server pieces: the key echoed back in several encodings, gzip
bombs made on the fly (never held inflated in memory), Retry-After in both of its forms.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import json
import math
import struct
import zlib
from collections.abc import Iterator
from urllib.parse import quote

from aiohttp import web

MIB = 1 << 20
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, no mtime


def echo_text(key: str) -> str:
    """The key as a leaky server repeats it: plain, base64 and URL-encoded."""
    b64 = base64.b64encode(key.encode("utf-8")).decode("ascii")
    return f"key {key} base64 {b64} url {quote(key, safe='')}"


def echo_query(key: str) -> str:
    """Query parameters carrying the key (for video links)."""
    b64 = base64.urlsafe_b64encode(key.encode("utf-8")).decode("ascii")
    return f"k={quote(key, safe='')}&b={b64}"


def unicode_escaped(text: str) -> str:
    """``text`` with every character written as a JSON \\uXXXX escape (pairs beyond the BMP)."""
    units = text.encode("utf-16-be")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def json_text(body: object, style: str, key: str | None) -> str:
    """A JSON answer encoded the way ``echo_json`` says (see SimConfig)."""
    if style == "ascii":
        return json.dumps(body)
    text = json.dumps(body, ensure_ascii=False)
    if style == "unicode" and key:
        text = text.replace(json.dumps(key, ensure_ascii=False)[1:-1], unicode_escaped(key))
    return text


@functools.lru_cache(maxsize=4)
def _bomb_parts(size_mb: int, fill: bytes) -> tuple[bytes, int, int]:
    """(one compressed block, how many, CRC-32 of all of them inflated) for ``size_mb`` MiB
    of ``fill``: a full flush resets the compressor, so every block compresses the same and
    one is repeated. Large blocks keep the flush overhead down (1 GiB → ~1 MB of gzip)."""
    block_mb = next(b for b in (16, 8, 4, 2, 1) if size_mb % b == 0)
    block = fill * (block_mb * MIB)
    piece = zlib.compressobj(9, zlib.DEFLATED, -15)
    compressed = piece.compress(block) + piece.flush(zlib.Z_FULL_FLUSH)
    count = size_mb // block_mb
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    return compressed, count, crc


def gzip_bomb(size_mb: int, tail: bytes = b"", fill: bytes = b" ") -> tuple[int, Iterator[bytes]]:
    """(length on the wire, the pieces) of a valid gzip stream inflating to ``size_mb`` MiB of
    ``fill`` followed by ``tail``; the pieces are produced as they are sent."""
    piece, count, crc = _bomb_parts(size_mb, fill)
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = end.compress(tail) + end.flush()
    total = size_mb * MIB + len(tail)
    trailer = struct.pack("<II", zlib.crc32(tail, crc), total & 0xFFFFFFFF)
    length = len(_GZIP_HEADER) + len(piece) * count + len(last) + len(trailer)

    def pieces() -> Iterator[bytes]:
        yield _GZIP_HEADER
        for _ in range(count):
            yield piece
        yield last + trailer

    return length, pieces()


async def send_stream(
    request: web.Request, headers: dict[str, str], length: int, pieces: Iterator[bytes]
) -> web.StreamResponse:
    """Stream ``pieces`` as the answer; a client that hangs up early is its business."""
    response = web.StreamResponse(headers=headers)
    response.content_length = length
    await response.prepare(request)
    try:
        for piece in pieces:
            await response.write(piece)
        await response.write_eof()
    except (ConnectionError, RuntimeError):  # reset, or the transport already closed
        pass
    return response


def encode_video(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return zlib.compress(data, 6, wbits=31)
    if encoding == "deflate":
        return zlib.compress(data, 6)  # HTTP "deflate" is the zlib format
    return data


def retry_after_header(seconds: float, form: str, now: float) -> tuple[str, float]:
    """(the Retry-After value, the instant it names) for a wait of ``seconds`` from ``now``."""
    if form == "http-date":
        when = math.ceil(now + seconds)  # an HTTP-date has whole seconds: never earlier
        return email.utils.formatdate(when, usegmt=True), float(when)
    whole = max(0, math.ceil(seconds - 1e-9))
    return str(whole), now + whole
