"""Scale of planning: a 100,000-job manifest through `omni-batch plan --format json`, and
plan + journal creation (what `run` does before its first request), each in its own process.

100 prompts x 25 x 10 template values x 2 aspect ratios x 2 durations. Reports wall time and
each child's peak RSS.

    .venv/bin/python bench/plan_scale.py [--prompts 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import BENCH, emit, note, peak_rss_mb


def write_manifest(folder: Path, prompts: int) -> Path:
    import yaml

    doc = {
        "name": "scale",
        "defaults": {"aspect_ratio": ["16:9", "9:16"], "duration": [6, 10]},
        "vars": {
            "product": [f"product{i}" for i in range(25)],
            "setting": [f"setting number {i}" for i in range(10)],
        },
        "prompts": [
            {
                "id": f"p{i}-{{product}}-{{setting}}",
                "prompt": f"Shot {i}: a {{product}} in a {{setting}}",
            }
            for i in range(prompts)
        ],
    }
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def journal_child(manifest: Path, out: Path) -> None:
    """In a fresh process: load + validate the manifest, then create the journal from it."""
    start = time.perf_counter()
    try:
        from omni_batch.journal import open_journal
    except ImportError:  # an older checkout
        from omni_batch.journal import Journal as open_journal  # type: ignore[no-redef]
    from omni_batch.planning.manifest import load_manifest

    imported = time.perf_counter()
    loaded = load_manifest(manifest)
    planned = time.perf_counter()
    journal = open_journal(out)
    try:
        jobs = journal.sync(loaded.jobs())
    finally:
        journal.close()
    done = time.perf_counter()
    emit(
        {
            "jobs": jobs,
            "import_s": round(imported - start, 3),
            "load_s": round(planned - imported, 3),
            "sync_s": round(done - planned, 3),
            "wall_s": round(done - start, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "journal_mb": round((out / "journal.sqlite").stat().st_size / 2**20, 1),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--journal-child", nargs=2, type=Path, metavar=("MANIFEST", "OUT"))
    args = parser.parse_args()
    if args.journal_child:
        return journal_child(*args.journal_child)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), args.prompts)
        out = Path(tmp) / "plan.json"
        start = time.perf_counter()
        with out.open("w") as fh:
            subprocess.run(
                [sys.executable, "-m", "omni_batch", "plan", str(manifest), "--format", "json"],
                stdout=fh,
                check=True,
            )
        plan_wall = time.perf_counter() - start
        # the only child so far, so the children's peak is this one's
        plan_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with out.open() as fh:  # one object per line; never the whole array in memory here
            plan_jobs = sum(1 for line in fh if line.startswith("{"))
        child = subprocess.run(
            [sys.executable, str(BENCH / "plan_scale.py"), "--journal-child", str(manifest),
             str(Path(tmp) / "out")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        journal = json.loads(child.stdout.strip().splitlines()[-1])
    result = {
        "plan_jobs": plan_jobs,
        "plan_wall_s": round(plan_wall, 2),
        "plan_peak_rss_mb": round(plan_rss, 1),
        **{f"journal_{k}": v for k, v in journal.items()},
    }
    ok = plan_wall < 3 and plan_rss < 300
    note(f"plan --format json: < 3 s and < 300 MB -> {'ok' if ok else 'MISSED'}")
    emit(result)


if __name__ == "__main__":
    main()
