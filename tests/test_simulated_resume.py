"""Rehearsing a resume: `run --simulate` stopped (SIGTERM) or killed (kill -9) mid-run, then
run again, behaves like a resume against the real API. The embedded simulator's tasks live in
the output folder (`.simulator/`), so the tasks in flight keep progressing and are polled, not
404'd or submitted again; a video lost on disk is fetched again from the restarted simulator.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pandas as pd
import pytest

from omni_batch.simulator import SimConfig, start_simulator
from omni_batch.simulator.saved import TASKS_FILE, SavedTasks
from omni_batch.simulator.state import SimState
from tests import spawn
from tests.conftest import journal_rows, shots_manifest

JOBS = 8


def start(path: Path, out: Path, *extra: str) -> spawn.Started:
    """The same command each time, as a user would type it again."""
    args = ["run", str(path), "--simulate", "fast"]
    args += ["--out", str(out), "--no-progress", "--max-in-flight", "4", *extra]
    args += ["--sim-set", "gen_min=1.0", "--sim-set", "gen_max=1.5"]
    env = {k: v for k, v in os.environ.items() if k != "TOAPIS_API_KEY"}
    return spawn.start(*args, env=env)


def wait_running(out: Path, count: int, timeout: float = 30) -> None:
    events = out / "events.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.exists() and events.read_text().count('"state": "running"') >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"never saw {count} running events")


def saved_state(out: Path) -> SimState:
    """What the simulator kept in the folder, loaded as a restarted simulator would."""
    return SimState(SimConfig(), saved=SavedTasks(out / ".simulator"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_rehearsed_resume_polls_the_tasks_in_flight_and_submits_nothing_twice(tmp_path, how):
    path, out = shots_manifest(tmp_path, JOBS, "m.yaml"), tmp_path / "out"
    first = start(path, out, "--json")
    wait_running(out, 3)
    first.send_signal(how)
    stdout1, stderr1 = first.communicate(timeout=30)
    assert first.returncode == (130 if how == signal.SIGTERM else -signal.SIGKILL), stderr1
    if how == signal.SIGTERM:  # stopped, not killed: it still says how it ended
        said = json.loads(stdout1)
        assert (said["exit_code"], said["exit_reason"]) == (130, "interrupted")
        assert said["counts"]["running"] >= 3 and said["spend"]["tasks_created"] >= 3
    held = journal_rows(out, "job_id", "state", "task_id")
    in_flight = {job: task for job, state, task in held if state in ("running", "submitting")}
    assert len(in_flight) >= 3 and any(state != "completed" for _, state, _ in held)

    second = start(path, out)
    stdout2, stderr2 = second.communicate(timeout=60)
    assert second.returncode == 0, stdout2 + stderr2
    rows = pd.read_csv(out / "report.csv")
    assert len(rows) == JOBS and set(rows.status) == {"completed"}
    assert rows.http_status.isna().all() and "not found" not in stdout2 + stderr2
    # the tasks in flight at the stop were polled to the end, never sent again
    kept = rows.set_index("job_id").task_id
    for job_id, task_id in in_flight.items():
        assert task_id is None or kept[job_id] == task_id
    state = saved_state(out)
    assert len(state.tasks) == JOBS  # submits across both runs
    assert state.max_body_submits == 1 and not rows.possible_duplicate.any()

    if how == signal.SIGKILL:  # a video lost on disk comes back from the restarted simulator
        lost = out / rows.video_path.iloc[0]
        lost.unlink()
        third = start(path, out)
        _, stderr3 = third.communicate(timeout=60)
        assert third.returncode == 0, stderr3
        assert "1 videos missing on disk fetched again" in stderr3
        assert lost.stat().st_size > 0 and len(saved_state(out).tasks) == JOBS


def test_a_task_line_is_on_disk_before_the_submit_is_answered(tmp_path):
    folder = tmp_path / "sim"

    async def main() -> tuple[str, str]:
        config = SimConfig.from_profile("fast", gen_min=30, gen_max=30)
        async with start_simulator(config, state_dir=folder) as sim, aiohttp.ClientSession() as h:
            headers = {"Authorization": f"Bearer {sim.key}"}
            body = {"model": "gemini_omni", "prompt": "x", "client_business_id": "job-1"}
            async with h.post(sim.base_url + "/v1/videos/generations", json=body,
                              headers=headers) as response:  # fmt: skip
                task_id = (await response.json())["id"]
            on_disk = (folder / TASKS_FILE).read_text()  # the simulator is still running
            assert task_id in on_disk
            url = sim.base_url
        # a new simulator on the folder: same task, same business id, still in progress
        async with start_simulator(config, state_dir=folder) as sim, aiohttp.ClientSession() as h:
            headers = {"Authorization": f"Bearer {sim.key}"}
            for ident in (task_id, "job-1"):
                async with h.get(f"{sim.base_url}/v1/videos/generations/{ident}",
                                 headers=headers) as response:  # fmt: skip
                    assert response.status == 200
                    assert (await response.json())["status"] in ("queued", "in_progress")
            assert sim.stats()["tasks_restored"] == 1
            return url, sim.base_url

    before, after = asyncio.run(main())
    assert before == after  # the ports of the last simulator are taken again when free
