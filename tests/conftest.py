"""Shared test fixtures and helpers: ``sim_run`` runs an async scenario against a real simulator
on a free loopback port, with a small HTTP helper; ``sim``, ``cli`` and ``start_run`` run the
real CLI against a simulator (no mocks; every call crosses a real socket); ``journal_rows`` and
``journal_count`` read an output folder's journal through its read-only reader.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from tests import spawn


def pytest_configure(config: pytest.Config) -> None:
    """The suite started in the background (`cmd &` in a script, nohup) inherits SIGINT or
    SIGHUP ignored, and so would every run it starts: the signal tests would send signals
    nobody hears. The processes the tests start hear them as a user's shell would have them."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


# The files that take longest (wall seconds on 2 cores, as measured), started first: each file
# runs on one worker (--dist loadfile), and one of these started last would keep the suite
# going alone for a minute while the other workers sit idle (longest-first scheduling). xdist
# would order files by their number of tests instead (--no-loadscope-reorder in pyproject.toml
# keeps this order): test_shared_proof.py, one test of ~70 s, started last.
LONGEST_FIRST = (
    "test_shared_run.py",
    "test_shared_proof.py",
    "test_hostile_http.py",
    "test_shutdown.py",
    "test_report_stream.py",
    "test_submit_money.py",
    "test_rate_budgets.py",
    "test_run_regressions.py",
    "test_run_e2e.py",
    "test_chaos_soak.py",
    "test_crash_matrix.py",
    "test_review.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


SUBMIT = "/v1/videos/generations"
CAT = {"model": "gemini_omni", "prompt": "a cat surfing"}


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any


class SimClient:
    """The calls a test makes, each returning a Reply; ``key`` defaults to the sim's key."""

    def __init__(self, sim: Any, http: aiohttp.ClientSession):
        self.sim, self.http = sim, http

    def _auth(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.sim.key}"}

    async def _reply(self, response: aiohttp.ClientResponse) -> Reply:
        text = await response.text()
        body = await response.json() if "json" in response.content_type else text
        return Reply(response.status, response.headers, body)

    async def submit(self, body: Any = None, key: str | None = None, **fields: Any) -> Reply:
        payload = {**CAT, **fields} if body is None else body
        async with self.http.post(
            self.sim.base_url + SUBMIT, json=payload, headers=self._auth(key)
        ) as response:
            return await self._reply(response)

    async def poll(self, ident: str, key: str | None = None) -> Reply:
        url = f"{self.sim.base_url}{SUBMIT}/{ident}"
        async with self.http.get(url, headers=self._auth(key)) as response:
            return await self._reply(response)

    async def wait(self, ident: str, within: float = 5.0) -> Reply:
        """Poll every 20 ms until the task is completed or failed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            reply = await self.poll(ident)
            if reply.status != 200 or reply.body["status"] in ("completed", "failed"):
                return reply
            assert loop.time() < deadline, f"task {ident} not finished in {within}s"
            await asyncio.sleep(0.02)

    async def fetch(
        self, url: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, bytes]:
        async with self.http.get(url, headers=headers) as response:
            return response.status, response.headers, await response.read()


Scenario = Callable[[SimClient], Awaitable[Any]]


@pytest.fixture
def sim_run() -> Callable[..., Any]:
    """``sim_run(scenario, profile="fast", **knobs)``: run ``scenario(client)``, return its value."""
    from omni_batch.simulator import SimConfig, start_simulator

    def run(scenario: Scenario, profile: str = "fast", **knobs: Any) -> Any:
        async def main() -> Any:
            config = SimConfig.from_profile(profile, **knobs)
            async with start_simulator(config) as sim, aiohttp.ClientSession() as http:
                return await scenario(SimClient(sim, http))

        return asyncio.run(main())

    return run


# -- the CLI against a simulator on loopback ------------------------------------------------------

# the six jobs of most end-to-end tests: three prompts, two aspect ratios, 6 s each
E2E_MANIFEST = """
name: e2e
defaults:
  aspect_ratio: ["16:9", "9:16"]
prompts:
  - id: alpha
    prompt: "alpha shot"
  - id: beta
    prompt: "beta shot"
  - id: gamma
    prompt: "gamma shot"
"""
E2E_JOBS = 6


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """E2E_MANIFEST written as ``e2e.yaml`` in ``tmp_path`` (a test module with a manifest of its
    own overrides this fixture with its own ``manifest``)."""
    return write_manifest(tmp_path / "e2e.yaml", E2E_MANIFEST)


def write_manifest(path: Path, text: str) -> Path:
    """``text`` written to ``path`` (UTF-8); returns ``path``."""
    path.write_text(text, encoding="utf-8")
    return path


def sim(*, seed: int = 7, port: int = 0, **knobs: Any) -> Any:
    """A simulator of the `fast` profile with ``knobs`` in a thread (a context manager giving the
    Simulator), on ``port`` (0: a free one); ``seed`` fixes every random choice it makes."""
    from omni_batch.simulator import SimConfig, serve_in_thread

    return serve_in_thread(SimConfig.from_profile("fast", seed=seed, **knobs), port=port)


def cli(
    server: Any,
    manifest: Path,
    out: Path,
    *extra: str,
    key: str | None = None,
    keys: str | None = None,
    env: dict[str, str | None] | None = None,
    poll_interval: str = "0.2",
    rate: str | None = "200",
) -> Result:
    """`omni-batch run MANIFEST --out OUT` in this process (click's CliRunner) against
    ``server`` (a Simulator, or a base URL with ``key``), then ``extra`` flags.

    The key is ``key``, else the server's; ``keys`` sets TOAPIS_API_KEYS (several accounts)
    and blanks TOAPIS_API_KEY; ``env`` is set last. ``rate`` None leaves --rate out (the
    tier's or the server's rates apply). --no-progress changes nothing here (the CliRunner's
    stderr is no terminal) and keeps it that way."""
    from omni_batch.cli.main import main

    base_url = server if isinstance(server, str) else server.base_url
    run_env: dict[str, str | None] = {"TOAPIS_BASE_URL": None}
    if keys is not None:
        run_env |= {"TOAPIS_API_KEYS": keys, "TOAPIS_API_KEY": ""}
    else:
        run_env["TOAPIS_API_KEY"] = key or server.key
    run_env |= env or {}
    args = ["run", str(manifest), "--out", str(out), "--base-url", base_url, "--yes"]
    args += ["--poll-interval", poll_interval, "--no-progress"]
    args += ["--rate", rate] if rate is not None else []
    return CliRunner(env=run_env).invoke(main, [*args, *extra])


def report(out: Path, keep_default_na: bool = True) -> pd.DataFrame:
    """The report.csv a run wrote in ``out`` (``keep_default_na=False``: empty cells read as
    "", not NaN, as pandas.read_csv has it)."""
    return pd.read_csv(out / "report.csv", keep_default_na=keep_default_na)


def start_run(
    manifest: Path, out: Path, server: Any, *extra: str, file_size_limit: int | None = None
) -> spawn.Started:
    """`python -m omni_batch run MANIFEST --out OUT` in a process of its own (tests/spawn.py)
    against ``server`` (50 requests/s, --reconcile), then ``extra`` flags; its stdout and
    stderr as text once it ended. ``file_size_limit``: a full disk without mounting one, every
    write past it fails with EFBIG (Python ignores SIGXFSZ)."""
    command = ["run", str(manifest), "--out", str(out), "--base-url", server.base_url]
    command += ["--yes", "--no-progress", "--poll-interval", "0.2", "--rate", "50", "--reconcile"]
    return spawn.start(
        *command,
        *extra,
        env={**os.environ, "TOAPIS_API_KEY": server.key},
        file_size_limit=file_size_limit,
    )


def state_events(out: Path, state: str | None = None) -> int:
    """Transitions to ``state`` (None: any state) in ``out``'s events.jsonl so far."""
    path = out / "events.jsonl"
    if not path.exists():
        return 0
    text = path.read_text(encoding="utf-8")
    return text.count(f'"state": "{state}"') if state else text.count('"event": "state"')


def wait_for_events(out: Path, count: int, state: str | None = None, timeout: float = 30) -> None:
    """Wait (polling every 20 ms) until ``out``'s events.jsonl has ``count`` transitions to
    ``state`` (None: any state); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while state_events(out, state) < count:
        assert time.monotonic() < deadline, f"never saw {count} {state or 'state'} events"
        time.sleep(0.02)


def shots_manifest(folder: Any, jobs: int, name: str = "shots.yaml") -> Any:
    """A manifest of ``jobs`` one-line prompts `shot {n}` (ids `shot-{n}`), written in folder."""
    path = folder / name
    values = ",".join(str(i) for i in range(jobs))
    path.write_text(
        f"vars: {{n: [{values}]}}\nprompts:\n  - {{id: 'shot-{{n}}', prompt: 'shot {{n}}'}}\n",
        encoding="utf-8",
    )
    return path


def journal_rows(folder: Any, *columns: str) -> list[tuple[Any, ...]]:
    """``columns`` of every job of an output folder's journal (the report's rows), read through
    the journal's read-only snapshot: what a test checks of a folder a run (or a kill) left."""
    from omni_batch.journal import open_reader

    with open_reader(folder) as reader:
        return [row for chunk in reader.rows(columns, 1000) for row in chunk]


def journal_count(folder: Any, state: str) -> int:
    """Jobs of the manifest in ``state`` in an output folder's journal."""
    from omni_batch.journal import open_reader

    with open_reader(folder) as reader:
        return reader.counts().get(state, 0)


def two_prompt_jobs(folder: Any, prompt: str = "alpha shot") -> list[Any]:
    """The jobs of a manifest of two prompts, `a` (``prompt``) and `b`, written in ``folder``:
    job ids ``a-16x9-6s-r1`` and ``b-16x9-6s-r1``."""
    from omni_batch.planning.manifest import load_manifest

    path = folder / "m.yaml"
    path.write_text(
        f"prompts:\n  - {{id: a, prompt: '{prompt}'}}\n  - {{id: b, prompt: 'beta'}}\n",
        encoding="utf-8",
    )
    return list(load_manifest(path).jobs())


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def any_journal(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """Each implementation of the Journal protocol in turn (SQLite in ``tmp_path/out``;
    PostgreSQL in a fresh database of the session's server)."""
    from omni_batch.journal import MemoryJournal, open_journal

    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database("journal")
        journal = open_journal(url, run="contract")
    elif request.param == "sqlite":
        journal = open_journal(tmp_path / "out")
    else:
        journal = MemoryJournal()
    yield journal
    journal.close()


@pytest.fixture(scope="session")
def postgres() -> Any:
    """A real PostgreSQL cluster on a free loopback port for the session (tests/servers.py);
    each test takes a fresh database with ``postgres.create_database()``."""
    from tests.servers import postgres_missing, postgres_server

    if why := postgres_missing():
        pytest.skip(why)
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """moto's S3 server on a free loopback port for the session (tests/servers.py)."""
    from tests.servers import moto_missing, s3_server

    if why := moto_missing():
        pytest.skip(why)
    with s3_server() as server:
        yield server


def journal_story(journal: Any, tmp_path: Any, jobs: int = 6, review: bool = True) -> None:
    """One run's life, the same on any journal: of ``jobs`` shots, one sent and finished, one
    failed, one running that then leaves the manifest with its task (retired), the rest pending;
    with ``review``, the finished one picked."""
    from omni_batch.planning.manifest import load_manifest

    made = list(load_manifest(shots_manifest(tmp_path, jobs)).jobs())
    journal.sync(made)
    ids = [j.job_id for j in made]
    journal.mark_submitting(ids[0], "ob-0", True, "main")
    journal.mark_running(ids[0], "task-0", "rid-0")
    journal.mark_downloading(ids[0], "https://cdn/0.mp4", 2e9, 1.5e9, polls=3)
    journal.mark_completed(ids[0], "videos/0.mp4", 1234)
    journal.mark_submitting(ids[1], "ob-1", False, "main")
    journal.mark_running(ids[1], "task-1", None)
    journal.mark_failed(ids[1], error_type="generation_failed", message="x", task="failed")
    journal.mark_submitting(ids[2], "ob-2", False)
    journal.mark_running(ids[2], "task-2", None)
    if review:
        journal.set_review(ids[0], pick="picked", score=4, note="nice")
    journal.commit()
    journal.sync(made[:2] + made[3:])  # shot-2 left the manifest with its task: retired
    journal.commit()
