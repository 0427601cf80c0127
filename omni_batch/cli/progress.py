"""What a person watching a run sees: a live panel on a terminal, a one-line summary every few
seconds otherwise, and the final summary table. Reads RunStats; never touches the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from omni_batch.errors import InputError, OmniBatchError, StateError, UsageError
from omni_batch.journal import JOURNAL_FILE, STATES
from omni_batch.outputs.digest import ReportDigest, value_counts
from omni_batch.running.engine import RunStats

ORDER = STATES  # the journal's one list of job states, in the order a job goes through them


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def summary_line(stats: RunStats, rate: str | None = None) -> str:
    """``rate``: the budgets' current rates, e.g. `submit 5.0/s · query 50.0/s`."""
    counts = stats.counts
    total = sum(counts.values())
    done = counts.get("completed", 0) + counts.get("failed", 0)
    elapsed = time.monotonic() - stats.started
    per_min = stats.finished_here / elapsed * 60 if elapsed > 0 else 0.0
    left = total - done
    eta = _duration(left / per_min * 60) if per_min > 0 and left else "-"
    parts = [f"{name} {counts.get(name, 0)}" for name in ORDER if counts.get(name, 0)]
    limit = f" | {rate}" if rate else ""
    money = f" | {stats.spend.line()}" if stats.spend is not None else ""
    return (
        f"{done}/{total} done ({', '.join(parts)}) | {per_min:.1f} jobs/min | ETA {eta}{limit}"
        f" | 429s {stats.rate_limited}{money}"
    )


class Progress:
    """Runs beside the engine on the same loop; `live` picks the rich panel or plain lines."""

    def __init__(self, console: Console, live: bool, every: float = 5.0):
        self.console, self.live, self.every = console, live, every
        self._task: asyncio.Task[None] | None = None
        self._stats: RunStats | None = None
        self._seen = 0  # messages printed so far (RunStats.logged counts them all)
        self._rate: Callable[[], str | None] = lambda: None

    def start(self, stats: RunStats, rate: Callable[[], str | None] = lambda: None) -> None:
        self._stats, self._rate = stats, rate
        self._task = asyncio.create_task(self._live() if self.live else self._lines())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if not self.live:
                self._new_messages()  # what was said since the last line, even in a short run

    def _new_messages(self) -> None:
        assert self._stats is not None
        new = min(self._stats.logged - self._seen, len(self._stats.messages))
        for message in self._stats.messages[len(self._stats.messages) - new :]:
            self.console.print(message, highlight=False, soft_wrap=True)
        self._seen = self._stats.logged

    def _panel(self) -> Group:
        assert self._stats is not None
        table = Table.grid(padding=(0, 2))
        for _ in ORDER:
            table.add_column(justify="right")
        table.add_row(*(Text(n, style="bold") for n in ORDER))
        table.add_row(*(str(self._stats.counts.get(n, 0)) for n in ORDER))
        lines = [Text(summary_line(self._stats, self._rate()))]
        lines += [Text(m, style="dim") for m in self._stats.messages[-3:]]
        return Group(table, *lines)

    async def _live(self) -> None:
        with Live(
            self._panel(), console=self.console, refresh_per_second=4, transient=False
        ) as live:
            while True:
                await asyncio.sleep(0.25)
                live.update(self._panel())

    async def _lines(self) -> None:
        assert self._stats is not None
        while True:
            await asyncio.sleep(self.every)
            self._new_messages()
            self.console.print(
                summary_line(self._stats, self._rate()), highlight=False, soft_wrap=True
            )


def _failure_rows(report: pd.DataFrame | ReportDigest) -> list[tuple[Any, Any, int, Any]]:
    if isinstance(report, ReportDigest):
        return report.failure_rows()
    failed = report[report["status"] == "failed"]
    return [
        (kind, status, len(group), group["error_message"].iloc[0])
        for (kind, status), group in failed.groupby(["error_type", "http_status"], dropna=False)
    ]


def final_table(report: pd.DataFrame | ReportDigest) -> Group:
    """Counts by status, and failures by error type with one example message each; from the
    report table, or from the digest the CLI keeps instead (the same table)."""
    table = Table(title="run summary", title_justify="left")
    table.add_column("status")
    table.add_column("jobs", justify="right")
    counts = (
        report.status_counts()
        if isinstance(report, ReportDigest)
        else report["status"].value_counts()
    )
    for status, n in counts.items():
        table.add_row(str(status), str(n))
    parts: list = [table]
    failures = _failure_rows(report)
    if failures:
        why = Table(title="failures", title_justify="left")
        for name in ("error_type", "http_status", "jobs", "example"):
            why.add_column(name, overflow="fold")
        for kind, status, n, message in failures:
            why.add_row(  # server text is never read as rich markup ("[redacted]", styles)
                Text(str(kind)),
                "" if pd.isna(status) else str(status),
                str(n),
                Text(str(message)[:120]),
            )
        parts.append(why)
    dups = (
        report.possible_duplicates
        if isinstance(report, ReportDigest)
        else report["possible_duplicate"].sum()
    )
    duplicates = int(dups)
    if duplicates:
        parts.append(
            Text(
                f"{duplicates} job(s) flagged possible_duplicate: an ambiguous submit was sent "
                "again, or an answer without a task id may have been billed",
                style="yellow",
            )
        )
    return Group(*parts)


def _digest_summary(out: dict[str, Any], digest: ReportDigest, sliced: bool) -> None:
    """run_summary's numbers from the digest the CLI keeps (the same as from the table)."""
    retired = digest.count("retired")
    out["jobs"] = digest.rows - retired
    out["retired"] = retired
    out["left_pending"] = left_pending(digest, sliced)
    for state, n in value_counts(digest.states).items():
        out["counts"][str(state)] = int(n)
    kinds = value_counts(digest.failure_kinds)
    out["failures"] = {str(kind): int(n) for kind, n in kinds.items()}
    out["spend"].update(
        tasks_created=digest.tasks_created,  # each a task the API made, and may bill
        video_seconds_requested=digest.video_seconds_requested,
        videos_completed=digest.videos_completed,
        video_seconds_completed=digest.video_seconds_completed,
        possible_duplicates=digest.possible_duplicates,
    )
    if "cost_usd" in digest.columns:
        out["spend"]["cost_usd"] = round(digest.cost_usd, 6)
        out["spend"]["cost_unknown_jobs"] = digest.cost_unknown_jobs


REPORT_FILES = {
    "report_csv": "report.csv",
    "report_parquet": "report.parquet",
    "failures_csv": "failures.csv",
    "gallery": "gallery.html",
    "events": "events.jsonl",
    "journal": JOURNAL_FILE,
    "videos": "videos",
}


def _reason(error: BaseException) -> str:
    """``AuthError`` → ``auth_error``: the class that ended the run, as a stable word."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


LEFT_PENDING = "{n} jobs left pending for a later run (outside --limit/--only)"


def account_counts(report: pd.DataFrame | ReportDigest) -> dict[str, dict[str, int]]:
    """Jobs per account (its name) and status; jobs never submitted are not counted."""
    if isinstance(report, ReportDigest):
        return {name: dict(sorted(c.items())) for name, c in sorted(report.accounts.items())}
    if "account" not in report.columns:
        return {}
    named = report[report["account"].notna()]
    out: dict[str, dict[str, int]] = {}
    for (account, status), n in named.groupby(["account", "status"]).size().items():
        out.setdefault(str(account), {})[str(status)] = int(n)
    return dict(sorted(out.items()))


def account_line(report: pd.DataFrame | ReportDigest) -> str | None:
    """`accounts: a 12 completed, 1 failed · b 13 completed` (None with one account or none)."""
    counts = account_counts(report)
    if len(counts) < 2:
        return None
    parts = []
    for account, by_status in counts.items():
        inner = ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
        parts.append(f"{account} {inner}")
    return "accounts: " + " · ".join(parts)


def left_pending(report: pd.DataFrame | ReportDigest, sliced: bool) -> int:
    """After a run of a slice (--limit/--only): the manifest's jobs it left pending."""
    if isinstance(report, ReportDigest):
        return report.count("pending") if sliced else 0
    return int((report["status"] == "pending").sum()) if sliced else 0


def unfinished(report: pd.DataFrame | ReportDigest, sliced: bool = False) -> bool:
    """Whether the run leaves a job of the manifest not completed (exit 1). Retired jobs (no
    longer in the manifest) do not count, nor, after a sliced run, the jobs it left pending."""
    if isinstance(report, ReportDigest):
        return report.unfinished(sliced)
    status = report["status"]
    ignored = status.eq("retired") | (status.eq("pending") if sliced else False)
    return bool((status.ne("completed") & ~ignored).any())


def run_summary(
    folder: Path | None,
    report: pd.DataFrame | ReportDigest | None,
    error: OmniBatchError | None,
    simulated: str | None = None,
    declined: bool = False,
    sliced: bool = False,
) -> dict[str, Any]:
    """What `run --json` prints: how the run ended and what the folder holds.

    ``report`` is the run's report (or its digest, the CLI's); without one (the run ended on
    an error) it is read from
    the folder's journal, unless the error came before the run began (bad input, a busy or
    changed folder). ``spend`` counts tasks and seconds of video, and ``cost_usd``: the
    report's cost_usd summed (the catalog's prices; failed generations refunded), null when
    there is no report; ``cost_unknown_jobs`` counts billed jobs of unknown price (not in it).
    """
    if error is not None:
        code, reason = error.exit_code, _reason(error)
    elif declined:
        code, reason = 0, "declined"
    else:
        failed = report is not None and unfinished(report, sliced)
        code, reason = (1, "failed_jobs") if failed else (0, "completed")
    before_the_run = isinstance(error, (InputError, UsageError, StateError)) or declined
    if report is None and folder is not None and not before_the_run:
        from omni_batch.outputs.report import digest_report

        with contextlib.suppress(OmniBatchError):  # no journal yet: nothing to count
            report = digest_report(folder)
    out: dict[str, Any] = {
        "exit_code": code,
        "exit_reason": reason,
        "message": "\n".join(error.lines()) if error is not None else None,
        "folder": str(folder) if folder is not None else None,
        "simulated": simulated,
        "jobs": 0,
        "counts": dict.fromkeys(ORDER, 0),  # the manifest's jobs per state
        "retired": 0,  # jobs no longer in the manifest, kept in the report
        "left_pending": 0,  # jobs a sliced run (--limit/--only) left for a later run
        "failures": {},
        "accounts": {},  # account name -> jobs per status (jobs sent with its keys)
        "reports": {},
        "spend": {
            "tasks_created": 0,
            "video_seconds_requested": 0,
            "videos_completed": 0,
            "video_seconds_completed": 0,
            "possible_duplicates": 0,
            "cost_usd": None,
            "cost_unknown_jobs": 0,
        },
    }
    if declined:
        out["message"] = "nothing submitted"
    if isinstance(report, ReportDigest):
        if report.rows:
            _digest_summary(out, report, sliced)
            out["accounts"] = account_counts(report)
    elif report is not None and len(report):
        retired = report["status"] == "retired"
        out["jobs"] = int((~retired).sum())
        out["retired"] = int(retired.sum())
        out["left_pending"] = left_pending(report, sliced)
        for state, n in report.loc[~retired, "state"].value_counts().items():
            out["counts"][str(state)] = int(n)
        failed = report[report["status"] == "failed"]
        kinds = failed["error_type"].fillna("unknown").astype(str).value_counts()
        out["failures"] = {str(kind): int(n) for kind, n in kinds.items()}
        has_task = report["task_id"].notna()
        completed = report["status"] == "completed"
        seconds = pd.to_numeric(report["duration"], errors="coerce").fillna(0)
        out["spend"].update(
            tasks_created=int(has_task.sum()),  # each a task the API made, and may bill
            video_seconds_requested=int(seconds[has_task].sum()),
            videos_completed=int(completed.sum()),
            video_seconds_completed=int(seconds[completed].sum()),
            possible_duplicates=int(report["possible_duplicate"].astype(bool).sum()),
        )
        if "cost_usd" in report:
            cost = pd.to_numeric(report["cost_usd"], errors="coerce")
            out["spend"]["cost_usd"] = round(float(cost.sum()), 6)
            out["spend"]["cost_unknown_jobs"] = int(cost.isna().sum())
        out["accounts"] = account_counts(report)
    if folder is not None and not before_the_run:
        for name, file in REPORT_FILES.items():
            if (folder / file).exists():
                out["reports"][name] = str(folder / file)
        from omni_batch.store.location import recorded_location

        if where := recorded_location(folder):  # --store: the videos are in a bucket
            out["reports"]["videos"] = where
    return out
