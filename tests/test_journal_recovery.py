"""A folder whose journal is gone, unreadable or behind is never run as new: the journal is
rebuilt from events.jsonl (no job with a task id is sent again, videos are kept, task ids too),
or, with nothing to rebuild it from, the run is refused with one line and exit 2. Every case
runs the real CLI against the real simulator and counts the simulator's submits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

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

JOURNAL = "journal.sqlite"


def damage(out: Path, how: str) -> None:
    journal = out / JOURNAL
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
    elif how == "emptied":
        journal.write_bytes(b"")
    elif how == "random bytes":
        journal.write_bytes(os.urandom(40_000))
    else:
        raise AssertionError(how)


def videos(out: Path) -> dict[str, tuple[int, int]]:
    """Each video's (size, modification time): a video fetched again would change them."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in (out / "videos").iterdir()}


@pytest.mark.parametrize("how", ["deleted", "emptied", "random bytes"])
def test_a_finished_folder_whose_journal_is_gone_is_rebuilt_and_nothing_is_paid_again(
    manifest, tmp_path, how
):
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
        before, kept = report(out), videos(out)
        damage(out, how)
        again = cli(server, manifest, out)
        stats = server.stats()
    assert again.exit_code == 0, again.output
    assert "rebuilt from events.jsonl" in again.stderr
    assert (
        stats["submits"] == E2E_JOBS and stats["downloads"] == E2E_JOBS
    )  # nothing bought or fetched
    after = report(out)
    assert set(after.status) == {"completed"}
    assert list(after.task_id) == list(before.task_id) and list(after.task_ids) == list(
        before.task_id
    )
    assert list(after.attempts) == list(before.attempts)
    assert videos(out) == kept
    if how == "random bytes":  # the unreadable file is kept, never deleted
        assert len(list(out.glob(f"{JOURNAL}.corrupt-*"))) == 1


def test_tasks_in_flight_when_the_journal_was_lost_are_polled_not_sent_again(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(gen_min=1.5, gen_max=1.5) as server:
        first = cli(server, manifest, out, "--max-wait", "0.3")  # every task timed out, ids kept
        timed_out = report(out)
        damage(out, "deleted")
        second = cli(server, manifest, out)
        stats = server.stats()
    assert first.exit_code == 1 and set(timed_out.error_type) == {"wait_timeout"}
    assert second.exit_code == 0, second.output
    assert stats["submits"] == E2E_JOBS
    assert list(report(out).task_id) == list(timed_out.task_id)


def test_a_journal_that_lost_its_wal_after_kill_9_is_caught_up_from_the_events(tmp_path):
    """A finished run leaves a part of the jobs; a second run is killed mid-run and the -wal file
    is lost (deleted, or the journal copied without it): every commit since the last clean close
    is gone from the journal, not from the events, and is replayed before anything is sent.
    (A first run killed and its -wal lost leaves a journal without jobs, rebuilt whole:
    test_crash_matrix.py::test_kill_9_then_a_lost_wal_then_resume_finishes_every_job_once.)"""
    big = shots_manifest(tmp_path, 12, "big.yaml")
    small = tmp_path / "small.yaml"
    small.write_text(big.read_text().replace(",4,5,6,7,8,9,10,11", ""), encoding="utf-8")
    out = tmp_path / "out"
    with sim(gen_min=0.5, gen_max=1.0) as server:
        assert start_run(small, out, server, "--max-in-flight", "4").wait(60) == 0
        proc = start_run(big, out, server, "--max-in-flight", "4")
        wait_for_events(out, 6, "running")  # at least two of the new jobs
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        for suffix in ("-wal", "-shm"):
            Path(f"{out / JOURNAL}{suffix}").unlink(missing_ok=True)
        resumed = start_run(big, out, server, "--max-in-flight", "4")
        _, stderr = resumed.communicate(timeout=60)
        stats = server.stats()
    assert resumed.returncode == 0, stderr
    assert "was behind events.jsonl" in stderr
    assert stats["submits"] == 12 and stats["max_submits_per_body"] == 1
    rows = report(out)
    assert set(rows.status) == {"completed"} and (rows.task_ids == rows.task_id).all()


@pytest.mark.parametrize("how", ["deleted", "random bytes"])
def test_with_events_jsonl_gone_too_the_run_is_refused_in_one_line(manifest, tmp_path, how):
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
        damage(out, how)
        (out / "events.jsonl").unlink()
        left = sorted(p.name for p in out.iterdir())
        refused = cli(server, manifest, out)
        stats = server.stats()
    assert refused.exit_code == 2, refused.output
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.output
    assert "videos/" in lines[0] and "--out" in lines[0]
    assert (
        stats["submit_requests"] == E2E_JOBS and stats["poll_requests"] > 0
    )  # the first run's only
    assert stats["submits"] == E2E_JOBS
    assert sorted(p.name for p in out.iterdir()) == left  # the folder is left as it was found


def test_a_new_folder_with_no_history_runs_as_new(manifest, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a folder made by hand first")
    with sim() as server:
        result = cli(server, manifest, out)
    assert result.exit_code == 0 and "rebuilt" not in result.stderr


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_corrupt_journal_is_one_line_and_exit_2_for_status_and_report(
    manifest, tmp_path, command
):
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
    damage(out, "random bytes")
    result = CliRunner().invoke(main, [command, str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "journal" in result.stderr


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only, even for root (whom chmod does not stop): a read-only bind mount;
    as another user, chmod. Skips where neither is possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir()
    made = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"root, and cannot bind-mount: {made.stderr.decode().strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.decode().strip()}")
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_report_on_a_read_only_folder_is_one_line_and_exit_2(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
    with read_only(out) as view:
        with pytest.raises(OSError):
            (view / "probe").write_text("x")  # it really is read-only
        result = CliRunner().invoke(main, ["report", str(view)])
        status = CliRunner().invoke(main, ["status", str(view)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "cannot write" in result.stderr
    assert status.exit_code == 0  # reading works


def test_the_rebuilt_journal_matches_the_one_that_was_lost(tmp_path):
    """Every column the report shows, after a run with failures, retries and an ambiguous
    submit, is the same rebuilt from the events as it was in the journal (timestamps to 10 ms)."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(E2E_MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(p_fail=0.5, p_ambiguous=0.2, seed=3) as server:
        cli(server, manifest, out)
        cli(server, manifest, out, "--retry-failed")
        original = report(out)
        damage(out, "deleted")
        assert CliRunner().invoke(main, ["status", str(out)]).exit_code == 2  # no journal
        rebuilt = cli(server, manifest, out)
        stats = server.stats()
    assert "rebuilt from events.jsonl" in rebuilt.stderr
    after = report(out)
    assert stats["polls_after_terminal"] == 0  # failed generations are not asked about again
    assert len(after) == E2E_JOBS and (original.task_ids.str.count(" ") >= 0).all()
    for column in original.columns:
        if column in ("submitted_at", "completed_at", "expires_at"):
            gap = (pd.to_datetime(original[column]) - pd.to_datetime(after[column])).abs()
            assert (gap.dropna() <= pd.Timedelta("10ms")).all(), column
            assert (original[column].isna() == after[column].isna()).all(), column
        elif column == "latency_s":
            assert ((original[column] - after[column]).abs().dropna() <= 0.02).all()
        else:
            pd.testing.assert_series_equal(
                original[column], after[column], check_dtype=False, obj=column
            )


def test_a_rebuilt_journal_refuses_a_changed_manifest_like_the_lost_one(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:
        assert cli(server, manifest, out).exit_code == 0
        damage(out, "deleted")
        manifest.write_text(E2E_MANIFEST.replace("alpha shot", "alpha shot, new"), encoding="utf-8")
        result = cli(server, manifest, out)
        stats = server.stats()
    assert result.exit_code == 2
    assert "job 'alpha-16x9-6s-r1'" in result.stderr and "changed" in result.stderr
    assert stats["submits"] == E2E_JOBS
