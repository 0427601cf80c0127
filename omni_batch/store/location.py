"""Which store a run's videos go to: ``--store s3://BUCKET/PREFIX``, or by default the output
folder's own (`LocalStore`). The location is recorded in the journal's meta (``STORE_META``), so
``report``, ``status`` and a resume find the videos without the flag; it never holds a
credential (those come from the ``AWS_*`` environment only)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from omni_batch.errors import StateError, UsageError
from omni_batch.store.base import VideoStore
from omni_batch.store.local import LocalStore

STORE_META = "store"  # the journal's meta key holding the run's store location
SCHEME = "s3://"
# S3's own bucket naming rules: no user, password, port or path can hide in a valid name
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_PART = re.compile(r"[A-Za-z0-9!_.*'()=+,;-]+")


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str  # "" or parts joined by "/", no leading or trailing "/"

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{SCHEME}{self.bucket}"


def parse_location(url: str) -> S3Location:
    """``s3://BUCKET/PREFIX`` checked (UsageError, one line, when it cannot be one)."""
    text = url.strip()
    if not text.startswith(SCHEME):
        raise UsageError(f"--store {url}: not an S3 location (expected s3://BUCKET/PREFIX)")
    bucket, _, prefix = text[len(SCHEME) :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UsageError(
            f"--store {url}: {bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-')"
        )
    parts = [part for part in prefix.split("/") if part]
    if any(part in (".", "..") or not _PREFIX_PART.fullmatch(part) for part in parts):
        raise UsageError(
            f"--store {url}: the prefix may hold letters, digits, '/' and !_.*'()=+,;- only"
        )
    return S3Location(bucket, "/".join(parts))


def open_store(location: str | None, folder: str | Path) -> VideoStore:
    """The store at ``location`` (None: the output folder's own). Checks the location's form
    only; `VideoStore.prepare` proves it can be reached."""
    if location is None:
        return LocalStore(folder)
    return _bucket_store(location)


def _bucket_store(location: str) -> VideoStore:
    where = parse_location(location)
    try:
        from omni_batch.store.s3 import S3Store
    except ImportError:  # obstore comes with the [shared] extra
        raise UsageError(
            f"--store {location}: S3 needs obstore: pip install 'omni-batch[shared]'"
        ) from None
    return S3Store(where.bucket, where.prefix)


def recorded_location(folder: str | Path, run: str | None = None) -> str | None:
    """The store location a run in ``folder`` recorded in its journal (None: the folder's own,
    or no readable journal: a rebuilt one has lost its meta until the next run records it).
    ``folder`` may be a shared journal's URL: the location run ``run`` recorded (None: none)."""
    from omni_batch.journal import JOURNAL_FILE, is_shared, open_reader
    from omni_batch.journal.replay import kept_meta

    if is_shared(folder):  # unreachable, or no such run: StateError, as for its report
        with open_reader(str(folder), run) as shared:
            return shared.meta(STORE_META) or None
    if (Path(folder) / JOURNAL_FILE).is_file():
        try:
            with open_reader(folder) as journal:
                return journal.meta(STORE_META) or None
        except StateError:
            pass  # unreadable: the events that rebuild it say where the videos are
    return kept_meta(Path(folder), STORE_META)


def folder_store(folder: str | Path) -> VideoStore:
    """The store holding the videos of the run in ``folder``, as its journal records it."""
    return open_store(recorded_location(folder), folder)


def shared_store(url: str, run: str | None = None) -> VideoStore | None:
    """The store holding the videos of run ``run`` of the shared journal at ``url``, as the run
    records it; None when it names none (its runners kept the videos in their own folders)."""
    where = recorded_location(url, run)
    return None if where is None else _bucket_store(where)
