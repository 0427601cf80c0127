"""How fast and how lean `omni-batch plan --format json` is on a 100,000-job manifest.

100 prompts x 25 x 10 template values x 2 aspect ratios x 2 durations. Runs the real CLI in a
subprocess and reports wall time and the child's peak RSS.

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

import yaml


def write_manifest(folder: Path, prompts: int) -> Path:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    args = parser.parse_args()
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
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        jobs = len(json.loads(out.read_text()))
    result = {"jobs": jobs, "wall_s": round(wall, 2), "peak_rss_mb": round(peak_mb, 1)}
    print(json.dumps(result))
    print(f"target: < 3 s and < 300 MB -> {'ok' if wall < 3 and peak_mb < 300 else 'MISSED'}")


if __name__ == "__main__":
    main()
