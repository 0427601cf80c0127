"""An output folder, during or after a run: its jobs per state (`status`), its reports and its
gallery rebuilt from the journal (`write_reports`) - what `omni-batch status` and `report` do.
"""

from __future__ import annotations

from pathlib import Path

from omni_batch.errors import UsageError
from omni_batch.journal import STATES, is_shared
from omni_batch.outputs.digest import ReportDigest
from omni_batch.outputs.gallery import write_gallery
from omni_batch.outputs.report import RETIRED, counts, write_reports_digest

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
    journal, its report.csv, report.parquet and failures.csv written into folder ``out`` (made
    if missing; no gallery: the videos are the runners'). StateError when the database cannot
    be reached or has no such run.
    """
    if is_shared(folder):
        if out is None:
            raise UsageError("the report of a shared journal needs a folder to write it in (out)")
        Path(out).mkdir(parents=True, exist_ok=True)
        return write_reports_digest(out, source=str(folder), run=run)
    if run is not None or out is not None:
        raise UsageError(f"{folder}: a run name and out are for a shared journal (a URL)")
    digest = write_reports_digest(folder)
    write_gallery(Path(folder), digest=digest)
    return digest
