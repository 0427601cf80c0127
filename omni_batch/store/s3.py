"""The S3 store (through obstore): videos at ``<prefix>/videos/<job id>.mp4``, posters at
``<prefix>/posters/<job id>.jpg``, the local folder's layout in a bucket, for runners on several
machines. A video is put create-only: the first runner to store a job's video wins, a second put
is refused (`AlreadyStored`) and leaves the first intact.

Credentials, region and endpoint come from the environment as the AWS tools read them
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``); they never reach an error message, a link or a repr.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError
from obstore.store import S3Store as _ObjectStore

from omni_batch.errors import AlreadyStored, OutputError
from omni_batch.store.base import Stored

if TYPE_CHECKING:
    from obstore import ReadableFile
    from obstore.store import ClientConfig, S3Config

VIDEOS = "videos"
POSTERS = "posters"
# environment values that must never be echoed, whatever an error message carries
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")

_STATUS = re.compile(r"status code: (\d{3}) ([A-Za-z ]*)")
_HINTS = {
    "404": " (no such bucket?)",
    "403": " (check the AWS_* credentials and the bucket's policy)",
    "301": " (the bucket is in another region: set AWS_REGION)",
}

__all__ = ["AlreadyStored", "S3Store"]  # AlreadyStored lives in errors; its old home kept


class S3Store:
    """A `VideoStore` in an S3 bucket (any S3-compatible endpoint obstore speaks to)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = (endpoint or os.environ.get("AWS_ENDPOINT_URL") or "").rstrip("/")
        client: ClientConfig = {"allow_http": self.endpoint.startswith("http://")}
        config: S3Config = {"endpoint": self.endpoint} if self.endpoint else {}
        # the store reads credentials from the environment itself: none pass through here
        self._store = _ObjectStore(
            bucket, prefix=self.prefix or None, config=config, client_options=client
        )

    @classmethod
    def from_url(cls, url: str, *, endpoint: str | None = None) -> S3Store:
        """``s3://BUCKET/PREFIX`` as the CLI's ``--store`` takes it."""
        scheme, sep, rest = url.partition("://")
        bucket, _, prefix = rest.partition("/")
        if scheme != "s3" or not sep or not bucket:
            raise OutputError(f"{url}: not an S3 location (expected s3://BUCKET/PREFIX)")
        return cls(bucket, prefix, endpoint=endpoint)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self._where('')})"

    def _where(self, key: str) -> str:
        return "/".join(part for part in (self.bucket, self.prefix, key) if part)

    @staticmethod
    def _video(name: str) -> str:
        # job ids are slugs; this is the last guard against a name that leaves the prefix
        if "/" in name or "\0" in name or name in ("", ".", ".."):
            raise OutputError(f"refusing to write outside the store: {name!r}")
        return f"{VIDEOS}/{name}.mp4"

    @staticmethod
    def _poster(name: str) -> str:
        return f"{POSTERS}/{name}.jpg"

    def _failed(self, doing: str, key: str, exc: BaseException) -> OutputError:
        return OutputError(f"s3://{self._where(key)}: cannot {doing}: {_one_line(exc)}")

    def prepare(self) -> None:
        """Nothing to create (a bucket is made by its owner); a listing proves it is reachable
        with these credentials, so a wrong bucket fails before any job is submitted."""
        try:
            obstore.list(self._store, f"{VIDEOS}/", chunk_size=1).collect()
        except (BaseError, OSError) as exc:
            raise self._failed("list the store", VIDEOS, exc) from None

    async def put(self, name: str, chunks: AsyncIterable[bytes]) -> Stored:
        """Create-only: one conditional PUT (If-None-Match: *), so the object is whole or absent
        and a second put of the name raises `AlreadyStored`. obstore sends a conditional put in
        one request, so the video is held in memory until it is sent."""
        key = self._video(name)
        size = 0
        stream_failed: BaseException | None = None

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size, stream_failed
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    yield chunk
            except BaseException as exc:
                stream_failed = exc
                raise

        try:
            await obstore.put_async(
                self._store, key, counted(), mode="create", attributes={"Content-Type": "video/mp4"}
            )
        except AlreadyExistsError:
            raise AlreadyStored(
                f"s3://{self._where(key)}: already stored (another runner's copy is kept)", name
            ) from None
        except (BaseError, OSError) as exc:
            if stream_failed is not None:  # the stream's own errors pass through as they are
                raise stream_failed from None
            # a missing bucket comes as FileNotFoundError, a refused connection as an OSError
            raise self._failed("write video", key, exc) from None
        return Stored(name, size)

    def _head_modified(self, key: str) -> tuple[int, datetime] | None:
        try:
            meta = obstore.head(self._store, key)
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise self._failed("read", key, exc) from None
        return meta["size"], meta["last_modified"]

    def size(self, name: str) -> int | None:
        try:
            found = self._head_modified(self._video(name))
        except OutputError:
            return None
        return None if found is None else found[0]

    def stored(self) -> Iterator[Stored]:
        try:
            for batch in obstore.list(self._store, f"{VIDEOS}/", chunk_size=1000):
                for meta in batch:
                    key = meta["path"].rpartition("/")[2]
                    name, dot, suffix = key.rpartition(".")
                    if dot and suffix == "mp4" and name and meta["size"]:
                        yield Stored(name, meta["size"])
        except (BaseError, OSError) as exc:
            raise self._failed("list the store", VIDEOS, exc) from None

    def remove(self, name: str) -> None:
        key = self._video(name)
        try:
            obstore.delete(self._store, key)  # S3 answers a delete of nothing with success
        except FileNotFoundError:
            pass
        except (BaseError, OSError) as exc:
            raise self._failed("remove video", key, exc) from None

    def open(self, name: str) -> BinaryIO:
        """Buffered, seekable reads by ranged GETs (a decoder seeks to the moov atom)."""
        key = self._video(name)
        try:
            reader = obstore.open_reader(self._store, key)
        except FileNotFoundError:
            raise FileNotFoundError(f"s3://{self._where(key)}: no such video") from None
        except (BaseError, OSError) as exc:
            raise OSError(f"s3://{self._where(key)}: cannot read: {_one_line(exc)}") from None
        return io.BufferedReader(_RangeReader(reader))

    def local_path(self, name: str) -> Path | None:
        return None

    def link(self, name: str) -> str:
        """The object's plain URL (path style on a custom endpoint). Never presigned: a report
        is shared and kept, a presigned link expires and names an access key."""
        key = "/".join(part for part in (self.prefix, self._video(name)) if part)
        if self.endpoint:
            return f"{self.endpoint}/{quote(self.bucket)}/{quote(key)}"
        return f"https://{quote(self.bucket)}.s3.amazonaws.com/{quote(key)}"

    def put_poster(self, name: str, jpeg: bytes) -> None:
        """Overwrite allowed: a poster is derived from the video, any runner's is the same."""
        self._video(name)
        try:
            obstore.put(self._store, self._poster(name), jpeg)
        except (BaseError, OSError) as exc:
            raise OSError(f"s3://{self._where(self._poster(name))}: {_one_line(exc)}") from None

    def poster_link(self, name: str) -> str | None:
        try:
            poster = self._head_modified(self._poster(name))
            video = self._head_modified(self._video(name))
        except OutputError:
            return None
        if poster is None or video is None or poster[1] < video[1]:
            return None
        return self.link(name).replace(self._video(name), self._poster(name))


class _RangeReader(io.RawIOBase):
    """obstore's ReadableFile as a raw binary stream (its reads return obstore Bytes)."""

    def __init__(self, reader: ReadableFile):
        self._reader = reader

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = memoryview(self._reader.read(len(buffer)))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._reader.seek(offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()


def _one_line(exc: BaseException) -> str:
    """obstore's message cut to its first line (the rest is a debug dump), with every
    credential from the environment redacted."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if answered := _STATUS.search(text):  # the server's answer, not obstore's request dump
        code = answered.group(1)
        text = f"HTTP {code} {answered.group(2).strip()}" + _HINTS.get(code, "")
    elif "error sending request" in text:  # no answer at all, after obstore's retries
        text = "no answer from the endpoint (AWS_ENDPOINT_URL, or the bucket's region)"
    for var in _SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text[:300]
