"""Fetch a finished video: size-capped (in decoded bytes), type-checked and streamed into the
video store, which keeps it whole or not at all. Never sends the API key; follows redirects
itself, refusing non-http links and internal addresses at every hop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Protocol

import aiohttp
from yarl import URL

from omni_batch import crash
from omni_batch.errors import OmniBatchError, OutputError
from omni_batch.running.netguard import UNSAFE_KIND, VideoGuard, unsafe_cause
from omni_batch.store.base import Stored, VideoStore

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
    store: VideoStore,
    job_id: str,
    *,
    max_bytes: int,
    time_limit: float,
    guard: VideoGuard | None = None,
) -> Stored:
    """One attempt, into ``store`` under ``job_id``. Raises RetryableDownload (network, 5xx),
    DownloadError (final) or OutputError (the store cannot be written).

    ``guard`` says which hosts may serve it (default: public addresses only). ``max_bytes``
    counts decoded bytes: a gzip-encoded answer is inflated (in bounded steps, by aiohttp)
    as it is read, and reading stops once it passes the cap.
    """
    guard = guard or VideoGuard(None)
    try:
        async with _follow(session, url, guard, time_limit) as resp:
            declared = _checked(resp, max_bytes)
            return await store.put(job_id, _body(resp, declared, max_bytes))
    except aiohttp.InvalidURL as exc:
        raise DownloadError(f"bad video link: {type(exc).__name__}") from None
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        if unsafe := unsafe_cause(exc):  # the connector's resolver refused the address
            raise DownloadError(unsafe.message, kind=UNSAFE_KIND) from None
        raise RetryableDownload(
            f"download interrupted: {type(exc).__name__}", retryable=True
        ) from None


def _checked(resp: aiohttp.ClientResponse, max_bytes: int) -> int | None:
    """Raise unless ``resp`` is a video we may take; returns its declared size (if known)."""
    if resp.status in (401, 403, 404, 410):
        raise DownloadError(
            f"video link answered HTTP {resp.status} (expired?)", status=resp.status, expired=True
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
    # Content-Length counts bytes on the wire; only without Content-Encoding is that the
    # file's size (a compressed answer's end is checked by aiohttp itself)
    encoded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
    declared = None if encoded else resp.content_length
    if declared is not None and declared > max_bytes:
        raise DownloadError(f"video is {declared} bytes, over the {max_bytes}-byte cap", status=200)
    return declared


async def _body(
    resp: aiohttp.ClientResponse, declared: int | None, max_bytes: int
) -> AsyncIterator[bytes]:
    """The response's body for `VideoStore.put`; it raises (so the store keeps nothing) when
    the body passes the cap, ends short of its declared size or is empty."""
    size = 0
    while chunk := await resp.content.read(min(CHUNK, max_bytes + 1 - size)):
        size += len(chunk)
        if size > max_bytes:
            raise DownloadError(f"video passed the {max_bytes}-byte cap", status=200)
        yield chunk
        crash.point("mid_download")  # the store has written this chunk
    if declared is not None and size != declared:
        raise RetryableDownload(f"video ended after {size} of {declared} bytes", retryable=True)
    if size == 0:
        raise RetryableDownload("video host sent an empty file", retryable=True)


class VideoLedger(Protocol):
    """What `requeue_lost_videos` and `adopt_stored_videos` need of the journal."""

    def completed_videos(self) -> Iterator[tuple[str, str, int]]: ...
    def requeue(self, job_ids: Iterable[str], reason: str) -> int: ...
    def adopt_videos(self, found: Iterable[tuple[str, str, int]]) -> int: ...


def adopt_stored_videos(journal: VideoLedger, store: VideoStore) -> int:
    """After a journal rebuilt from events.jsonl (by whichever command opened it): the videos in
    the store of jobs the events never saw finish are recorded as completed, never bought
    again. Nothing (not even a listing) when no rebuild is waiting for it. Returns how many."""
    return journal.adopt_videos((v.name, store.link(v.name), v.size) for v in store.stored())


def requeue_lost_videos(journal: VideoLedger, store: VideoStore) -> int:
    """Completed jobs whose video is gone from the store or cut short (deleted by hand, or
    never written out before a power loss) go back to downloading, so resume fetches them
    again. Returns how many."""
    lost = []
    for job_id, _, size in journal.completed_videos():
        if store.size(job_id) != size:
            lost.append(job_id)
            # a cut-short video must not pass for the whole one resume looks for
            with contextlib.suppress(OutputError):
                store.remove(job_id)
    return journal.requeue(lost, "video lost on disk")
