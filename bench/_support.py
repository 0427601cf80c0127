"""Shared plumbing for the benchmarks: manifests, a simulator in its own process, resource
readings, and the one-JSON-line protocol `run_all.py` reads.

Every benchmark script prints human notes on stderr and, as its last stdout line, one JSON
object with its numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

# "Instant generation": a task is completed the moment it is created.
INSTANT = {"queue_min": 0, "queue_max": 0, "gen_min": 0, "gen_max": 0}


def write_manifest(folder: Path, jobs: int, name: str = "bench") -> Path:
    """A manifest of ``jobs`` jobs (one prompt over a variable): the same bodies as `bodies`."""
    import yaml

    doc = {
        "name": name,
        "vars": {"n": list(range(jobs))},
        "prompts": [{"id": "shot-{n}", "prompt": "shot number {n}"}],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def bodies(jobs: int) -> Iterator[dict[str, Any]]:
    """The request bodies `write_manifest` expands to (the catalog's gemini_omni defaults)."""
    for n in range(jobs):
        yield {
            "model": "gemini_omni",
            "prompt": f"shot number {n}",
            "aspect_ratio": "16:9",
            "duration": 6,
            "resolution": "720P",
        }


def scaled_policy(scale: float, **changes: Any) -> Any:
    """The documented `Policy()` timings divided by ``scale`` (the simulator's time base)."""
    from omni_batch.policy import Policy

    base = Policy()
    timed = (
        "first_poll", "poll_interval", "max_wait", "retry_initial", "retry_max",
    )  # fmt: skip
    values = {name: getattr(base, name) / scale for name in timed}
    values.update(changes)
    return base.scaled(**values)


# -- the process's own resources -------------------------------------------------------------
def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's current resident set."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def emit(result: dict[str, Any]) -> None:
    """The benchmark's answer: one JSON line, last on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- a simulator in its own process -----------------------------------------------------------
@dataclass
class SimProcess:
    """A simulator started by `bench/sim_server.py`: URLs, key, and its control endpoint."""

    proc: subprocess.Popen[str]
    base_url: str
    cdn_url: str
    key: str
    control_url: str

    def _get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        """The simulator's counters (GET /_sim/stats)."""
        return self._get(f"{self.base_url}/_sim/stats")

    def tasks(self) -> dict[str, dict[str, Any]]:
        """task id → created/started/done (unix seconds), failed, polls."""
        return self._get(f"{self.control_url}/tasks")

    def usage(self) -> dict[str, float]:
        """The simulator process's CPU seconds and peak RSS so far."""
        return self._get(f"{self.control_url}/usage")


def _knob_text(value: Any) -> str:
    return "none" if value is None else str(value)


@contextlib.contextmanager
def simulator(profile: str = "fast", **knobs: Any) -> Iterator[SimProcess]:
    """Start ``bench/sim_server.py`` on free loopback ports; stop it on exit."""
    args = [sys.executable, str(BENCH / "sim_server.py"), "--profile", profile]
    for name, value in knobs.items():
        args += ["--set", f"{name}={_knob_text(value)}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"simulator did not start (exit {proc.wait()})")
        info = json.loads(line)
        yield SimProcess(proc, info["base_url"], info["cdn_url"], info["key"], info["control_url"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Stopwatch:
    """Wall and CPU seconds of this process over a block."""

    def __enter__(self) -> Stopwatch:
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = cpu_seconds() - self.cpu0


def environment() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
