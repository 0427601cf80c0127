"""The `VideoStore` protocol: what the downloader, the engine, the resume check and the gallery
need of the place videos are kept, and nothing more (like an httpx transport).

Objects are named by their job id; the store decides the file or key. A video is whole or
absent: `put` never leaves part of one visible under its name. The one method that moves a
video's bytes is async; the rest are one small call each (a stat here, a HEAD or a DELETE on an
object store, which obstore also offers synchronously).
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True, slots=True)
class Stored:
    """A video now whole in the store: its name and its size in bytes."""

    name: str
    size: int


class VideoStore(Protocol):
    def prepare(self) -> None:
        """Make the store ready to take videos (a folder created); OutputError if it cannot."""
        ...

    async def put(self, name: str, chunks: AsyncIterable[bytes]) -> Stored:
        """Store the stream under ``name``, replacing what was there, whole or not at all: when
        ``chunks`` raises, its exception passes through and nothing new is left under
        ``name``. OutputError when the store cannot be written."""
        ...

    def size(self, name: str) -> int | None:
        """The stored video's size in bytes; None when there is none."""
        ...

    def remove(self, name: str) -> None:
        """Delete the video (nothing when it is absent)."""
        ...

    def open(self, name: str) -> BinaryIO:
        """The video, readable (and seekable) from its start; OSError when absent."""
        ...

    def local_path(self, name: str) -> Path | None:
        """The video's file when its bytes are on this machine (a decoder reads it fastest so);
        None for a store elsewhere: read it through `open` then."""
        ...

    def link(self, name: str) -> str:
        """How reports and the gallery point at the video: a path relative to the output
        folder, or a URL."""
        ...

    def put_poster(self, name: str, jpeg: bytes) -> None:
        """Store the video's poster frame (replacing any, atomically); OSError if it cannot."""
        ...

    def poster_link(self, name: str) -> str | None:
        """The poster's link (as `link`) when one is there no older than its video, else None
        (a poster made from an earlier video of that name is stale)."""
        ...
