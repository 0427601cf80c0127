"""CPU and memory of a refactor, before and after, side by side in one run: the floor
(floor.py), this checkout's runner and another checkout's runner (``--before DIR``, its code put
first on PYTHONPATH) each run ``overhead.py --no-verify`` on the same jobs, alternately
``--pairs`` times; the medians and each runner's ratio to the floor are printed (Markdown) and the
whole record goes to stdout's last line (JSON).

    .venv/bin/python bench/before_after.py --before /path/to/old/checkout [--jobs 5000] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def once(script: str, jobs: int, source: Path | None) -> dict[str, Any]:
    args = [sys.executable, str(BENCH / script), "--jobs", str(jobs)]
    if script == "overhead.py":
        args.append("--no-verify")
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    out = subprocess.run(args, stdout=subprocess.PIPE, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout before")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "before": [], "after": []}
    for n in range(args.pairs):
        for name, script, source in (
            ("floor", "floor.py", None),
            ("before", "overhead.py", args.before),
            ("after", "overhead.py", None),
        ):
            result = once(script, args.jobs, source)
            runs[name].append(result)
            say = f"{n + 1}/{args.pairs} {name}: {result['cpu_s_per_1k']} CPU s/1k"
            print(say, file=sys.stderr)
    med = {
        name: {
            key: statistics.median(r[key] for r in rs)
            for key in ("cpu_s_per_1k", "wall_s_per_1k", "peak_rss_mb")
        }
        for name, rs in runs.items()
    }
    floor = med["floor"]["cpu_s_per_1k"]
    print(f"{args.jobs} jobs, median of {args.pairs} alternating runs each\n")
    print("| | CPU s / 1,000 jobs | × floor | wall s / 1,000 jobs | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name, m in med.items():
        ratio = m["cpu_s_per_1k"] / floor
        print(
            f"| {name} | {m['cpu_s_per_1k']:.2f} | {ratio:.2f}× | {m['wall_s_per_1k']:.2f} "
            f"| {m['peak_rss_mb']:.0f} |"
        )
    print(json.dumps({"jobs": args.jobs, "pairs": args.pairs, "median": med, "runs": runs}))


if __name__ == "__main__":
    main()
