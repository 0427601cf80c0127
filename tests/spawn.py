"""`python -m omni_batch ARGS` as a process of its own, started warm.

A run's process spends ~2 of its ~2.6 CPU-seconds importing (pandas, aiohttp, pyarrow, PyAV):
on 2 cores, dozens of them are most of the suite's time. ``start`` forks each from a server
that imported those once (multiprocessing's forkserver; stdlib), then runs the package's
``__main__`` exactly as ``python -m omni_batch`` does: a real process with its own pid,
environment, working folder, signals, exit code (negative: the signal that ended it), output
files — what the crash, signal and several-runner tests need. Only the imports are shared;
nothing of omni_batch is (its modules read the environment when they run, not at import).

Not for tests about the installed command itself (tests/test_cli_first_hour.py, the README's
commands), which start ``python -m omni_batch`` / ``omni-batch`` from nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from multiprocessing.context import ForkServerContext
from pathlib import Path

# what a run imports that costs (omni_batch's own modules are cheap and read nothing at import)
WARM = [
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "aiohttp",
    "av",
    "rich.console",
    "rich.table",
    "click",
    "yaml",
    "tenacity",
    "aiolimiter",
    "dbos",  # a shared run's (several-machine tests)
    "psycopg",
    "obstore",
    "omni_batch.batch",
    "omni_batch.cli.main",
    "omni_batch.cli.progress",
]

_context: ForkServerContext | None = None


def _warm() -> ForkServerContext:
    global _context
    if _context is None:
        # numpy's BLAS would start threads in the server; a forked copy keeps none of them
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(WARM)
    return _context


def _child(
    args: list[str], env: dict[str, str], cwd: str, out: str, err: str, fsize: int | None
) -> None:
    """In the forked process: its environment, folder, output files, then `-m omni_batch`."""
    import runpy

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    # as an interpreter has them on files (for the process's life): stdout block-buffered,
    # stderr line-buffered
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,  # noqa: SIM115
                      buffering=1)  # fmt: skip
    if fsize is not None:  # a full disk: every write past it fails with EFBIG
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    sys.argv = ["omni_batch", *args]
    try:
        runpy.run_module("omni_batch", run_name="__main__", alter_sys=True)
    finally:
        # what an interpreter's exit does and multiprocessing's os._exit skips: atexit
        # handlers, and the collection that prints "Task exception was never retrieved"
        import atexit
        import gc

        gc.collect()
        atexit._run_exitfuncs()


class Started:
    """A started `omni_batch` process, as much of subprocess.Popen as the tests use (its
    output read once it ended: ``communicate``)."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str] | None = None,
        file_size_limit: int | None = None,
    ):
        self.args = ["python", "-m", "omni_batch", *args]
        self.returncode: int | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="omni-started-"))
        self._out, self._err = self._folder / "stdout", self._folder / "stderr"
        environment = dict(os.environ if env is None else env)
        self._process = _warm().Process(
            target=_child,
            args=(list(args), environment, os.getcwd(), str(self._out), str(self._err),
                  file_size_limit),
            daemon=True,  # one a test left behind ends with its worker
        )  # fmt: skip
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        out, err = (p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""
                    for p in (self._out, self._err))  # fmt: skip
        shutil.rmtree(self._folder, ignore_errors=True)
        return out, err

    def __del__(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)


def start(
    *args: str, env: Mapping[str, str] | None = None, file_size_limit: int | None = None
) -> Started:
    """`python -m omni_batch ARGS` started (``env``: its whole environment; default this
    process's)."""
    return Started(list(args), env, file_size_limit)


def run(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m omni_batch ARGS` to its end, as subprocess.run(..., capture_output=True,
    text=True) gives it; killed after ``timeout`` s (subprocess.TimeoutExpired)."""
    started = start(*args, env=env)
    try:
        out, err = started.communicate(timeout)
    except subprocess.TimeoutExpired:
        started.kill()
        started.wait(10)
        raise
    return subprocess.CompletedProcess(started.args, started.wait(), out, err)
