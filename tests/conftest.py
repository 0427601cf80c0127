"""Shared test fixtures: ``sim_run`` runs an async scenario against a real simulator on a free
loopback port, with a small HTTP helper (no mocks; every call crosses a real socket).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

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
