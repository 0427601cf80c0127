"""Profile the runner on the overhead benchmark (benchmark 2) with py-spy, every thread, and
print where its CPU goes: by phase, by omni_batch function (inclusive) and by leaf frame.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/profile_runner.py [--jobs 2000] [--raw FILE]

py-spy samples only threads that are running (not those waiting in epoll/locks), so the
shares approximate CPU time. The simulator is a separate process and is not sampled.
(`overhead.py --pyinstrument FILE` gives pyinstrument's view of the main thread instead.)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from _support import BENCH

PHASES = (  # first match wins, checked against the whole stack
    ("finish: gallery posters", ("_posters",)),
    ("finish: gallery page", ("write_gallery",)),
    ("finish: reports", ("write_reports",)),
    ("engine: report refresh", ("refresh_reports",)),
    ("engine: video probe", ("probe (omni_batch/running/verify.py",)),
    ("engine: download", ("download (omni_batch/running/download.py",)),
    ("engine: journal", ("omni_batch/journal/sqlite.py",)),
    ("engine: submit", ("Submitter.submit_job",)),
    ("engine: poll", ("Engine.poll",)),
    ("engine: other", ("omni_batch/running/engine.py", "omni_batch/running/budgets.py")),
    ("setup: manifest + journal", ("run_async",)),
    ("event loop / aiohttp (no omni_batch frame)", ("asyncio/", "aiohttp/")),
)


# py-spy counts a thread blocked in C (a thread pool waiting for work, epoll) as active
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py)",
    "Condition.wait (threading.py)",
    "EpollSelector.select (selectors.py)",
)


def _frame(text: str) -> str:
    return re.sub(r":\d+\)$", ")", text)


def summarise(raw: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    phase: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        if frames and frames[-1] in IDLE_LEAVES:
            idle += n
            continue
        total += n
        for name in set(frames):
            if "omni_batch/" in name:
                inclusive[name] += n
        if frames:
            leaf[frames[-1]] += n
        for label, needles in PHASES:
            if any(needle in stack for needle in needles):
                phase[label] += n
                break
        else:
            phase["other (imports, start-up, ...)"] += n
    if not total:
        return "no samples"
    out = [f"{total} busy samples ({idle} more in idle waits, left out)", "", "by phase:"]
    out += [f"  {n / total:6.1%}  {label}" for label, n in phase.most_common()]
    out += ["", f"omni_batch functions, inclusive (top {top}):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    out += ["", f"leaf frames, self (top {top}):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", type=Path, default=None, help="keep the collapsed stacks here")
    args, passed = parser.parse_known_args()  # the rest goes to overhead.py (--no-verify)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.raw or Path(tmp) / "stacks.txt"
        subprocess.run(
            [spy, "record", "--rate", str(args.rate), "--format", "raw", "--threads", "-o",
             str(raw), "--", sys.executable, str(BENCH / "overhead.py"), "--jobs",
             str(args.jobs), *passed],
            check=True,
        )  # fmt: skip
        print(summarise(raw, args.top))


if __name__ == "__main__":
    main()
