"""What the CLI shows of a report, gathered a slice at a time: `ReportDigest`.

The CLI's run path never holds the report table: the reports are written from the journal a
slice at a time (report.py), and this digest keeps what the terminal, ``--json`` and the
gallery's header and summary need: counts, failures per kind, spend, the summary tables'
per-group sums, the gallery's filter values. Per job it keeps only, for each summary
dimension, a completed job's latency and group number (16 bytes), so that the latency
percentiles are exactly those of the whole table.

Every method gives what the same function gives for the whole table (progress.final_table,
summary.summary_tables, progress.run_summary ...): tests/test_report_stream.py holds the two
paths equal.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omni_batch.outputs.summary import (
    COST_COLUMN,
    GROUPS,
    OVERALL,
    SHOWN_ROWS,
    VERIFY_COLUMN,
    dimensions,
    finish_table,
    keep_mask,
)
from omni_batch.outputs.summary import work_frame as _work_frame

STATUS_ORDER = ("completed", "failed", "running", "pending")  # the gallery header's order


def _key(value: Any) -> Any:
    """A cell as a dict key: every missing value (None, NaN, NA) is None."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value


def _text(value: Any) -> str:
    value = _key(value)
    return "" if value is None else str(value)


def _add_counts(into: dict[Any, int], values: pd.Series) -> None:
    """Count ``values`` into ``into``, keys in order of first appearance (as value_counts)."""
    for value, n in values.value_counts(sort=False, dropna=False).items():
        key = _key(value)
        into[key] = into.get(key, 0) + int(n)


def value_counts(counts: dict[Any, int]) -> pd.Series:
    """``counts`` (first-appearance order) ordered as ``Series.value_counts()`` orders them."""
    series = pd.Series(list(counts.values()), index=list(counts.keys()), dtype="int64")
    return series.sort_values(ascending=False)


# per group: jobs, completed, failed, retries, verify_failed, cost_usd summed, jobs with a cost
_WIDTH = 7
_COST, _PRICED = 5, 6


@dataclass
class _Dimension:
    """One summary table: per group, sums (_WIDTH doubles) and the latencies of its completed
    jobs, for its first SHOWN_ROWS values in sorted order only (all that is ever shown), and
    a 64-bit hash of every value, for the number of values ("… N more"). A variable with a
    value per job costs ~16 bytes a job, not a group a job.

    Exact: a value once dropped (SHOWN_ROWS smaller ones seen) can never be among the first
    again, and a value among them was never dropped, so every kept group has all its jobs."""

    name: str
    dtype: Any = None  # the column's dtype (the table's index)
    groups: dict[Any, list[float]] = field(default_factory=dict)  # value → sums
    latencies: dict[Any, array] = field(default_factory=dict)  # value → completed latencies
    hashes: array = field(default_factory=lambda: array("q"))  # of every value seen
    unique: int = 0  # how many of ``hashes`` (a prefix) are known distinct

    def add(self, work: pd.DataFrame, key: pd.Series) -> None:
        if self.dtype is None:
            self.dtype = key.dtype
        if not len(work):
            return
        grouped = work.groupby(key, sort=False)
        parts = [grouped.size(), grouped["completed"].sum(), grouped["failed"].sum()]
        parts.append(grouped["retries"].sum())
        parts.append(grouped[VERIFY_COLUMN].sum() if VERIFY_COLUMN in work else grouped.size() * 0)
        if COST_COLUMN in work:
            parts += [grouped[COST_COLUMN].sum(), grouped[COST_COLUMN].count()]
        frame = pd.concat(parts, axis=1)
        values = frame.index.tolist()
        self.hashes.extend(hash(v) for v in values)
        if len(self.hashes) > 2 * self.unique + 4096:  # values repeat across slices: compact
            distinct = np.unique(np.frombuffer(self.hashes, dtype="int64"))
            self.hashes = array("q", distinct.tobytes())
            self.unique = len(distinct)
        groups = self.groups
        for value, row in zip(values, frame.to_numpy("float64").tolist(), strict=True):
            sums = groups.get(value)
            if sums is None:
                groups[value] = row + [0.0] * (_WIDTH - len(row))
            else:
                for i, x in enumerate(row):
                    sums[i] += x
        timed = work["completed"].to_numpy() & work["latency"].notna().to_numpy()
        if timed.any():
            latencies = self.latencies
            for value, latency in zip(
                key[timed].tolist(), work["latency"].to_numpy()[timed].tolist(), strict=True
            ):
                latencies.setdefault(value, array("d")).append(latency)
        if len(groups) > SHOWN_ROWS:  # keep the first values only: the rest is never shown
            for value in sorted(groups)[SHOWN_ROWS:]:
                del groups[value]
                self.latencies.pop(value, None)

    def count(self) -> int:
        """How many values the table has (shown or not)."""
        return len(np.unique(np.frombuffer(self.hashes, dtype="int64"))) if self.hashes else 0

    def table(self, verify: bool, cost: bool) -> pd.DataFrame:
        keys = sorted(self.groups)
        index = pd.Index(pd.array(keys, dtype=self.dtype), name=self.name)
        sums = np.array([self.groups[k] for k in keys], dtype="float64").reshape(len(keys), _WIDTH)
        codes: list[int] = []
        found: list[float] = []
        for n, k in enumerate(keys):
            got = self.latencies.get(k, ())
            codes += [n] * len(got)
            found += got
        # the same grouped quantile as the whole table's (it skips the jobs not completed)
        by_group = pd.Series(found, dtype="float64").groupby(np.array(codes, "int64"), sort=True)
        position = pd.RangeIndex(len(keys))

        def quantile(q: float) -> pd.Series:
            at = by_group.quantile(q).reindex(position)
            return pd.Series(at.to_numpy(dtype="float64"), index=index)

        def column(i: int, dtype: str) -> pd.Series:
            return pd.Series(sums[:, i], index=index).astype(dtype)

        table = finish_table(
            column(0, "int64"),
            column(1, "int64"),
            column(2, "int64"),
            quantile(0.5),
            quantile(0.9),
            column(3, "float64"),
            column(4, "int64") if verify else None,
            self.name,
            # as sum(min_count=1): NaN for a group with no known cost
            column(_COST, "float64").where(column(_PRICED, "int64") > 0) if cost else None,
        )
        count = self.count()
        if count > len(table):
            table.attrs[GROUPS] = count  # the first SHOWN_ROWS rows of a longer table
        return table


@dataclass
class ReportDigest:
    """A report, digested: see the module docstring. Feed it slices with `add`."""

    folder: Path | None = None  # the output folder, when a run returned it
    rows: int = 0
    status: dict[Any, int] = field(default_factory=dict)  # all rows, retired included
    states: dict[Any, int] = field(default_factory=dict)  # the manifest's jobs (not retired)
    failure_kinds: dict[str, int] = field(default_factory=dict)  # error_type or "unknown"
    # (error_type, http_status) → [jobs, the first one's message, its error_type, http_status]
    failure_groups: dict[tuple[Any, Any], list[Any]] = field(default_factory=dict)
    possible_duplicates: int = 0
    accounts: dict[str, dict[str, int]] = field(default_factory=dict)  # account → status → jobs
    cost_usd: float = 0.0  # the report's cost_usd summed (NaN skipped)
    cost_unknown_jobs: int = 0  # rows whose cost_usd is NaN
    tasks_created: int = 0
    video_seconds_requested: int = 0
    videos_completed: int = 0
    video_seconds_completed: int = 0
    columns: list[str] = field(default_factory=list)
    verify: bool = False
    dims: dict[str, _Dimension] = field(default_factory=dict)
    # the gallery's header: tag filter values, matrix columns, whether to show the model
    tag_values: dict[str, set[str]] = field(default_factory=dict)
    matrix_keys: set[tuple[str, int]] = field(default_factory=set)
    models: set[Any] = field(default_factory=set)
    resolutions: set[Any] = field(default_factory=set)
    # one-line remarks on what was written, for the terminal (a gallery without videos)
    notes: list[str] = field(default_factory=list)

    def add(self, frame: pd.DataFrame) -> None:
        """Take in one slice of the report (slices in report order)."""
        if not self.columns:
            self.columns = list(frame.columns)
            self.verify = "verified" in frame
        self.rows += len(frame)
        status = frame["status"]
        retired = status.eq("retired")
        _add_counts(self.status, status)
        _add_counts(self.states, frame.loc[~retired, "state"])
        failed = frame[status.eq("failed")]
        _add_counts(self.failure_kinds, failed["error_type"].fillna("unknown").astype(str))
        for kind, http, message in zip(
            failed["error_type"].tolist(),
            failed["http_status"].tolist(),
            failed["error_message"].tolist(),
            strict=True,
        ):
            key = (_key(kind), _key(http))
            group = self.failure_groups.setdefault(key, [0, message, kind, http])
            group[0] += 1
        self.possible_duplicates += int(frame["possible_duplicate"].astype(bool).sum())
        if "account" in frame:
            named = frame[frame["account"].notna()]
            for (account, state), n in named.groupby(["account", "status"]).size().items():
                by_status = self.accounts.setdefault(str(account), {})
                by_status[str(state)] = by_status.get(str(state), 0) + int(n)
        if "cost_usd" in frame:
            cost = pd.to_numeric(frame["cost_usd"], errors="coerce")
            self.cost_usd += float(cost.sum())
            self.cost_unknown_jobs += int(cost.isna().sum())
        has_task = frame["task_id"].notna()
        completed = status.eq("completed")
        seconds = pd.to_numeric(frame["duration"], errors="coerce").fillna(0)
        self.tasks_created += int(has_task.sum())
        self.video_seconds_requested += int(seconds[has_task].sum())
        self.videos_completed += int(completed.sum())
        self.video_seconds_completed += int(seconds[completed].sum())
        self._add_summary(frame[~retired])
        self._add_gallery(frame)

    def _add_summary(self, frame: pd.DataFrame) -> None:
        work = _work_frame(frame)
        overall = pd.Series(OVERALL, index=frame.index, name=OVERALL)
        self.dims.setdefault(OVERALL, _Dimension(OVERALL)).add(work, overall)
        for column in dimensions(frame):
            values = frame[column]
            keep = keep_mask(values)
            self.dims.setdefault(column, _Dimension(column)).add(
                work[keep], values[keep].rename(column)
            )

    def _add_gallery(self, frame: pd.DataFrame) -> None:
        for column in (c for c in frame.columns if c.startswith("tag_")):
            self.tag_values.setdefault(column, set()).update(map(_text, frame[column].tolist()))
        pairs = zip(frame["aspect_ratio"].tolist(), frame["duration"].tolist(), strict=True)
        self.matrix_keys.update((_text(r), int(d)) for r, d in pairs)
        self.models.update(v for v in frame["model"].unique().tolist() if _key(v) is not None)
        self.resolutions.update(
            v for v in frame["resolution"].unique().tolist() if _key(v) is not None
        )

    # -- what the CLI shows -----------------------------------------------------------------
    def count(self, status: str) -> int:
        return self.status.get(status, 0)

    def status_counts(self) -> pd.Series:
        """As ``report["status"].value_counts()``."""
        return value_counts(self.status)

    def unfinished(self, sliced: bool = False) -> bool:
        """See progress.unfinished."""
        ignored = {"completed", "retired"} | ({"pending"} if sliced else set())
        return any(n for status, n in self.status.items() if status not in ignored)

    def summary_tables(self) -> dict[str, pd.DataFrame]:
        """As summary.summary_tables(report), each cut to its first SHOWN_ROWS rows (all that
        is shown) with the number of rows of the whole in ``attrs["groups"]`` when longer."""
        names = [OVERALL, *dimensions(pd.DataFrame(columns=self.columns))]
        cost = COST_COLUMN in self.columns
        return {n: self.dims[n].table(self.verify, cost) for n in names if n in self.dims}

    def failure_rows(self) -> list[tuple[Any, Any, int, Any]]:
        """(error_type, http_status, jobs, first message) in the order of
        ``failed.groupby(["error_type", "http_status"], dropna=False)``."""

        def order(key: tuple[Any, Any]) -> tuple:
            kind, http = key
            return (kind is None, "" if kind is None else kind, http is None, http or 0)

        rows = []
        for key in sorted(self.failure_groups, key=order):
            n, message, kind, http = self.failure_groups[key]
            rows.append((kind, http, n, message))
        return rows
