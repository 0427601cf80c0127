"""The report: one row per job from the journal, written as report.csv, report.parquet and
failures.csv (atomically, so a reader never sees half a file). Needs only the output folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pandas as pd

from omni_batch import crash
from omni_batch.errors import OutputError, StateError

STATUS = {
    "pending": "pending",
    "submitting": "running",
    "running": "running",
    "downloading": "running",
    "completed": "completed",
    "failed": "failed",
}
COLUMNS = [
    "job_id", "prompt_id", "prompt", "model", "aspect_ratio", "duration", "resolution", "repeat",
    "status", "state", "task_id", "attempts", "polls", "http_status", "error_type", "error_message",
    "request_id", "video_url", "expires_at", "video_path", "bytes", "submitted_at", "completed_at",
    "latency_s", "possible_duplicate", "verified", "verify_message", "video_width",
    "video_height", "video_duration_s", "source",
]  # fmt: skip
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _connect(folder: Path) -> sqlite3.Connection:
    path = folder / "journal.sqlite"
    if not path.is_file():
        raise StateError(f"{folder}: no journal.sqlite here; is this an omni-batch output folder?")
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot open the journal: {exc}") from None


def _names(db: sqlite3.Connection, key: str) -> list[str]:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return [n for n in (row[0].split(",") if row and row[0] else []) if n]


def build_report(folder: str | Path) -> pd.DataFrame:
    """The report table of an output folder, in manifest order (works during a run)."""
    folder = Path(folder)
    db = _connect(folder)
    try:
        frame = pd.read_sql_query("SELECT * FROM jobs WHERE active = 1 ORDER BY seq", db)
        var_names, tag_names = _names(db, "var_names"), _names(db, "tag_names")
    except (sqlite3.Error, pd.errors.DatabaseError) as exc:
        raise StateError(f"{folder / 'journal.sqlite'}: cannot read the journal: {exc}") from None
    finally:
        db.close()
    frame["status"] = frame["state"].map(STATUS)
    frame["possible_duplicate"] = frame["possible_duplicate"].astype(bool)
    frame["latency_s"] = (frame["completed_at"] - frame["submitted_at"]).round(2)
    for column in ("expires_at", "submitted_at", "completed_at"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
    for column in ("http_status", "bytes", "video_width", "video_height"):
        frame[column] = frame[column].astype("Int64")
    frame["verified"] = frame["verified"].astype("boolean")  # NA: no video to check
    extra = {}
    for source, prefix, names in (("vars", "var_", var_names), ("tags", "tag_", tag_names)):
        parsed = frame[source].map(json.loads)
        for name in names:
            extra[prefix + name] = parsed.map(lambda d, n=name: d.get(n, ""))
    return pd.concat([frame[COLUMNS], pd.DataFrame(extra, index=frame.index)], axis=1)


def neutralise(frame: pd.DataFrame) -> pd.DataFrame:
    """Text a spreadsheet would run as a formula gets a leading apostrophe (CSV only)."""
    out = frame.copy(deep=False)  # columns are replaced, never changed in place
    for column in out.columns:
        values = out[column]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            risky = values.map(lambda v: isinstance(v, str) and v.startswith(_FORMULA_START))
            if risky.any():
                out[column] = values.where(~risky, "'" + values.astype(str))
    return out


def _atomic(path: Path, write) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    try:
        write(temp)
        crash.point("mid_report")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the report: {exc.strerror or exc}") from None


def write_reports(folder: str | Path) -> pd.DataFrame:
    """Write report.csv, report.parquet and failures.csv; return the report."""
    folder = Path(folder)
    frame = build_report(folder)
    safe = neutralise(frame)
    _atomic(folder / "report.csv", lambda p: safe.to_csv(p, index=False))
    _atomic(folder / "report.parquet", lambda p: frame.to_parquet(p, index=False))
    failed = safe[safe["status"] == "failed"]
    _atomic(folder / "failures.csv", lambda p: failed.to_csv(p, index=False))
    return frame


def counts(folder: str | Path) -> dict[str, int]:
    """Jobs per journal state (pending, submitting, running, downloading, completed, failed)."""
    db = _connect(Path(folder))
    try:
        rows = db.execute(
            "SELECT state, count(*) FROM jobs WHERE active = 1 GROUP BY state"
        ).fetchall()
    finally:
        db.close()
    return {state: n for state, n in rows}
