"""Every benchmark, each in its own process, against the simulator on loopback: one table on
stdout, every number in bench/results.json.

    .venv/bin/python bench/run_all.py [--quick] [--repeat 2] [--pairs 5] [--only NAME ...]

--quick runs small sizes (a sanity check in under a minute); --repeat N runs the whole suite N
times (interleaved, so the runs see different background noise) and shows every run. The CPU
comparison of benchmark 2 runs the floor and the runner (--no-verify) --pairs times, alternating,
and reports the median of each: on a shared machine one run of either moves by ±20%. Targets
are goals read off the issue, not pass/fail tests: the script always exits 0 when the
benchmarks ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]


PAIRED = ("floor", "bare")  # run alternately --pairs times; each reported as its median run

BENCHES = (
    Bench("rate", "rate_bound.py", ("--jobs", "500", "--rate", "25"), ("--jobs", "75")),
    Bench("floor", "floor.py", ("--jobs", "5000"), ("--jobs", "500")),
    Bench(
        "bare", "overhead.py", ("--jobs", "5000", "--no-verify"), ("--jobs", "500", "--no-verify")
    ),
    Bench("overhead", "overhead.py", ("--jobs", "5000"), ("--jobs", "500")),
    Bench("plan", "plan_scale.py", ("--prompts", "100"), ("--prompts", "10")),
    Bench("scale", "overhead.py", ("--jobs", "20000"), ("--jobs", "1000")),
    Bench("alternative", "alternative.py", ("--jobs", "50"), ("--jobs", "3")),
    Bench("polling", "poll_efficiency.py", ("--jobs", "200"), ("--jobs", "20")),
    Bench("budgets", "budgets.py", (), ("--quick",)),
)


def run_bench(bench: Bench, quick: bool) -> dict[str, Any]:
    args = bench.quick if quick else bench.full
    cmd = [sys.executable, str(BENCH / bench.script), *args]
    print(f"-- {bench.name}: {' '.join([bench.script, *args])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    took = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        print(f"   {bench.name} failed (exit {proc.returncode})", file=sys.stderr, flush=True)
        return {"error": f"exit {proc.returncode}", "bench_s": round(took, 1)}
    result = json.loads(lines[-1])
    result["bench_s"] = round(took, 1)
    print(f"   {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


# -- the table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    section: str
    metric: str
    value: Callable[[dict[str, dict[str, Any]]], Any]
    target: str = ""
    met: Callable[[dict[str, dict[str, Any]]], bool] | None = None


def _get(run: dict[str, dict[str, Any]], bench: str, key: str) -> Any:
    return run.get(bench, {}).get(key)


def _poll(run: dict[str, dict[str, Any]], side: str, key: str) -> Any:
    """A number of the polling benchmark's ``before`` or ``after`` run."""
    return (_get(run, "polling", side) or {}).get(key)


def _difference(a: Any, b: Any) -> float | None:
    return round(a - b, 2) if isinstance(a, int | float) and isinstance(b, int | float) else None


def _all(run: dict[str, dict[str, Any]], bench: str) -> str | None:
    values = _get(run, bench, "cpu_all")
    return " ".join(str(v) for v in values) if values else None


def _below(value: Any, limit: float) -> bool:
    """Met only when measured: a benchmark that did not run meets no target."""
    return isinstance(value, int | float) and value < limit


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if isinstance(a, int | float) and b else None


BUDGET_SCENARIOS = (
    ("published", "the default tier's published limits, 20-40 s generations"),
    ("burst1", "submit 20/s + query 50/s, no burst, no headers"),
    ("concurrency", "8 tasks at once, its 429 like a rate 429"),
    ("many", "10,000 jobs, submit 100/s, query 400/s"),
)


def _budget_rows() -> list[Row]:
    """bench/budgets.py: engine makespan ÷ the bound the budgets allow, and the 429 share."""
    out = []
    for n, (name, what) in enumerate(BUDGET_SCENARIOS):

        def shown(r: dict[str, dict[str, Any]], name: str = name) -> str:
            return (
                f"{_get(r, 'budgets', name + '_ratio')}; {_get(r, 'budgets', name + '_share_429')}"
            )

        def met(r: dict[str, dict[str, Any]], name: str = name) -> bool:
            ratio = _get(r, "budgets", name + "_ratio")
            return (ratio or 99) <= 1.1 and _below(_get(r, "budgets", name + "_share_429"), 0.01)

        title = "1b rate budgets (bench/budgets.py)" if n == 0 else ""
        out.append(
            Row(title, f"{name} ({what}): engine ÷ bound; 429 share", shown, "≤ 1.1; < 0.01", met)
        )
    return out


def rows(quick: bool) -> list[Row]:
    size = {b.name: (b.quick if quick else b.full) for b in BENCHES}
    jobs = {name: args[args.index("--jobs") + 1] for name, args in size.items() if "--jobs" in args}
    g = _get
    return [
        Row(
            f"1 rate limit: {jobs['rate']} jobs, 25 req/s key, fast generation "
            "(first poll 0.4 s, then every 0.3 s)",
            "makespan ÷ bound (whole run_async)",
            lambda r: g(r, "rate", "ratio"),
            "≤ 1.15",
            lambda r: (g(r, "rate", "ratio") or 99) <= 1.15,
        ),
        Row("", "API phase (engine) ÷ bound", lambda r: g(r, "rate", "engine_ratio")),
        Row(
            "",
            "makespan s / bound s",
            lambda r: f"{g(r, 'rate', 'makespan_s')} / {g(r, 'rate', 'bound_s')}",
        ),
        Row(
            "",
            "share of requests answered 429",
            lambda r: g(r, "rate", "share_429"),
            "< 0.01",
            lambda r: _below(g(r, "rate", "share_429"), 0.01),
        ),
        Row("", "polls per job", lambda r: g(r, "rate", "polls_per_job")),
        Row(
            "",
            "polls after terminal",
            lambda r: g(r, "rate", "polls_after_terminal"),
            "0",
            lambda r: g(r, "rate", "polls_after_terminal") == 0,
        ),
        *_budget_rows(),
        Row(
            f"2 overhead: {jobs['overhead']} jobs, no rate limit, instant generation "
            "(first poll 0 s, every 0.05 s), 50 in flight",
            "floor CPU s per 1k jobs (bare aiohttp: submit, poll, download), median",
            lambda r: g(r, "floor", "cpu_s_per_1k"),
        ),
        Row("", "  every floor run, alternating with the runner's", lambda r: _all(r, "floor")),
        Row(
            "",
            "runner --no-verify CPU s per 1k (the floor's calls + journal, reports, gallery), "
            "median",
            lambda r: g(r, "bare", "cpu_s_per_1k"),
        ),
        Row("", "  every runner --no-verify run", lambda r: _all(r, "bare")),
        Row(
            "",
            "runner --no-verify ÷ floor (medians)",
            lambda r: _ratio(g(r, "bare", "cpu_s_per_1k"), g(r, "floor", "cpu_s_per_1k")),
            "≤ 2",
            lambda r: (
                (_ratio(g(r, "bare", "cpu_s_per_1k"), g(r, "floor", "cpu_s_per_1k")) or 99) <= 2
            ),
        ),
        Row(
            "",
            "runner default CPU s per 1k (also decodes every video, writes its poster)",
            lambda r: g(r, "overhead", "cpu_s_per_1k"),
        ),
        Row(
            "",
            "runner default ÷ floor",
            lambda r: _ratio(g(r, "overhead", "cpu_s_per_1k"), g(r, "floor", "cpu_s_per_1k")),
        ),
        Row(
            "",
            "  verification CPU ms per video (default − --no-verify)",
            lambda r: _difference(g(r, "overhead", "cpu_s_per_1k"), g(r, "bare", "cpu_s_per_1k")),
        ),
        Row(
            "",
            "  of which API phase (engine) CPU s per 1k",
            lambda r: _per_k(r, "overhead", "engine_cpu_s"),
        ),
        Row(
            "",
            "  of which finish (reports, gallery) CPU s per 1k",
            lambda r: _per_k(r, "overhead", "finish_cpu_s"),
        ),
        Row("", "runner wall s per 1k jobs", lambda r: g(r, "overhead", "wall_s_per_1k")),
        Row("", "floor wall s per 1k jobs", lambda r: g(r, "floor", "wall_s_per_1k")),
        Row(
            "",
            "peak RSS MB runner / floor",
            lambda r: f"{g(r, 'overhead', 'peak_rss_mb')} / {g(r, 'floor', 'peak_rss_mb')}",
        ),
        Row(
            "3 scale",
            f"plan --format json, {_plan_jobs(quick)} jobs: wall s",
            lambda r: g(r, "plan", "plan_wall_s"),
        ),
        Row("", "  peak RSS MB", lambda r: g(r, "plan", "plan_peak_rss_mb")),
        Row(
            "",
            f"plan + journal creation, {_plan_jobs(quick)} jobs: wall s",
            lambda r: g(r, "plan", "journal_wall_s"),
        ),
        Row("", "  peak RSS MB", lambda r: g(r, "plan", "journal_peak_rss_mb")),
        Row(
            "",
            f"run {jobs['overhead']} jobs: peak RSS MB",
            lambda r: g(r, "overhead", "peak_rss_mb"),
            "< 250",
            lambda r: (g(r, "overhead", "peak_rss_mb") or 999) < 250,
        ),
        Row(
            "",
            f"run {jobs['scale']} jobs: peak RSS MB",
            lambda r: g(r, "scale", "peak_rss_mb"),
            "< 250",
            lambda r: (g(r, "scale", "peak_rss_mb") or 999) < 250,
        ),
        Row(
            "",
            f"  RSS ratio {jobs['scale']} ÷ {jobs['overhead']} jobs",
            lambda r: _ratio(g(r, "scale", "peak_rss_mb"), g(r, "overhead", "peak_rss_mb")),
            "flat (≈ 1)",
            lambda r: (
                (_ratio(g(r, "scale", "peak_rss_mb"), g(r, "overhead", "peak_rss_mb")) or 99)
                <= 1.15
            ),
        ),
        Row(
            "",
            f"  API phase only: peak RSS MB {jobs['overhead']} / {jobs['scale']} jobs",
            lambda r: (
                f"{g(r, 'overhead', 'engine_peak_rss_mb')} / {g(r, 'scale', 'engine_peak_rss_mb')}"
            ),
        ),
        Row(
            "",
            f"  setup (manifest + journal) wall s, {jobs['overhead']} / {jobs['scale']} jobs",
            lambda r: f"{g(r, 'overhead', 'setup_wall_s')} / {g(r, 'scale', 'setup_wall_s')}",
        ),
        Row(
            "",
            f"run {jobs['scale']} jobs: wall s (jobs/s)",
            lambda r: f"{g(r, 'scale', 'wall_s')} ({g(r, 'scale', 'jobs_per_s')})",
        ),
        Row(
            f"4 alternative: {jobs['alternative']} jobs, `default` profile as the real API at "
            "60x (sequential polls every 8 s; omni-batch Policy() ÷ 60)",
            "sequential loop makespan s",
            lambda r: g(r, "alternative", "sequential_makespan_s"),
        ),
        Row("", "omni-batch makespan s", lambda r: g(r, "alternative", "omni_makespan_s")),
        Row(
            "",
            "makespan ratio sequential ÷ omni-batch",
            lambda r: g(r, "alternative", "speedup"),
        ),
        Row(
            "",
            "in real time (min): sequential / omni-batch",
            lambda r: (
                f"{g(r, 'alternative', 'sequential_real_min')} / "
                f"{g(r, 'alternative', 'omni_real_min')}"
            ),
        ),
        Row(
            "",
            "polls per job: sequential / omni-batch",
            lambda r: (
                f"{g(r, 'alternative', 'sequential_polls_per_job')} / "
                f"{g(r, 'alternative', 'omni_polls_per_job')}"
            ),
        ),
        Row(
            f"5 polling: {jobs['polling']} jobs, 30-300 s generations ÷ 10, default Policy() ÷ 10",
            "status calls per job: before (main) / after",
            lambda r: (
                f"{_poll(r, 'before', 'polls_per_job')} / {_poll(r, 'after', 'polls_per_job')}"
            ),
            "≤ 3",
            lambda r: _below(_poll(r, "after", "polls_per_job"), 3.0001),
        ),
        Row(
            "",
            "after: first wave / later",
            lambda r: (
                f"{_poll(r, 'after', 'polls_per_job_first_wave')} / "
                f"{_poll(r, 'after', 'polls_per_job_later')}"
            ),
        ),
        Row(
            "",
            "detection delay p90, real s: before / after",
            lambda r: (
                f"{_poll(r, 'before', 'delay_p90_real_s')} / "
                f"{_poll(r, 'after', 'delay_p90_real_s')}"
            ),
            "≤ 10",
            lambda r: _below(_poll(r, "after", "delay_p90_real_s"), 10.0001),
        ),
        Row(
            "",
            "mean task time, real s (queue + generation)",
            lambda r: _poll(r, "after", "mean_task_real_s"),
        ),
        Row("", "polls after terminal", lambda r: _poll(r, "after", "polls_after_terminal")),
    ]


def _per_k(run: dict[str, dict[str, Any]], bench: str, key: str) -> float | None:
    value, jobs = _get(run, bench, key), _get(run, bench, "jobs")
    return round(value * 1000 / jobs, 3) if value is not None and jobs else None


def _plan_jobs(quick: bool) -> str:
    return "10,000" if quick else "100,000"


def table(runs: list[dict[str, dict[str, Any]]], quick: bool) -> tuple[str, list[dict]]:
    header = ["benchmark", "metric", *(f"run {i + 1}" for i in range(len(runs))), "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    records = []
    for row in rows(quick):
        values = []
        for run in runs:
            try:
                values.append(row.value(run))
            except (TypeError, KeyError, ZeroDivisionError):
                values.append(None)
        met = ""
        if row.met is not None:
            verdicts = []
            for run in runs:
                try:
                    verdicts.append(row.met(run))
                except (TypeError, KeyError, ZeroDivisionError):
                    verdicts.append(False)
            met = "yes" if all(verdicts) else "no" if not any(verdicts) else "mixed"
        cells = [row.section, row.metric, *("-" if v is None else str(v) for v in values)]
        lines.append("| " + " | ".join([*cells, row.target, met]) + " |")
        records.append(
            {"benchmark": row.section, "metric": row.metric, "runs": values, "target": row.target,
             "met": met}
        )  # fmt: skip
    return "\n".join(lines), records


def meta(quick: bool, repeat: int, pairs: int) -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted": git("status", "--porcelain", "--", "omni_batch").splitlines(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "quick": quick,
        "repeat": repeat,
        "pairs": pairs,
    }


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU per 1k jobs (the lower middle one of an even count), plus
    every run's CPU per 1k (``cpu_all``)."""
    ok = sorted(
        (r for r in results if isinstance(r.get("cpu_s_per_1k"), int | float)),
        key=lambda r: r["cpu_s_per_1k"],
    )
    if not ok:
        return results[-1]
    return {**ok[(len(ok) - 1) // 2], "cpu_all": [r.get("cpu_s_per_1k") for r in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--repeat", type=int, default=1, help="run the suite N times")
    parser.add_argument(
        "--pairs", type=int, default=5, help="floor/runner CPU runs, alternating (median)"
    )
    parser.add_argument(
        "--only", nargs="+", choices=[b.name for b in BENCHES], help="run only these"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = parser.parse_args()
    if args.pairs < 1 or args.repeat < 1:
        parser.error("--pairs and --repeat must be at least 1")
    info = meta(args.quick, args.repeat, args.pairs)
    runs: list[dict[str, dict[str, Any]]] = []
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    for _ in range(args.repeat):
        run: dict[str, dict[str, Any]] = {}
        for bench in chosen:
            if bench.name in run:
                continue
            if bench.name not in PAIRED:
                run[bench.name] = run_bench(bench, args.quick)
                continue
            paired = [b for b in chosen if b.name in PAIRED]
            tries: dict[str, list[dict[str, Any]]] = {b.name: [] for b in paired}
            for _ in range(args.pairs):
                for b in paired:
                    tries[b.name].append(run_bench(b, args.quick))
            run.update({name: _median_run(results) for name, results in tries.items()})
        runs.append(run)
    text, records = table(runs, args.quick)
    print(text)
    info["loadavg_at_end"] = os.getloadavg()
    args.out.write_text(
        json.dumps({"meta": info, "runs": runs, "table": records}, indent=2) + "\n",
        encoding="utf-8",
    )
    print(f"\nwritten to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
