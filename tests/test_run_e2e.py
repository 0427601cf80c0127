"""`omni-batch run` end to end: the real CLI against the real simulator on a loopback port.

Each test judges the client by what the simulator counted (submits, polls after a task was
terminal, downloads that carried a key) and by what landed in the output folder.
"""

from __future__ import annotations

import json
import signal

import pandas as pd
import pytest
from click.testing import CliRunner

from omni_batch.cli.main import main
from tests.conftest import (
    E2E_JOBS,
    E2E_MANIFEST,
    cli,
    report,
    shots_manifest,
    sim,
    start_run,
    wait_for_events,
)


def test_happy_path_downloads_every_video_and_writes_the_report(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:
        result = cli(server, manifest, out)
        stats = server.stats()
    assert result.exit_code == 0, result.output
    rows = report(out)
    assert len(rows) == E2E_JOBS and set(rows.status) == {"completed"}
    for column in (
        "job_id",
        "prompt_id",
        "task_id",
        "attempts",
        "http_status",
        "error_type",
        "request_id",
        "video_url",
        "expires_at",
        "video_path",
        "bytes",
        "submitted_at",
        "completed_at",
        "latency_s",
        "possible_duplicate",
    ):
        assert column in rows.columns, column
    for path, size in zip(rows.video_path, rows.bytes, strict=True):
        assert (out / path).stat().st_size == size > 1000
    assert stats["submits"] == E2E_JOBS
    assert stats["polls_after_terminal"] == 0
    assert stats["downloads_with_auth"] == 0
    assert pd.read_parquet(out / "report.parquet").shape[0] == E2E_JOBS
    assert rows.verified.all() and (rows.latency_s > 0).all()
    assert (out / "gallery.html").stat().st_size > 1000
    assert len(pd.read_csv(out / "failures.csv")) == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    states = [e.get("state") for e in events]
    assert states.count("completed") == E2E_JOBS and states.count("submitting") == E2E_JOBS
    # the log closes with the run's end, after the last (deferred) completion was committed
    assert events[-1]["event"] == "run_end" and events[-1]["counts"]["completed"] == E2E_JOBS
    # the key is in no output file (the journal's bytes included) and not on the terminal
    for path in out.rglob("*"):
        if path.is_file():
            assert server.key.encode() not in path.read_bytes(), path
    assert server.key not in result.output


def test_no_verify_decodes_nothing_and_leaves_verified_empty(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:
        result = cli(server, manifest, out, "--no-verify")
    assert result.exit_code == 0, result.output
    rows = report(out)
    assert set(rows.status) == {"completed"} and rows.verified.isna().all()
    assert (rows.bytes > 1000).all() and not (out / "posters").exists()
    page = (out / "gallery.html").read_text(encoding="utf-8")
    assert page.count("<video ") == E2E_JOBS and "poster=" not in page


def test_rerunning_a_finished_folder_submits_nothing(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
        again = cli(server, manifest, out)
        stats = server.stats()
    assert again.exit_code == 0
    assert stats["submits"] == E2E_JOBS


def test_wrong_key_stops_at_once_with_exit_3_and_submits_nothing(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:
        result = cli(server, manifest, out, key="sk-wrong")
        stats = server.stats()
    assert result.exit_code == 3
    assert "HTTP 401" in result.stderr and "sk-wrong" not in result.output
    assert stats["submits"] == 0 and stats["status_401"] == 1
    assert set(report(out).status) == {"pending"}


def test_quota_exhausted_stops_submitting_finishes_in_flight_and_exits_4(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(quota_after=2) as server:
        result = cli(server, manifest, out, "--max-in-flight", "1")
    assert result.exit_code == 4, result.output
    rows = report(out)
    assert (rows.status == "completed").sum() == 2
    assert (rows.status == "pending").sum() == E2E_JOBS - 2
    assert "402" in result.stderr


def test_429_storms_slow_down_and_every_job_still_completes(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(p_429=0.1, storm_s=0.2, retry_after=1) as server:
        result = cli(server, manifest, out)
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["status_429"] > 0
    assert stats["submits"] == E2E_JOBS
    log = (out / "events.jsonl").read_text()
    assert "429 from the API: pausing" in log


def test_server_errors_are_retried(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(p_5xx=0.25) as server:
        result = cli(server, manifest, out)
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["status_5xx"] > 0
    assert stats["submits"] == E2E_JOBS


def test_failed_generations_say_why_and_exit_1(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(p_fail=1.0) as server:
        result = cli(server, manifest, out)
    assert result.exit_code == 1
    failures = pd.read_csv(out / "failures.csv")
    assert len(failures) == E2E_JOBS
    assert set(failures.error_type) == {"generation_failed"}
    assert failures.error_message.str.len().min() > 5
    assert failures.task_id.notna().all()


def test_a_400_fails_the_job_with_status_type_and_request_id(manifest, tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("models:\n  gemini_omni:\n    durations: [6, 8, 10]\n", encoding="utf-8")
    manifest.write_text(
        E2E_MANIFEST.replace("defaults:\n", "defaults:\n  duration: 8\n"), encoding="utf-8"
    )
    out = tmp_path / "out"
    with sim() as server:
        result = cli(server, manifest, out, "--catalog", str(catalog))
        stats = server.stats()
    assert result.exit_code == 1
    rows = report(out)
    assert set(rows.http_status) == {400}
    assert rows.request_id.notna().all()
    assert rows.error_message.str.contains("duration").all()
    assert stats["submits"] == 0 and stats["status_400"] == E2E_JOBS  # never retried


@pytest.mark.parametrize(
    "knobs",
    [
        {"submit_shape": "legacy"},
        {"submit_shape": "mixed", "result_shape": "mixed", "queued_word": "mixed"},
        {"result_shape": "url"},
        {"result_shape": "video_url", "queued_word": "submitted"},
    ],
)
def test_every_documented_response_shape_is_understood(manifest, tmp_path, knobs):
    out = tmp_path / "out"
    with sim(**knobs) as server:
        result = cli(server, manifest, out)
    assert result.exit_code == 0, result.output
    assert set(report(out).status) == {"completed"}


def test_expired_links_are_refreshed_once_then_fail_clearly(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(link_ttl=0.0, refresh_links=False) as server:
        result = cli(server, manifest, out)
    assert result.exit_code == 1
    rows = report(out)
    assert set(rows.error_type) == {"link_expired"}


def test_ambiguous_submits_are_reconciled_without_a_second_task(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(p_ambiguous=1.0) as server:
        result = cli(server, manifest, out, "--reconcile")
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["submits"] == E2E_JOBS and stats["ambiguous_submits"] == E2E_JOBS
    assert not report(out).possible_duplicate.any()


def test_ambiguous_submits_without_reconcile_are_resubmitted_and_flagged(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(p_ambiguous=0.5) as server:
        result = cli(server, manifest, out, "--no-reconcile")
        stats = server.stats()
    rows = report(out)
    extra = stats["submits"] - E2E_JOBS
    assert extra > 0
    assert rows.possible_duplicate.sum() >= 1
    assert set(rows.status) <= {"completed", "failed"}
    assert result.exit_code in (0, 1)


def test_timed_out_tasks_keep_their_id_and_a_later_run_picks_them_up(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(gen_min=1.5, gen_max=1.5) as server:
        first = cli(server, manifest, out, "--max-wait", "0.3")
        timed_out = report(out)
        second = cli(server, manifest, out)
        stats = server.stats()
    assert first.exit_code == 1
    assert set(timed_out.error_type) == {"wait_timeout"} and timed_out.task_id.notna().all()
    assert second.exit_code == 0, second.output
    assert list(report(out).task_id) == list(timed_out.task_id)
    assert stats["submits"] == E2E_JOBS


def test_a_changed_manifest_is_refused_for_a_folder_already_run(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
        manifest.write_text(E2E_MANIFEST.replace("alpha shot", "alpha shot, new"), encoding="utf-8")
        result = cli(server, manifest, out)
    assert result.exit_code == 2
    assert "job 'alpha-16x9-6s-r1'" in result.stderr and "changed" in result.stderr


def test_no_key_and_no_simulator_is_a_usage_error(manifest, tmp_path, monkeypatch):
    monkeypatch.delenv("TOAPIS_API_KEY", raising=False)
    result = CliRunner().invoke(main, ["run", str(manifest), "--out", str(tmp_path / "o"), "--yes"])
    assert result.exit_code == 2
    assert "TOAPIS_API_KEY" in result.stderr and "--simulate" in result.stderr


def test_simulate_flag_runs_the_embedded_simulator_and_status_and_report_read_the_folder(
    manifest, tmp_path
):
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(manifest), "--out", str(out), "--simulate", "fast"])
    assert result.exit_code == 0, result.output
    status = runner.invoke(main, ["status", str(out)])
    assert "completed          6" in status.output
    (out / "report.csv").unlink()
    rebuilt = runner.invoke(main, ["report", str(out)])
    assert rebuilt.exit_code == 0 and len(report(out)) == E2E_JOBS


def test_kill_9_mid_run_then_resume_completes_every_job_without_a_duplicate_submit(tmp_path):
    manifest = shots_manifest(tmp_path, 12, "big.yaml")
    out = tmp_path / "out"
    with sim(gen_min=0.5, gen_max=1.0) as server:
        proc = start_run(manifest, out, server, "--max-in-flight", "4")
        wait_for_events(out, 3, "running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before = server.stats()["submits"]
        resumed = start_run(manifest, out, server, "--max-in-flight", "4")
        _, stderr = resumed.communicate(timeout=60)
        stats = server.stats()
    assert resumed.returncode == 0, stderr
    assert 3 <= before < 12
    assert stats["submits"] == 12 and stats["max_submits_per_body"] == 1
    assert set(report(out).status) == {"completed"}


def test_ctrl_c_stops_submitting_keeps_the_journal_and_a_rerun_finishes(tmp_path):
    manifest = shots_manifest(tmp_path, 12, "big.yaml")
    out = tmp_path / "out"
    with sim(gen_min=0.5, gen_max=1.0) as server:
        proc = start_run(manifest, out, server, "--max-in-flight", "2")
        wait_for_events(out, 2, "running")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        interrupted = report(out)
        resumed = start_run(manifest, out, server, "--max-in-flight", "4")
        _, stderr2 = resumed.communicate(timeout=60)
        stats = server.stats()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert (interrupted.status == "pending").sum() > 0
    assert resumed.returncode == 0, stderr2
    assert stats["submits"] == 12 and stats["max_submits_per_body"] == 1


@pytest.mark.parametrize(
    ("knobs", "status", "error_type"),
    [
        ({"blocked_models": ("gemini_omni",)}, 403, "permission_error"),
        ({"p_reject": 1.0}, 422, "content_policy_violation"),
    ],
)
def test_403_and_422_fail_the_job_at_once_without_a_retry(
    manifest, tmp_path, knobs, status, error_type
):
    out = tmp_path / "out"
    with sim(**knobs) as server:
        # the submit path's handling: the preflight model-list check would refuse a blocked
        # model before any submit (tests/test_money.py), so it is skipped here
        result = cli(server, manifest, out, "--no-preflight")
        stats = server.stats()
    assert result.exit_code == 1
    rows = report(out)
    assert set(rows.http_status) == {status} and set(rows.error_type) == {error_type}
    assert rows.request_id.notna().all() and (rows.attempts == 1).all()
    assert stats["submit_requests"] == E2E_JOBS and stats["submits"] == 0


def test_a_task_the_api_no_longer_knows_404_fails_that_job_only(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(gen_min=30, gen_max=30) as first:
        cli(first, manifest, out, "--max-wait", "0.3")  # every task times out, ids kept
    with sim() as second:  # a new upstream that never saw those task ids
        result = cli(second, manifest, out)
        stats = second.stats()
    assert result.exit_code == 1
    rows = report(out)
    assert set(rows.http_status) == {404} and rows.task_id.notna().all()
    assert stats["submit_requests"] == 0  # a 404 on a status call is never a reason to resubmit
