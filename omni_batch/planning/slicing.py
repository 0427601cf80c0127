"""Running part of a manifest: `--only NAME=VALUE` (a template variable, a tag, aspect_ratio or
duration) and `--limit N` (new submits this run). The rest stays pending for a later run.

The filter itself runs in the journal's pending-page query (``Journal.set_slice``); this module
parses and checks it against the manifest (a name it does not know, a value no job has) and
counts what the run will submit, streaming the jobs: memory stays flat in job count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from omni_batch.errors import UsageError
from omni_batch.planning.jobs import Job
from omni_batch.planning.manifest import Manifest
from omni_batch.planning.problems import suggest

BUILT_IN = ("aspect_ratio", "duration")
SHOWN_VALUES = 20  # values named in a "matches no job" error, at most
_BATCH = 500  # job ids per query when counting what a folder already did

Only = Mapping[str, Sequence[str]]


def parse_only(items: Iterable[str]) -> dict[str, list[str]]:
    """``["product=shoe", "product=bag", "stage=draft"]`` → ``{product: [shoe, bag], ...}``."""
    only: dict[str, list[str]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise UsageError(f"--only {item!r}: expected NAME=VALUE, e.g. --only product=shoe")
        values = only.setdefault(name, [])
        if value not in values:
            values.append(value)
    return only


def normalise(only: Only | None) -> dict[str, list[str]]:
    """RunOptions.only as given by a library caller (a value may be one string)."""
    if not only:
        return {}
    out: dict[str, list[str]] = {}
    for name, values in only.items():
        listed = [values] if isinstance(values, str | int) else list(values)
        out[str(name)] = [str(v) for v in listed]
    return out


def known_names(manifest: Manifest) -> list[str]:
    return [*manifest.var_names, *manifest.tag_names, *BUILT_IN]


def _values_of(job: Job, name: str) -> list[str]:
    if name == "aspect_ratio":
        return [job.aspect_ratio]
    if name == "duration":
        return [str(job.duration)]
    return [m[name] for m in (job.vars, job.tags) if name in m]


def matches(job: Job, only: Only) -> bool:
    """Every NAME matches (any of its values); a var and a tag of one name: either."""
    return all(any(v in values for v in _values_of(job, n)) for n, values in only.items())


@dataclass(frozen=True, slots=True)
class SlicePlan:
    jobs: int  # in the manifest
    matching: int  # of them, matching --only
    done: int  # of the matching, already past pending in the folder's journal
    limit: int | None

    @property
    def to_submit(self) -> int:
        left = max(0, self.matching - self.done)
        return left if self.limit is None else min(left, self.limit)

    def describe(self, only: Only) -> str:
        parts = []
        if only:
            shown = " ".join(f"{n}={'|'.join(v)}" for n, v in only.items())
            parts.append(f"{self.matching:,} match --only {shown}")
        if self.done:
            parts.append(f"{self.done:,} of them already done or under way")
        if self.limit is not None:
            parts.append(f"--limit {self.limit:,}")
        return (
            f"this run submits at most {self.to_submit:,} of the manifest's {self.jobs:,} jobs "
            f"({'; '.join(parts)}); the rest stay pending for a later run"
        )


def check(
    manifest: Manifest,
    only: Only,
    limit: int | None,
    started: Callable[[list[str]], int] | None = None,
) -> SlicePlan:
    """Refuse a NAME the manifest does not have and a VALUE no job has (UsageError, exit 2);
    count the matching jobs and, with ``started`` (how many of some job ids the output folder's
    journal already has past pending: journal.started_counter), those already done."""
    names = known_names(manifest)
    for name in only:
        if name not in names:
            raise UsageError(
                f"--only {name}: no such name in {Path(manifest.path).name}; known: "
                f"{', '.join(names)}{suggest(name, names)}"
            )
    seen: dict[str, set[str]] = {n: set() for n in only}  # values seen, up to SHOWN_VALUES
    found: dict[str, set[str]] = {n: set() for n in only}  # asked-for values some job has
    jobs = matching = 0
    batch: list[str] = []
    done = 0
    for job in manifest.jobs():
        jobs += 1
        for name, values in only.items():
            for value in _values_of(job, name):
                if value in values:
                    found[name].add(value)
                if len(seen[name]) < SHOWN_VALUES:
                    seen[name].add(value)
        if matches(job, only):
            matching += 1
            if started is not None:
                batch.append(job.job_id)
                if len(batch) >= _BATCH:
                    done += started(batch)
                    batch.clear()
    if batch and started is not None:
        done += started(batch)
    for name, values in only.items():
        for value in values:
            if value not in found[name]:
                have = sorted(seen[name])
                more = ", …" if len(have) >= SHOWN_VALUES else ""
                raise UsageError(
                    f"--only {name}={value} matches no job; {name} values: "
                    f"{', '.join(have) or '(none)'}{more}{suggest(value, have)}"
                )
    return SlicePlan(jobs, matching, done, limit)
