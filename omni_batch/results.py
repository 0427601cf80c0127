"""An output folder, during or after a run: its jobs per state (`status`), its reports and its
gallery rebuilt from the journal (`write_reports`) - what `omni-batch status` and `report` do.
"""

from __future__ import annotations

from pathlib import Path

from omni_batch.errors import UsageError
from omni_batch.journal import STATES, is_shared
from omni_batch.outputs.digest import ReportDigest
from omni_batch.outputs.gallery import GALLERY, write_gallery
from omni_batch.outputs.report import RETIRED, counts, write_reports_digest
from omni_batch.store.location import shared_store

__all__ = ["RETIRED", "STATES", "status", "write_gallery", "write_reports"]


def status(folder: str | Path, run: str | None = None) -> dict[str, int]:
    """Jobs of an output folder per state, every state named (0 when none), in the order a job
    goes through them, then ``retired`` (no longer in the manifest, kept in the report). Works
    while a run is going; StateError when the folder has no readable journal. ``folder`` may be
    a ``postgresql://`` URL: run ``run`` (default "default") of that shared journal (StateError
    when the database cannot be reached or has no such run)."""
    if run is not None and not is_shared(folder):
        raise UsageError(f"{folder}: a run name is for a shared journal (a postgresql:// URL)")
    found = counts(folder, run)
    return {state: found.get(state, 0) for state in (*STATES, RETIRED)}


def write_reports(
    folder: str | Path, run: str | None = None, out: str | Path | None = None
) -> ReportDigest:
    """Rebuild report.csv, report.parquet, failures.csv and gallery.html of an output folder
    from its journal, a slice at a time (memory stays flat for any number of jobs); return the
    report's digest: counts, failures, spend, summary tables (``build_report`` gives the table).

    ``folder`` may be a ``postgresql://`` URL: run ``run`` (default "default") of that shared
    journal, its report.csv, report.parquet, failures.csv and gallery.html written into folder
    ``out`` (made if missing). The gallery links the videos and posters in the store the run
    recorded (an S3 bucket, its plain object URLs; credentials from the ``AWS_*`` environment
    when the store is read); it makes no poster (a report reads the runners' bucket, never
    writes it), and a run that recorded no store gets a gallery without videos, said in the
    digest's ``notes``. StateError when the database cannot be reached or has no such run.
    """
    if is_shared(folder):
        if out is None:
            raise UsageError("the report of a shared journal needs a folder to write it in (out)")
        Path(out).mkdir(parents=True, exist_ok=True)
        source = str(folder)
        digest = write_reports_digest(out, source=source, run=run)
        store = shared_store(source, run)
        if store is None:
            digest.notes.append(
                f"{GALLERY}: no videos shown: run {run or 'default'} recorded no shared store "
                "(--store s3://...), so its videos are in its runners' own folders"
            )
        write_gallery(out, digest=digest, source=source, run=run, store=store, posters=False)
        return digest
    if run is not None or out is not None:
        raise UsageError(f"{folder}: a run name and out are for a shared journal (a URL)")
    digest = write_reports_digest(folder)
    write_gallery(Path(folder), digest=digest)
    return digest
