"""Summary tables of a report: success rate, latency percentiles and retries per aspect ratio,
duration, template variable and tag (pandas), and their compact terminal rendering (rich).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pandas as pd

from omni_batch.planning.catalog import usd

if TYPE_CHECKING:
    from rich.table import Table

OVERALL = "all"
DIMENSIONS = ("aspect_ratio", "duration")
# retries: extra submit attempts, summed over the group's jobs (a job's attempts - 1, not below 0)
COLUMNS = [
    "jobs", "completed", "failed", "success_rate", "latency_p50", "latency_p90", "retries",
]  # fmt: skip
VERIFY_COLUMN = "verify_failed"  # completed jobs whose file the probe flagged
SHOWN_ROWS = 50  # the most rows of one table ever shown (the gallery's; the terminal's: 12)
# a table cut to its first rows (digest.ReportDigest) holds its whole length in attrs[GROUPS]
GROUPS = "groups"
COST_COLUMN = "cost_usd"  # spend (issue #15): the group's jobs' cost_usd summed


def dimensions(frame: pd.DataFrame) -> list[str]:
    """The columns a report is summarised by, in display order."""
    extra = [c for c in frame.columns if c.startswith(("var_", "tag_"))]
    return [c for c in DIMENSIONS if c in frame.columns] + sorted(
        extra, key=lambda c: (not c.startswith("var_"), c)
    )


def _is_false(value: object) -> bool:
    # `verified` may be bool, nullable boolean or object with None (not probed): only an
    # explicit False is a failure.
    return value is not None and value is not pd.NA and str(value).strip().lower() in ("false", "0")


def work_frame(frame: pd.DataFrame) -> pd.DataFrame:
    status = frame["status"] if "status" in frame else pd.Series("", index=frame.index)
    completed = status.eq("completed")
    attempts = pd.to_numeric(frame.get("attempts", 0), errors="coerce")
    latency = pd.to_numeric(frame.get("latency_s", math.nan), errors="coerce")
    work = pd.DataFrame(
        {
            "completed": completed,
            "failed": status.eq("failed"),
            "latency": pd.Series(latency, index=frame.index).where(completed),
            "retries": (pd.Series(attempts, index=frame.index).fillna(0) - 1).clip(lower=0),
        },
        index=frame.index,
    )
    if "verified" in frame:
        work[VERIFY_COLUMN] = completed & frame["verified"].map(_is_false).astype(bool)
    if COST_COLUMN in frame:
        work[COST_COLUMN] = pd.to_numeric(frame[COST_COLUMN], errors="coerce")
    return work


def _aggregate(work: pd.DataFrame, key: pd.Series) -> pd.DataFrame:
    grouped = work.groupby(key, sort=True)
    verify = grouped[VERIFY_COLUMN].sum() if VERIFY_COLUMN in work else None
    return finish_table(
        grouped.size(),
        grouped["completed"].sum(),
        grouped["failed"].sum(),
        grouped["latency"].quantile(0.5),
        grouped["latency"].quantile(0.9),
        grouped["retries"].sum(),
        verify,
        key.name,
        grouped[COST_COLUMN].sum(min_count=1) if COST_COLUMN in work else None,
    )


def finish_table(
    jobs: pd.Series,
    completed: pd.Series,
    failed: pd.Series,
    p50: pd.Series,
    p90: pd.Series,
    retries: pd.Series,
    verify_failed: pd.Series | None,
    name: object,
    cost: pd.Series | None = None,
) -> pd.DataFrame:
    """One summary table from its per-group parts (Series on the same sorted index): the
    whole-table path and the streamed one (`digest.ReportDigest`) share it."""
    table = pd.DataFrame(
        {
            "jobs": jobs,
            "completed": completed,
            "failed": failed,
            "latency_p50": p50,
            "latency_p90": p90,
            "retries": retries,
        }
    )
    settled = table["completed"] + table["failed"]
    # of the jobs that finished: a run still going is not penalised for its pending jobs
    table.insert(3, "success_rate", (table["completed"] / settled.where(settled > 0)).round(4))
    for column in ("jobs", "completed", "failed", "retries"):
        table[column] = table[column].astype("int64")
    for column in ("latency_p50", "latency_p90"):
        table[column] = table[column].round(2)
    if verify_failed is not None:
        table[VERIFY_COLUMN] = verify_failed.astype("int64")
    if cost is not None:
        # a job billed at an unknown price is NaN: a group of only those stays NaN, never $0
        table[COST_COLUMN] = cost.round(6)
    table.index.name = name
    return table


def keep_mask(values: pd.Series) -> pd.Series:
    """The rows of a dimension's column that have a value (not missing, not blank)."""
    return values.notna() & values.astype(str).str.strip().ne("")


def summary_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per dimension, indexed by its values; first ``"all"``, the whole run.

    Columns: jobs, completed, failed, success_rate (completed / (completed + failed), NaN
    while none finished), latency_p50 and latency_p90 (seconds, completed jobs), retries
    (extra submit attempts summed: attempts - 1 per job), and verify_failed (completed jobs the
    probe flagged) when the report has a ``verified`` column, and cost_usd (the jobs' cost
    summed; NaN when every job of the group was billed at an unknown price) when it has a
    ``cost_usd`` column. Retired jobs (no longer in the manifest) are left out. Jobs with no
    value for a variable or tag (a prompt that does not use it) are left out of that table.
    """
    if "status" in frame:  # jobs no longer in the manifest are not part of its summary
        frame = frame[frame["status"].ne("retired")]
    work = work_frame(frame)
    tables = {OVERALL: _aggregate(work, pd.Series(OVERALL, index=frame.index, name=OVERALL))}
    for column in dimensions(frame):
        values = frame[column]
        keep = keep_mask(values)
        tables[column] = _aggregate(work[keep], values[keep].rename(column))
    return tables


def label(name: str) -> str:
    """``var_product`` → ``product``, ``tag_stage`` → ``#stage``, ``aspect_ratio`` → ``ratio``."""
    if name.startswith("var_"):
        return name[4:]
    if name.startswith("tag_"):
        return "#" + name[4:]
    return {"aspect_ratio": "ratio"}.get(name, name)


def formatted(table: pd.DataFrame) -> pd.DataFrame:
    """The table as display strings: rates in percent, seconds with one decimal, '—' for none."""

    def seconds(v: float) -> str:
        return "—" if pd.isna(v) else f"{v:.1f}"

    out = pd.DataFrame(index=table.index.astype(str))
    for column in table.columns:
        values = table[column].to_numpy()
        if column == "success_rate":
            out["success"] = ["—" if pd.isna(v) else f"{v:.0%}" for v in values]
        elif column == COST_COLUMN:
            out["spend"] = [usd(v, "—") for v in values]
        elif column.startswith("latency_"):
            out[column.replace("latency_", "") + " s"] = [seconds(v) for v in values]
        else:
            out[column.replace("_", " ")] = [str(v) for v in values]
    return out


def rows(table: pd.DataFrame) -> int:
    """How many values a summary table has: its length, or the whole's when cut (GROUPS)."""
    return int(table.attrs.get(GROUPS, len(table)))


def informative(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The whole-run table and every dimension with more than one value (the others repeat it)."""
    return {n: t for n, t in tables.items() if n == OVERALL or rows(t) > 1}


def summary_renderable(
    tables: dict[str, pd.DataFrame], max_rows: int = 12, value_width: int | None = 32
) -> Table:
    """One compact rich table: a section per informative dimension, ``max_rows`` values each,
    values cut at ``value_width`` characters (None: whole, for output that is not a terminal)."""
    from rich.table import Table
    from rich.text import Text

    shown = informative(tables)
    grid = Table(title="summary", title_justify="left", show_edge=False, pad_edge=False)
    grid.add_column("by", style="bold", no_wrap=True)
    grid.add_column("value", overflow="ellipsis", max_width=value_width, no_wrap=True)
    headers = list(formatted(next(iter(shown.values()))).columns) if shown else []
    for header in headers:
        grid.add_column(header, justify="right", no_wrap=True)
    for name, table in shown.items():
        text = formatted(table.head(max_rows))  # a var of 20,000 values: format only those
        for i, (value, row) in enumerate(text.iterrows()):
            # Text, not str: a value like "[red]" must print as itself, not as rich markup
            value_text = Text("" if name == OVERALL else str(value))
            grid.add_row(Text(label(name)) if i == 0 else "", value_text, *row.tolist())
        if rows(table) > max_rows:
            grid.add_row("", f"… {rows(table) - max_rows} more", *[""] * len(headers))
        grid.add_section()
    return grid
