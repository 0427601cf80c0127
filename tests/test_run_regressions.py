"""Regressions found in review: each was a way to bill a user twice, lose a job or hang."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pandas as pd
import pytest
from aiohttp import web
from click.testing import CliRunner

from omni_batch.cli.main import main
from omni_batch.errors import OutputError
from omni_batch.journal import open_journal
from omni_batch.running.api import ToapisClient
from omni_batch.store import LocalStore
from tests.conftest import (
    E2E_JOBS,
    E2E_MANIFEST,
    cli,
    journal_count,
    journal_rows,
    report,
    sim,
    start_run,
    wait_for_events,
)


def test_a_submit_answer_arriving_in_pieces_is_read_whole():
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        body = json.dumps({"id": "video_split", "object": "generation.task", "status": "queued"})
        await response.write(body[:20].encode())
        await asyncio.sleep(0.1)  # the rest arrives later, as on a slow network
        await response.write(body[20:].encode())
        await response.write_eof()
        return response

    async def main_() -> str:
        app = web.Application()
        app.router.add_post("/v1/videos/generations", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession() as session:
                client = ToapisClient(session, f"http://127.0.0.1:{port}", "k")
                return (await client.submit({"model": "gemini_omni", "prompt": "x"})).task_id
        finally:
            await runner.cleanup()

    assert asyncio.run(main_()) == "video_split"


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    holder = open_journal(out)  # another run holds the folder
    try:
        with sim() as server:
            result = cli(server, manifest, out)
            stats = server.stats()
    finally:
        holder.close()
    assert result.exit_code == 2
    assert "another omni-batch run is using this folder" in result.stderr
    assert stats["submit_requests"] == 0


def test_quota_exhausted_at_the_first_submit_costs_one_request(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    with sim(quota_after=0) as server:
        result = cli(server, manifest, tmp_path / "out")
        stats = server.stats()
    assert result.exit_code == 4
    assert stats["submit_requests"] == 1 and stats["status_402"] == 1


def test_retry_failed_sends_new_tasks_under_new_business_ids(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(p_fail=0.5, seed=3) as server:
        first = cli(server, manifest, out, "--reconcile")
        failed = int((report(out).status == "failed").sum())
        second = cli(server, manifest, out, "--reconcile", "--retry-failed")
        stats = server.stats()
    assert first.exit_code == 1 and failed > 0
    assert second.exit_code in (0, 1)
    assert stats.get("status_409", 0) == 0
    assert stats["submits"] == E2E_JOBS + failed
    assert stats["polls_after_terminal"] == 0


def test_ambiguous_submits_with_failing_lookups_never_end_as_a_409_failure(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    for seed in (1,):  # a seed that failed a job with 409 before the fix
        out = tmp_path / f"out{seed}"
        with sim(p_ambiguous=0.5, p_5xx=0.6, seed=seed) as server:
            cli(server, manifest, out, "--reconcile", "--lookup-grace", "0.5")
        rows = report(out)
        assert not (rows.http_status == 409).any(), rows[["job_id", "error_type", "error_message"]]


def test_ctrl_c_sends_no_submit_that_was_still_waiting_for_its_turn(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(gen_min=5, gen_max=5) as server:
        proc = start_run(manifest, out, server, "--rate", "0.3")
        wait_for_events(out, 1, "running")
        before = server.stats()["submit_requests"]
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        stopped_in = time.monotonic() - start
        after = server.stats()["submit_requests"]
    assert proc.returncode == 130
    assert after == before
    assert stopped_in < 5


def test_resumed_downloads_are_not_polled_again(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(download_rate=20_000) as server:  # ~2 s per video: the kill lands mid-download
        proc = start_run(manifest, out, server, "--max-in-flight", "6")
        wait_for_events(out, 3, "downloading")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        running = journal_count(out, "running")
        fetching = [
            task for task, state in journal_rows(out, "task_id", "state") if state != "running"
        ]
        polled = {task: server.state.tasks[task].polls for task in fetching if task}
        resumed = start_run(manifest, out, server, "--max-in-flight", "1")
        _, stderr = resumed.communicate(timeout=90)
        stats = server.stats()
    assert resumed.returncode == 0, stderr
    assert len(polled) >= 3  # the downloads the kill interrupted (or finished)
    assert {task: server.state.tasks[task].polls for task in polled} == polled  # never again
    # a job killed while its `completed` status answer was being read is still `running`, and is
    # rightly asked again
    assert stats["polls_after_terminal"] <= running
    assert stats["submits"] == E2E_JOBS
    rows = pd.read_csv(out / "report.csv")
    assert set(rows.status) == {"completed"}
    assert all(
        (out / p).stat().st_size == b for p, b in zip(rows.video_path, rows.bytes, strict=True)
    )
    assert not list((out / "videos").glob(".*.part"))


def test_status_works_while_another_run_holds_the_folder(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
    holder = open_journal(Path(out))
    try:
        result = CliRunner().invoke(main, ["status", str(out)])
    finally:
        holder.close()
    assert result.exit_code == 0 and "completed" in result.output


def test_the_video_store_never_names_a_file_outside_its_folder(tmp_path):
    store = LocalStore(tmp_path / "out")
    path = store.local_path("shot-1-16x9-6s-r1")
    assert path == (tmp_path / "out" / "videos" / "shot-1-16x9-6s-r1.mp4").resolve()
    assert store.link("shot-1-16x9-6s-r1") == "videos/shot-1-16x9-6s-r1.mp4"
    for hostile in ("../escape", "a/b", "/etc/passwd", "nul\0byte"):
        with pytest.raises(OutputError, match="refusing to write outside"):
            store.local_path(hostile)
