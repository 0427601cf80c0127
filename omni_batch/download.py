"""Fetch a finished video: streamed to a temporary file, size-capped, type-checked, renamed
atomically into ``videos/<job_id>.mp4``. Never sends the API key; refuses non-http URLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from omni_batch import crash
from omni_batch.errors import OmniBatchError, OutputError

CHUNK = 1 << 16
VIDEO_TYPES = ("video/", "application/octet-stream", "binary/octet-stream")


class DownloadError(OmniBatchError):
    """A download failed; ``retryable`` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        expired: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.expired = expired


class RetryableDownload(DownloadError):
    pass


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: Path
    size: int


class LocalStore:
    """Where videos land: a local folder today; an object store can stand beside it."""

    def __init__(self, folder: Path):
        self.folder = folder / "videos"
        self._resolved = self.folder.resolve()

    def final_path(self, job_id: str) -> Path:
        name = f"{job_id}.mp4"
        # job ids are slugs; this is the last guard against a name that leaves the folder
        if "/" in job_id or "\0" in job_id:
            raise OutputError(f"refusing to write outside {self.folder}: {job_id!r}")
        return self._resolved / name

    def relative(self, path: Path) -> str:
        """``path`` (in this store) as the report names it: relative to the output folder."""
        return f"{self._resolved.name}/{path.name}"

    def on_disk(self, job_id: str) -> Downloaded | None:
        """The job's video if it is in place: only a whole download is renamed there."""
        try:
            path = self.final_path(job_id)
            size = path.stat().st_size
        except (OSError, OutputError):
            return None
        return Downloaded(path, size) if size > 0 else None

    def poster_path(self, job_id: str) -> Path:
        """Where the video's first frame goes; the gallery (gallery.POSTERS) reads it there."""
        return self.folder.parent / "posters" / f"{job_id}.jpg"

    def temp_path(self, job_id: str) -> Path:
        return self.folder / f".{job_id}.mp4.part"

    def prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"{self.folder}: cannot create the videos folder: {exc.strerror}"
            ) from None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    store: LocalStore,
    job_id: str,
    *,
    max_bytes: int,
    time_limit: float,
) -> Downloaded:
    """One attempt. Raises RetryableDownload (network, 5xx) or DownloadError (final)."""
    scheme, colon, _ = url.partition(":")
    scheme = scheme.lower() if colon and scheme.isalnum() else ""  # else a relative link
    if scheme not in ("http", "https"):
        raise DownloadError(f"refusing to download a {scheme or 'relative'}: URL")
    final, temp = store.final_path(job_id), store.temp_path(job_id)
    size = 0
    renamed = False
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=time_limit, sock_read=60), max_redirects=5
        ) as resp:
            if resp.status in (401, 403, 404, 410):
                raise DownloadError(
                    f"video link answered HTTP {resp.status} (expired?)",
                    status=resp.status,
                    expired=True,
                )
            if resp.status >= 500 or resp.status == 429:
                raise RetryableDownload(
                    f"video host answered HTTP {resp.status}", status=resp.status, retryable=True
                )
            if resp.status != 200:
                raise DownloadError(f"video host answered HTTP {resp.status}", status=resp.status)
            ctype = resp.headers.get("Content-Type", "").lower()
            if ctype and not ctype.startswith(VIDEO_TYPES):
                raise DownloadError(
                    f"video link served {ctype.split(';')[0]!r}, not a video", status=200
                )
            declared = resp.content_length
            if declared is not None and declared > max_bytes:
                raise DownloadError(
                    f"video is {declared} bytes, over the {max_bytes}-byte cap", status=200
                )
            with temp.open("wb") as fh:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError(f"video passed the {max_bytes}-byte cap", status=200)
                    fh.write(chunk)
                    crash.point("mid_download")
            # No fsync per video: it cost more than the rest of a job's bookkeeping. A video
            # the OS had not written out before a power loss is caught on resume instead
            # (Journal.requeue_lost_videos) and fetched again.
            if declared is not None and size != declared:
                raise RetryableDownload(
                    f"video ended after {size} of {declared} bytes", retryable=True
                )
            if size == 0:
                raise RetryableDownload("video host sent an empty file", retryable=True)
        crash.point("before_rename")
        os.replace(temp, final)  # atomic: a video file is either whole or absent
        renamed = True
        crash.point("after_rename")
        return Downloaded(final, size)
    except (aiohttp.TooManyRedirects, aiohttp.InvalidURL) as exc:
        raise DownloadError(f"bad video link: {type(exc).__name__}") from None
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        raise RetryableDownload(
            f"download interrupted: {type(exc).__name__}", retryable=True
        ) from None
    except OSError as exc:
        raise OutputError(f"{final.parent}: cannot write video: {exc.strerror}") from None
    finally:
        if not renamed:
            temp.unlink(missing_ok=True)
