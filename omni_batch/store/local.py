"""The local store: videos in ``<output folder>/videos/<job id>.mp4``, posters in
``<output folder>/posters/<job id>.jpg``; a video is streamed to a hidden temporary file and
renamed into place, so it is whole or absent."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterable, Iterator
from pathlib import Path
from typing import BinaryIO

from omni_batch import crash
from omni_batch.errors import OutputError
from omni_batch.store.base import Stored

VIDEOS = "videos"
POSTERS = "posters"


def _checked(name: str, folder: Path) -> str:
    # job ids are slugs; this is the last guard against a name that leaves the folder
    if "/" in name or "\0" in name or name in ("", ".", ".."):
        raise OutputError(f"refusing to write outside {folder}: {name!r}")
    return name


class LocalStore:
    """A `VideoStore` in the output folder (paths held as str: cheap per video)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder) / VIDEOS
        self._resolved = self.folder.resolve()
        self._videos = str(self._resolved)
        self._posters = os.path.join(folder, POSTERS)

    def _file(self, name: str) -> str:
        return os.path.join(self._videos, f"{_checked(name, self.folder)}.mp4")

    def prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"{self.folder}: cannot create the videos folder: {exc.strerror}"
            ) from None

    async def put(self, name: str, chunks: AsyncIterable[bytes]) -> Stored:
        final = self._file(name)
        temp = os.path.join(self._videos, f".{name}.mp4.part")
        size = 0
        placed = False
        try:
            try:
                # a local write is short next to the network read that feeds it (as before)
                fh = open(temp, "wb")  # noqa: ASYNC230, SIM115 - closed below
            except OSError as exc:
                raise self._unwritable(exc) from None
            try:
                async for chunk in chunks:  # the stream's own errors pass through as they are
                    try:
                        fh.write(chunk)
                    except OSError as exc:
                        raise self._unwritable(exc) from None
                    size += len(chunk)
            finally:
                try:
                    fh.close()
                except OSError as exc:
                    raise self._unwritable(exc) from None
            # No fsync per video: it cost more than the rest of a job's bookkeeping. A video
            # the OS had not written out before a power loss is caught on resume instead
            # (running.download.requeue_lost_videos) and fetched again.
            crash.point("before_rename")
            try:
                os.replace(temp, final)  # atomic: a video file is either whole or absent
            except OSError as exc:
                raise self._unwritable(exc) from None
            placed = True
            crash.point("after_rename")
            return Stored(name, size)
        finally:
            if not placed:
                with contextlib.suppress(OSError):
                    os.unlink(temp)

    def _unwritable(self, exc: OSError) -> OutputError:
        return OutputError(f"{self._resolved}: cannot write video: {exc.strerror}")

    def stored(self) -> Iterator[Stored]:
        try:
            entries = os.scandir(self._videos)
        except OSError:
            return
        with entries:
            for entry in entries:
                name, suffix = os.path.splitext(entry.name)
                if suffix != ".mp4" or name.startswith("."):
                    continue  # a temporary file is never a whole video
                try:
                    size = entry.stat().st_size
                except OSError:
                    continue
                if size:
                    yield Stored(name, size)

    def size(self, name: str) -> int | None:
        try:
            return os.stat(self._file(name)).st_size
        except (OSError, OutputError):
            return None

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._file(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(
                f"{self._resolved}: cannot remove {name}.mp4: {exc.strerror}"
            ) from None

    def open(self, name: str) -> BinaryIO:
        return open(self._file(name), "rb")

    def local_path(self, name: str) -> Path | None:
        return Path(self._file(name))

    def link(self, name: str) -> str:
        """Relative to the output folder, as reports have always named videos."""
        return f"{VIDEOS}/{name}.mp4"

    def poster_path(self, name: str) -> str:
        """Where the video's first frame goes (a local extra, for the review server)."""
        return os.path.join(self._posters, f"{_checked(name, self.folder)}.jpg")

    def put_poster(self, name: str, jpeg: bytes) -> None:
        out = self.poster_path(name)
        temp = os.path.join(self._posters, f".{name}.jpg.tmp")
        try:
            os.makedirs(self._posters, exist_ok=True)
            with open(temp, "wb") as fh:
                fh.write(jpeg)
            os.replace(temp, out)  # a gallery never links a half-written poster
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def poster_link(self, name: str) -> str | None:
        try:
            video, poster = self._file(name), self.poster_path(name)
            if os.stat(poster).st_mtime >= os.stat(video).st_mtime:
                return f"{POSTERS}/{name}.jpg"  # posters are made once per video
        except (OSError, OutputError):
            pass
        return None
