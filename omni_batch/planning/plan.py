"""`plan`: what a manifest will do, without the network — a summary, and the jobs as JSON/CSV/frame.

Writers stream job by job, so a 100,000-job plan never sits in memory as objects.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from omni_batch.planning.catalog import Catalog
from omni_batch.planning.jobs import Job
from omni_batch.planning.manifest import Manifest, PlanSummary, load_manifest

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Plan:
    manifest: Manifest
    summary: PlanSummary

    def jobs(self) -> Iterator[Job]:
        return self.manifest.jobs()

    @property
    def columns(self) -> list[str]:
        m = self.manifest
        return [
            *("job_id", "prompt_id", "model", "prompt", "aspect_ratio", "duration"),
            *("resolution", "repeat", "source", "cost_usd"),
            *(f"var_{v}" for v in m.var_names),
            *(f"tag_{t}" for t in m.tag_names),
        ]

    def rows(self) -> Iterator[dict]:
        m = self.manifest
        for job in self.jobs():
            row = job.to_row(m.var_names, m.tag_names)
            row["cost_usd"] = m.job_cost(job)  # None (empty in CSV): price unknown, never 0
            yield row

    def to_frame(self) -> pd.DataFrame:
        """One row per job (the CSV columns), for notebooks."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=self.columns)

    def write_json(self, out: IO[str]) -> None:
        """A JSON array, one object per job, written as the jobs are made."""
        out.write("[")
        dumps = json.JSONEncoder(ensure_ascii=False).encode
        for n, job in enumerate(self.jobs()):
            out.write(",\n" if n else "\n")
            record = job.to_record()
            record["cost_usd"] = self.manifest.job_cost(job)  # null: price unknown
            out.write(dumps(record))
        out.write("\n]\n")

    def write_csv(self, out: IO[str]) -> None:
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows())


def plan(
    manifest: str | Path,
    catalog: Catalog | str | Path | None = None,
    *,
    max_jobs: int | None = None,
) -> Plan:
    """Load and validate ``manifest``; raise ManifestError (every problem) when it is wrong.

    ``max_jobs``: refuse a manifest expanding to more jobs (default: its `budget.max_jobs`,
    else DEFAULT_MAX_JOBS); counted before any job is made.
    """
    loaded = load_manifest(manifest, catalog, max_jobs=max_jobs)
    return Plan(loaded, loaded.summary())
