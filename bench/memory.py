"""Memory per job of the CLI run path: peak RSS of `omni-batch run` at two sizes, and the KB
each extra job costs, with the default options and with `--no-verify`.

    .venv/bin/python bench/memory.py [--jobs 1000 5000] [--repeat 3] [--source /work/main]

Each run is `python -m omni_batch run M --yes --json` in a process of its own against the
simulator in yet another (`sim_server.py`, instant generation), so the peak RSS (the child's
``ru_maxrss`` from ``wait4``) is the CLI's alone, not the simulator's tasks. ``--source DIR``
runs the CLI of another checkout (PYTHONPATH=DIR), e.g. main, for a before/after table.
Each size runs ``--repeat`` times (sizes interleaved) and its median peak counts: one run's peak
moves by ±2 MB (threads' malloc arenas, the prober's decodes), which is ±0.5 KB a job over 4,000.
Targets (issue #14 item 9): < 0.5 KB per extra job, < 200 MB at the larger size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _support import INSTANT, emit, note, scratch, simulator, write_manifest

REPO = Path(__file__).resolve().parent.parent


def _cli_peak(
    manifest: Path, out: Path, base_url: str, key: str, verify: bool, source: Path | None
) -> tuple[float, dict]:
    """(peak RSS MB, the --json object) of one CLI run."""
    env = dict(os.environ, TOAPIS_API_KEY=key)
    env.pop("TOAPIS_API_KEYS", None)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    args = [
        sys.executable, "-m", "omni_batch", "run", str(manifest), "--out", str(out),
        "--base-url", base_url, "--rate", "100000", "--max-in-flight", "50",
        "--poll-interval", "0.05", "--yes", "--no-progress", "--json",
        "--verify" if verify else "--no-verify",
    ]  # fmt: skip
    # cwd: `python -m` puts the working directory first on sys.path, before PYTHONPATH
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=source if source is not None else REPO,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = output.decode().strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    return usage.ru_maxrss / 1024, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs=2, default=[1000, 5000], metavar=("A", "B"))
    parser.add_argument("--source", type=Path, default=None, help="checkout to run the CLI of")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (median counts)")
    args = parser.parse_args()
    small, large = args.jobs
    result: dict = {"source": str(args.source or REPO), "jobs": [small, large]}
    with simulator("fast", **INSTANT) as sim:
        for verify in (True, False):
            mode = "default" if verify else "no_verify"
            runs: dict[int, list[float]] = {small: [], large: []}
            for _ in range(args.repeat):
                for jobs in (small, large):
                    with scratch() as tmp:
                        manifest = write_manifest(Path(tmp), jobs, name=f"mem{jobs}")
                        peak, summary = _cli_peak(
                            manifest, Path(tmp) / "out", sim.base_url, sim.key, verify, args.source
                        )
                    done = summary.get("counts", {}).get("completed")
                    note(f"{mode:>9} {jobs:>6} jobs: peak RSS {peak:6.1f} MB ({done} completed)")
                    if done != jobs:
                        note(f"  warning: {done} of {jobs} completed: {summary.get('message')}")
                    runs[jobs].append(peak)
            peaks = {jobs: statistics.median(found) for jobs, found in runs.items()}
            per_job = (peaks[large] - peaks[small]) * 1024 / (large - small)
            note(f"{mode:>9}: {per_job:.2f} KB per extra job")
            result[mode] = {
                f"peak_rss_mb_{small}": round(peaks[small], 1),
                f"peak_rss_mb_{large}": round(peaks[large], 1),
                "kb_per_extra_job": round(per_job, 3),
                "runs_mb": {
                    str(jobs): [round(p, 1) for p in found] for jobs, found in runs.items()
                },
            }
    emit(result)


if __name__ == "__main__":
    main()
