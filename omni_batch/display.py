"""Terminal views of library results (rich renderables); no logic beyond layout."""

from __future__ import annotations

from itertools import islice

from rich.console import Group
from rich.table import Table
from rich.text import Text

from omni_batch.plan import Plan


def _counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def plan_summary(plan: Plan, width: int = 100, first: int = 10) -> Group:
    s = plan.summary
    b = s.budget
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("manifest", f"{s.name}  ({s.path})")
    table.add_row(
        "jobs", f"{s.jobs:,} from {s.prompts:,} prompt entr{'y' if s.prompts == 1 else 'ies'}"
    )
    table.add_row("video", f"{s.video_seconds:,} s ({s.video_seconds / 60:,.1f} min)")
    table.add_row("models", _counts(s.by_model))
    table.add_row("aspect ratios", _counts(s.by_aspect_ratio))
    table.add_row("durations", _counts({f"{k}s": v for k, v in s.by_duration.items()}))
    table.add_row("resolutions", _counts(s.by_resolution))
    if b.max_jobs is None and b.max_video_seconds is None:
        budget = Text("no budget set", style="dim")
    else:
        limits = [
            f"{b.max_jobs:,} jobs" if b.max_jobs else "",
            f"{b.max_video_seconds:,} s" if b.max_video_seconds else "",
        ]
        budget = Text(f"within budget ({', '.join(x for x in limits if x)})", style="green")
    table.add_row("budget", budget)
    for note in plan.manifest.notes:
        table.add_row("note", Text(f"{note.where}: {note.message}", style="yellow"))

    jobs = Table(title=f"first {min(first, s.jobs)} of {s.jobs:,} jobs", title_justify="left")
    shown = list(islice(plan.jobs(), first))
    id_width = max((len(j.job_id) for j in shown), default=6)
    jobs.add_column("job_id", no_wrap=True, min_width=min(id_width, 48))
    for name in ("ratio", "dur", "model"):
        jobs.add_column(name, no_wrap=True, min_width=len(name) + 1)
    room = width - min(id_width, 48) - 40  # the other columns and the borders
    jobs.add_column("prompt", no_wrap=True, overflow="ellipsis", max_width=max(room, 12))
    for job in shown:
        jobs.add_row(job.job_id, job.aspect_ratio, f"{job.duration}s", job.model, job.prompt)
    return Group(table, Text(""), jobs)
