"""Terminal views of library results (rich renderables); no logic beyond layout."""

from __future__ import annotations

from itertools import islice

from rich.console import Group
from rich.table import Table
from rich.text import Text

from omni_batch.planning.catalog import usd
from omni_batch.planning.manifest import PlanSummary
from omni_batch.planning.plan import Plan


def _counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def _money(counts: dict, money: dict) -> str:
    """``a $2.16, b price unknown``: the estimate per value (of its priced jobs; the cost row
    counts the jobs of unknown price), never $0 for a value without a price."""
    return ", ".join(f"{k} {usd(money[k])}" if k in money else f"{k} price unknown" for k in counts)


def cost_text(s: PlanSummary) -> str:
    """The whole plan's estimate: "$12.96 (estimate at the catalog's prices)", with the jobs
    whose price is unknown said plainly (never counted as $0)."""
    if s.jobs and s.unpriced_jobs == s.jobs:
        return "price unknown (no price in the catalog for these models; --catalog adds one)"
    text = f"{usd(s.cost_usd)} estimated at the catalog's prices"
    if s.unpriced_jobs:
        models = ", ".join(sorted(s.unpriced_by_model))
        text += f" + {s.unpriced_jobs:,} jobs of unknown price ({models})"
    return text


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
    table.add_row("cost", Text(cost_text(s), style="bold"))
    if s.cost_usd or s.unpriced_jobs:
        table.add_row("cost by model", _money(s.by_model, s.cost_by_model))
        table.add_row("  by ratio", _money(s.by_aspect_ratio, s.cost_by_aspect_ratio))
        table.add_row(
            "  by duration",
            _money(
                {f"{k}s": v for k, v in s.by_duration.items()},
                {f"{k}s": v for k, v in s.cost_by_duration.items()},
            ),
        )
    catalog = plan.manifest.catalog
    for model in s.by_model:
        rules = catalog.get(model)
        if rules is not None:
            table.add_row("price", Text(f"{model}: {rules.price_text()}", style="dim"))
    if b.max_jobs is None and b.max_video_seconds is None and b.max_cost is None:
        budget = Text("no budget set", style="dim")
    else:
        limits = [
            f"{b.max_jobs:,} jobs" if b.max_jobs else "",
            f"{b.max_video_seconds:,} s" if b.max_video_seconds else "",
            usd(b.max_cost) if b.max_cost else "",
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
