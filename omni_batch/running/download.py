"""Fetch a finished video: streamed to a temporary file, size-capped (in decoded bytes),
type-checked, renamed atomically into ``videos/<job_id>.mp4``. Never sends the API key;
follows redirects itself, refusing non-http links and internal addresses at every hop.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from omni_batch import crash
from omni_batch.errors import OmniBatchError, OutputError
from omni_batch.running.netguard import UNSAFE_KIND, VideoGuard, unsafe_cause

CHUNK = 1 << 16
VIDEO_TYPES = ("video/", "application/octet-stream", "binary/octet-stream")
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class DownloadError(OmniBatchError):
    """A download failed; ``retryable`` says whether trying again may help."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        expired: bool = False,
        kind: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.expired = expired
        self.kind = kind  # the job's error type when it is not the usual download_failed


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


@contextlib.asynccontextmanager
async def _follow(
    session: aiohttp.ClientSession, url: str, guard: VideoGuard, time_limit: float
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The response at the end of ``url``'s redirects, each hop vetted by ``guard`` first."""
    deadline = time.monotonic() + time_limit
    try:
        target = URL(url)
    except ValueError:
        raise DownloadError("bad video link: not a URL") from None
    for hop in range(MAX_REDIRECTS + 1):
        if why := await guard.problem(target):
            raise DownloadError(
                why if hop == 0 else f"the video link redirected to {target.raw_host}; {why}",
                kind=UNSAFE_KIND,
            )
        left = max(0.001, deadline - time.monotonic())
        timeout = aiohttp.ClientTimeout(total=left, sock_read=60)
        async with session.get(target, timeout=timeout, allow_redirects=False) as resp:
            location = resp.headers.get("Location") if resp.status in REDIRECTS else None
            if location is None:
                yield resp
                return
            try:
                target = target.join(URL(location))
            except ValueError:
                raise DownloadError("bad video link: unreadable redirect") from None
    raise DownloadError(f"bad video link: TooManyRedirects (more than {MAX_REDIRECTS})")


async def download(
    session: aiohttp.ClientSession,
    url: str,
    store: LocalStore,
    job_id: str,
    *,
    max_bytes: int,
    time_limit: float,
    guard: VideoGuard | None = None,
) -> Downloaded:
    """One attempt. Raises RetryableDownload (network, 5xx) or DownloadError (final).

    ``guard`` says which hosts may serve it (default: public addresses only). ``max_bytes``
    counts decoded bytes: a gzip-encoded answer is inflated (in bounded steps, by aiohttp)
    as it is written, and reading stops once it passes the cap.
    """
    guard = guard or VideoGuard(None)
    final, temp = store.final_path(job_id), store.temp_path(job_id)
    size = 0
    renamed = False
    try:
        async with _follow(session, url, guard, time_limit) as resp:
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
                    f"video link served {ctype.split(';')[0][:80]!r}, not a video", status=200
                )
            # Content-Length counts bytes on the wire; only without Content-Encoding is that
            # the file's size (a compressed answer's end is checked by aiohttp itself)
            encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
            declared = None if encoded else resp.content_length
            if declared is not None and declared > max_bytes:
                raise DownloadError(
                    f"video is {declared} bytes, over the {max_bytes}-byte cap", status=200
                )
            with temp.open("wb") as fh:
                while chunk := await resp.content.read(min(CHUNK, max_bytes + 1 - size)):
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
    except aiohttp.InvalidURL as exc:
        raise DownloadError(f"bad video link: {type(exc).__name__}") from None
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        if unsafe := unsafe_cause(exc):  # the connector's resolver refused the address
            raise DownloadError(unsafe.message, kind=UNSAFE_KIND) from None
        raise RetryableDownload(
            f"download interrupted: {type(exc).__name__}", retryable=True
        ) from None
    except OSError as exc:
        raise OutputError(f"{final.parent}: cannot write video: {exc.strerror}") from None
    finally:
        if not renamed:
            temp.unlink(missing_ok=True)
