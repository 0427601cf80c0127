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
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
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


def scratch(memory: bool = True) -> tempfile.TemporaryDirectory[str]:
    """A temporary output folder; in memory (/dev/shm) when ``memory`` and the machine has one.

    The overhead runs and their floor both write here: a disk's cost is the same for both and
    only blurs the comparison (file creation on a shared disk moves system CPU by ±1 s per 5,000
    files between runs); leaving it out makes the runner ÷ floor ratio larger, not smaller.
    """
    shm = Path("/dev/shm")
    where = str(shm) if memory and shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix="omni-batch-bench-", dir=where)


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
    from omni_batch.running.options import Policy

    base = Policy()
    timed = (
        "first_poll", "poll_interval", "max_wait", "retry_initial", "retry_max",
        # the poll planner's (when the code under test has it: a before/after run may not)
        "poll_min_interval", "poll_slack", "poll_max_gap", "queue_allowance",
    )  # fmt: skip
    values = {name: getattr(base, name) / scale for name in timed if hasattr(base, name)}
    if hasattr(base, "gen_prior"):
        values["gen_prior"] = tuple(t / scale for t in base.gen_prior)
    values.update({k: v for k, v in changes.items() if hasattr(base, k)})
    return base.scaled(**values)


# -- the process's own resources -------------------------------------------------------------
def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_split() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set since it exec'd (VmHWM).

    Not ru_maxrss: Linux carries that across exec, so a child forked from a big parent would
    report the parent's size.
    """
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's current resident set."""
    return _status_mb("VmRSS") or 0.0


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
        self.wall0, self.split0 = time.perf_counter(), cpu_split()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        user, system = cpu_split()
        self.user, self.system = user - self.split0[0], system - self.split0[1]
        self.cpu = self.user + self.system


def environment() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


class Phases:
    """Splits a `run_async` call into setup (manifest, journal), engine (the API work) and
    finish (reports, gallery): pass ``phases.on_start`` as run_async's ``on_start``.

    It wraps the engine's ``run`` for this one call, so nothing in omni_batch changes.
    """

    def __init__(self) -> None:
        self.marks: dict[str, tuple[float, float]] = {}
        self.peaks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = (time.perf_counter(), cpu_seconds())
        self.peaks[name] = peak_rss_mb()

    def on_start(self, stats: Any, engine: Any) -> None:
        self.mark("engine_start")
        inner = engine.run

        async def timed(stop: Any) -> None:
            try:
                await inner(stop)
            finally:
                self.mark("engine_end")

        engine.run = timed

    def split(self) -> dict[str, float]:
        """Wall and CPU seconds of each phase (needs the `begin` and `end` marks too)."""
        names = ["begin", "engine_start", "engine_end", "end"]
        if not all(n in self.marks for n in names):
            return {}
        out: dict[str, float] = {}
        for phase, (a, b) in zip(("setup", "engine", "finish"), pairwise(names), strict=True):
            out[f"{phase}_wall_s"] = round(self.marks[b][0] - self.marks[a][0], 3)
            out[f"{phase}_cpu_s"] = round(self.marks[b][1] - self.marks[a][1], 3)
        # the process's peak so far when each phase ended
        for phase, name in (("setup", "engine_start"), ("engine", "engine_end")):
            out[f"{phase}_peak_rss_mb"] = round(self.peaks[name], 1)
        return out
