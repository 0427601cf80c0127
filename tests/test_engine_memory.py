"""The engine against the real simulator on loopback, its journal in memory (MemoryJournal):
what the engine does to a journal, with no SQLite file in between."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from omni_batch.errors import JobTaken
from omni_batch.journal import STATES, MemoryJournal
from omni_batch.planning.manifest import load_manifest
from omni_batch.running.accounts import AccountRun
from omni_batch.running.api import ToapisClient
from omni_batch.running.budgets import Account, Rates
from omni_batch.running.engine import Engine
from omni_batch.running.options import FAST
from omni_batch.simulator import SimConfig, start_simulator
from omni_batch.store import LocalStore
from tests.conftest import CAT, shots_manifest

JOBS = 3


def loaded(tmp_path: Path, jobs: int = JOBS) -> MemoryJournal:
    journal = MemoryJournal()
    journal.sync(load_manifest(shots_manifest(tmp_path, jobs)).jobs())
    return journal


def run_engine(
    tmp_path: Path,
    journal: MemoryJournal,
    before: Callable[[Any, aiohttp.ClientSession], Awaitable[None]] | None = None,
    **knobs: Any,
) -> dict[str, Any]:
    """Run the engine over ``journal`` against a simulator (``knobs``: SimConfig's) until it is
    idle; ``before(sim, http)`` runs first (e.g. to make a task by hand). Returns the
    simulator's stats."""

    async def main() -> dict[str, Any]:
        config = SimConfig.from_profile("fast", **knobs)
        async with start_simulator(config) as sim, aiohttp.ClientSession() as http:
            if before is not None:
                await before(sim, http)
            client = ToapisClient(http, sim.base_url, sim.key, timeout=FAST.request_timeout)
            account = AccountRun("default", Account("default", Rates()), [client], 8)
            policy = FAST.scaled(poll_interval=0.05, first_poll=0.05, plan_polls=False)
            store = LocalStore(tmp_path)
            store.prepare()
            engine = Engine(journal, [account], http, store, policy, verify=False)
            try:
                await asyncio.wait_for(engine.run(asyncio.Event()), 30)
            finally:
                engine.prober.shutdown()
            return sim.stats()

    return asyncio.run(main())


def test_a_small_batch_runs_to_completed_in_a_memory_journal(tmp_path):
    journal = loaded(tmp_path)
    stats = run_engine(tmp_path, journal)
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "completed": JOBS}
    assert stats["submits"] == JOBS  # each job sent once
    for n in range(JOBS):
        row = journal.row(f"shot-{n}-16x9-6s-r1")
        assert row["task_ids"] == [row["task_id"]] and row["attempts"] == 1
        assert (tmp_path / row["video_path"]).stat().st_size == row["bytes"] > 0
    states = [e["state"] for e in journal.events if e.get("job_id") == "shot-0-16x9-6s-r1"]
    assert states == ["submitting", "running", "downloading", "completed"]


def test_a_refused_submit_records_its_status_type_and_request_id(tmp_path):
    journal = loaded(tmp_path, 1)
    run_engine(tmp_path, journal, p_reject=1.0)  # 422 content policy, nothing created
    assert journal.counts()["failed"] == 1
    row = journal.row("shot-0-16x9-6s-r1")
    assert row["http_status"] == 422 and row["error_type"] and row["request_id"]
    assert row["task_id"] is None and row["error_message"]
    failed = [e for e in journal.events if e.get("state") == "failed"]
    assert failed and failed[0]["request_id"] == row["request_id"]


def test_a_resumed_job_with_a_task_is_polled_never_sent_again(tmp_path):
    journal = loaded(tmp_path, 1)
    job = "shot-0-16x9-6s-r1"
    made: dict[str, str] = {}

    async def earlier_run(sim: Any, http: aiohttp.ClientSession) -> None:
        # as a previous process left it: the task made, its id journaled, then the process gone
        headers = {"Authorization": f"Bearer {sim.key}"}
        body = {**CAT, "prompt": "shot 0"}
        async with http.post(sim.base_url + "/v1/videos/generations", json=body,
                             headers=headers) as answer:  # fmt: skip
            made["task"] = (await answer.json())["id"]
        journal.mark_submitting(job, None, False, "default")
        journal.mark_running(job, made["task"], None)

    stats = run_engine(tmp_path, journal, before=earlier_run)
    assert stats["submits"] == 1  # the one made by hand: resume polled it, sent nothing
    row = journal.row(job)
    assert row["state"] == "completed" and row["task_ids"] == [made["task"]]
    assert row["attempts"] == 1


class SettledMeanwhile(MemoryJournal):
    """A shared journal as a runner paused past --dead-after finds it: while its POST for
    ``taken`` was out, another runner settled that job, so its mark_running is JobTaken."""

    def __init__(self, taken: str):
        super().__init__()
        self.taken = taken

    def mark_running(
        self, job_id: str, task_id: str, request_id: str | None, adopted: bool = False
    ) -> None:
        if job_id == self.taken:  # the other runner's task, fetched and saved
            super().mark_running(job_id, "task-other", "rid-other")
            super().mark_downloading(job_id, "https://cdn/other.mp4", None, None, polls=1)
            super().mark_completed(job_id, f"videos/{job_id}.mp4", 1)
            raise JobTaken(f"job {job_id!r} is completed: another runner moved it first")
        super().mark_running(job_id, task_id, request_id, adopted)


def test_a_task_whose_job_another_runner_settled_is_kept_with_the_job_flagged(tmp_path):
    taken = "shot-1-16x9-6s-r1"
    journal = SettledMeanwhile(taken)
    journal.sync(load_manifest(shots_manifest(tmp_path, JOBS)).jobs())
    stats = run_engine(tmp_path, journal)
    assert stats["submits"] == JOBS  # nothing sent again
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "completed": JOBS}
    row = journal.row(taken)
    ours = row["task_ids"][-1]
    assert row["task_ids"] == ["task-other", ours] and ours.startswith("video_")  # the sim's
    assert row["possible_duplicate"] and row["task_id"] == "task-other"
    assert (row["video_path"], row["bytes"]) == (f"videos/{taken}.mp4", 1)  # left as it was
    stray = [e for e in journal.events if e["event"] == "stray_task"]
    assert [(e["job_id"], e["task_id"]) for e in stray] == [(taken, ours)]
    logged = [e["message"] for e in journal.events if e["event"] == "log"]
    assert any(f"task {ours} it created is kept" in m for m in logged), logged
    assert not journal.row("shot-0-16x9-6s-r1")["possible_duplicate"]
