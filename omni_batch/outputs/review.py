"""Reviewing a run: saving a reviewer's picks, scores and notes (through the journal) and
rewriting the report files so they carry them. Used by `omni-batch pick` and the review server.

One writer per output folder: a review is saved under the folder's lock, the one a run holds
for its whole length. While a run is going on in the folder, reviews are read-only
(``RunGoing``): the journal has a single writer by design (its transition counter, its
events.jsonl bookkeeping), and a second one would race them. The lock is held only for the
moment of a save, so a run can start between saves, and saves work again once it ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from omni_batch.errors import StateError, UsageError
from omni_batch.journal import KEEP, Review, journal_in, lock_folder, open_journal
from omni_batch.running.download import adopt_stored_videos
from omni_batch.store.location import STORE_META, open_store


class RunGoing(StateError):
    """A run holds the output folder: reviews cannot be saved until it ends."""

    def __init__(self, folder: Path):
        super().__init__(
            f"{folder}: a run is using this folder; reviews are read-only until it ends "
            "(the journal has one writer)"
        )


def check_folder(folder: str | Path) -> Path:
    """The output folder, if it is one (a journal, or the events.jsonl that rebuilds it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StateError(f"{folder}: no such folder")
    if not journal_in(folder):
        raise StateError(f"{folder}: no journal.sqlite here; is this an omni-batch output folder?")
    return folder


LOCK_WAIT_S = 3.0  # a lock held this long is a run's, not another save's or report refresh's


@contextlib.contextmanager
def _held(folder: Path, wait: float = LOCK_WAIT_S) -> Iterator[IO[str]]:
    """The folder's lock (waiting up to ``wait`` s for another review's save), or RunGoing."""
    deadline = time.monotonic() + wait
    while True:
        try:
            handle = lock_folder(folder)
            break
        except StateError:
            if time.monotonic() >= deadline:
                raise RunGoing(folder) from None
            time.sleep(0.05)
        except OSError as exc:
            raise StateError(f"{folder}: cannot lock the folder: {exc.strerror or exc}") from None
    try:
        yield handle
    finally:
        handle.close()


def run_going(folder: Path) -> bool:
    """Whether a run holds the folder now."""
    try:
        with _held(folder, wait=0):
            return False
    except RunGoing:
        return True
    except StateError:
        return False


def save_reviews(
    folder: str | Path,
    job_ids: Iterable[str],
    *,
    pick: Any = KEEP,
    score: Any = KEEP,
    note: Any = KEEP,
    refresh: bool = False,
) -> list[Review]:
    """Set the review of every job in ``job_ids`` (all or none: an unknown id saves nothing);
    with ``refresh``, rewrite report.csv/.parquet, failures.csv and gallery.html after."""
    folder = check_folder(folder)
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        raise UsageError("name at least one job id")
    with _held(folder):
        pass  # a run going: the friendly message, before the journal's own
    journal = open_journal(folder)
    try:
        # a journal this opening rebuilt from events.jsonl records the videos in place first
        # (as a run would): the reports refreshed below must not lose a paid video's row
        adopt_stored_videos(journal, open_store(journal.meta(STORE_META), folder))
        known = set(journal.known_jobs(ids))
        unknown = [j for j in ids if j not in known]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise UsageError(f"{folder}: no job {unknown[0]!r} in this output folder{more}")
        saved = [journal.set_review(j, pick=pick, score=score, note=note) for j in ids]
        if refresh:
            _write_reports(folder)
    finally:
        journal.close()
    return saved


def _write_reports(folder: Path) -> None:
    from omni_batch.outputs.gallery import write_gallery
    from omni_batch.outputs.report import write_reports_digest

    # a slice at a time, never the whole table (flat memory for any number of jobs)
    digest = write_reports_digest(folder)
    # posters already made stay; none decoded
    write_gallery(folder, posters=False, digest=digest)


def refresh(folder: str | Path) -> bool:
    """Rewrite the report files with the saved reviews, under the folder's lock; False (and
    nothing written) while a run holds the folder: it writes them itself."""
    folder = check_folder(folder)
    try:
        with _held(folder):
            _write_reports(folder)
    except RunGoing:
        return False
    return True
