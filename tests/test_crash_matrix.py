"""kill -9 at every dangerous point of a run, then resume: every job accounted for, no job
submitted twice, and the journal, the report and the files on disk agree."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from omni_batch.crash import ENV
from tests import spawn
from tests.conftest import journal_count, journal_rows, sim

JOBS = 8
MANIFEST = "vars: {n: [0, 1, 2, 3]}\ndefaults: {aspect_ratio: ['16:9', '9:16']}\nprompts:\n  - {id: 'shot-{n}', prompt: 'shot {n}'}\n"


def run(
    manifest: Path, out: Path, server, crash_at: str | None, *extra: str
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env["TOAPIS_API_KEY"] = server.key
    if crash_at:
        env[ENV] = crash_at
    args = ["run", str(manifest), "--out", str(out)]
    args += ["--base-url", server.base_url, "--yes", "--no-progress", "--poll-interval", "0.2"]
    # the simulator's lookups never lag: a 404 is believed after 1 s, not the documented 10 s
    # a resumed `submitting` job whose POST never left would wait
    args += ["--rate", "100", "--max-in-flight", "4", "--lookup-grace", "1", *extra]
    return spawn.run(*args, env=env)


def agree(out: Path) -> pd.DataFrame:
    """Journal (via the report), report and files tell the same story."""
    rows = pd.read_csv(out / "report.csv")
    assert len(rows) == JOBS
    done = rows[rows.status == "completed"]
    for path, size in zip(done.video_path, done.bytes, strict=True):
        assert (out / path).stat().st_size == size
    on_disk = {p.name for p in (out / "videos").iterdir()}
    assert on_disk == {Path(p).name for p in done.video_path}  # no stray or temporary files
    return rows


@pytest.mark.parametrize(
    "crash_at",
    [
        "before_post:3",
        "after_post:3",
        "after_task_id:2",
        "mid_download:2",
        "before_rename:2",
        "after_rename:2",
        "mid_report:1",
        "in_commit:6",
    ],
)
def test_kill_9_at_each_point_then_resume_finishes_every_job_once(tmp_path, crash_at):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(gen_min=0.2, gen_max=0.4) as server:
        crashed = run(manifest, out, server, crash_at, "--reconcile")
        running = journal_count(out, "running")  # their last status answer may have died unread
        resumed = run(manifest, out, server, None, "--reconcile")
        stats = server.stats()
    assert crashed.returncode == -9, crashed.stderr  # it really died at the point
    assert resumed.returncode == 0, resumed.stderr
    assert stats["submits"] == JOBS and stats["max_submits_per_body"] == 1
    rows = agree(out)
    assert set(rows.status) == {"completed"}
    assert not rows.possible_duplicate.any()
    # a status answer the kill cut off is asked for again; a task recorded done never is
    assert stats["polls_after_terminal"] <= running


@pytest.mark.parametrize("crash_at", ["after_post:3", "after_task_id:2", "in_commit:6"])
def test_kill_9_then_a_lost_wal_then_resume_finishes_every_job_once(tmp_path, crash_at):
    """The -wal file deleted after the kill (or the journal copied without it): the commits it
    held are gone from the journal, and are rebuilt from events.jsonl before anything is sent."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(gen_min=0.2, gen_max=0.4) as server:
        crashed = run(manifest, out, server, crash_at, "--reconcile")
        for suffix in ("-wal", "-shm"):
            (out / f"journal.sqlite{suffix}").unlink(missing_ok=True)
        resumed = run(manifest, out, server, None, "--reconcile")
        stats = server.stats()
    assert crashed.returncode == -9, crashed.stderr
    assert resumed.returncode == 0, resumed.stderr
    assert "rebuilt from events.jsonl" in resumed.stderr
    assert stats["submits"] == JOBS and stats["max_submits_per_body"] == 1
    rows = agree(out)
    assert set(rows.status) == {"completed"} and not rows.possible_duplicate.any()


def test_kill_9_mid_rebuild_then_the_next_run_rebuilds_it_whole(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim() as server:
        first = run(manifest, out, server, None)
        (out / "journal.sqlite").unlink()
        crashed = run(manifest, out, server, "mid_rebuild:10")
        resumed = run(manifest, out, server, None)
        stats = server.stats()
    assert first.returncode == 0 and crashed.returncode == -9, crashed.stderr
    assert resumed.returncode == 0, resumed.stderr
    assert f"({4 * JOBS} transitions: {JOBS} jobs, {JOBS} with a task id" in resumed.stderr
    assert stats["submits"] == JOBS and stats["downloads"] == JOBS
    assert set(agree(out).status) == {"completed"}


def test_without_a_lookup_a_crash_after_the_post_is_resent_and_flagged(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(gen_min=0.2, gen_max=0.4) as server:
        crashed = run(manifest, out, server, "after_post:3", "--no-reconcile")
        resumed = run(manifest, out, server, None, "--no-reconcile")
        stats = server.stats()
    assert crashed.returncode == -9 and resumed.returncode == 0, resumed.stderr
    rows = agree(out)
    assert set(rows.status) == {"completed"}
    assert stats["submits"] == JOBS + 1  # the one task whose id was lost, sent again...
    assert rows.possible_duplicate.sum() == 1  # ...and flagged in the report


def test_a_video_in_place_whose_completion_a_crash_lost_is_not_fetched_or_asked_about(tmp_path):
    """Killed after the rename (and with `completed` still waiting for its commit): resume
    finds the whole video in place, even once its link has expired, and neither downloads it
    nor asks the API about the finished task."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim(gen_min=0.2, gen_max=0.4, link_ttl=1.0) as server:
        crashed = run(manifest, out, server, "after_rename:3")
        waiting = journal_count(out, "downloading")
        states = dict(journal_rows(out, "job_id", "state"))
        downloading = {job for job, state in states.items() if state == "downloading"}
        # a task whose terminal answer came in just before the kill, its `downloading` not yet
        # committed: resume rightly asks about it again (the journal never heard the answer)
        running = sum(state == "running" for state in states.values())
        in_place = {p.stem for p in (out / "videos").glob("*.mp4")} & downloading
        time.sleep(1.5)  # every link handed out so far has expired
        resumed = run(manifest, out, server, None)
        stats = server.stats()
    assert crashed.returncode == -9 and resumed.returncode == 0, resumed.stderr
    assert waiting >= 1  # at least the job killed right after its rename
    rows = agree(out)
    assert set(rows.status) == {"completed"}
    assert in_place  # at least the job killed right after its rename
    # a video in place is neither fetched again nor asked about; only jobs that were still
    # mid-download at the kill (under load there can be some) are fetched a second time,
    # after one status call for a fresh link
    mid_download = len(downloading - in_place)
    assert JOBS <= stats["downloads"] <= JOBS + mid_download
    assert stats["downloads_expired"] == 0
    assert stats["polls_after_terminal"] <= mid_download + running
    assert stats["submits"] == JOBS


def test_videos_lost_on_disk_are_fetched_again_without_a_new_submit(tmp_path):
    """A video deleted by hand, or left empty by a power loss before the OS wrote it out."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    with sim() as server:
        first = run(manifest, out, server, None)
        deleted, emptied, *_ = sorted((out / "videos").iterdir())
        deleted.unlink()
        emptied.write_bytes(b"")
        resumed = run(manifest, out, server, None)
        stats = server.stats()
    assert first.returncode == 0 and resumed.returncode == 0, resumed.stderr
    assert "2 videos missing on disk fetched again" in resumed.stderr
    rows = agree(out)  # every completed row's file is there with the journal's size
    assert set(rows.status) == {"completed"} and deleted.stat().st_size > 0
    assert stats["submits"] == JOBS and stats["downloads"] == JOBS + 2


def test_an_output_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with sim() as server:
        result = run(manifest, blocker / "out", server, None)
    assert result.returncode == 2
    assert "cannot create the output folder" in result.stderr and "Traceback" not in result.stderr


def test_a_videos_path_that_cannot_be_written_leaves_the_journal_intact(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "videos").write_text("a file where the videos folder should be")
    with sim() as server:
        result = run(manifest, out, server, None)
        (out / "videos").unlink()
        resumed = run(manifest, out, server, None)
        stats = server.stats()
    assert result.returncode == 2
    assert "videos" in result.stderr and "Traceback" not in result.stderr
    assert resumed.returncode == 0 and stats["submits"] == JOBS


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KB filesystem (tmpfs); skipped where this process may not mount one."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_the_journal_resumes_elsewhere(tmp_path, tiny_disk):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        MANIFEST.replace("[0, 1, 2, 3]", "[0, 1, 2, 3, 4, 5, 6, 7]"), encoding="utf-8"
    )
    out = tiny_disk / "out"
    with sim(gen_min=0.1, gen_max=0.2) as server:
        full = run(manifest, out, server, None, "--reconcile")
        moved = tmp_path / "moved"
        subprocess.run(["cp", "-a", str(out), str(moved)], check=True)
        resumed = run(manifest, moved, server, None, "--reconcile")
        stats = server.stats()
    assert full.returncode == 2, full.stderr
    # whichever write meets the full disk first: a video, or the journal (SQLite's wording)
    said = full.stderr.strip().splitlines()[-1]
    assert "No space left on device" in said or "disk is full" in said, full.stderr
    assert "Traceback" not in full.stderr
    assert resumed.returncode == 0, resumed.stderr
    assert stats["submits"] == 16 and stats["max_submits_per_body"] == 1
    assert set(pd.read_csv(moved / "report.csv").status) == {"completed"}
