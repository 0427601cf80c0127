"""`status` (library and CLI) over a run of a shared PostgreSQL journal: the same table as for an
output folder, the URL's password never shown, one line and exit 2 when it cannot be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import omni_batch
from omni_batch.cli.main import main
from omni_batch.errors import StateError, UsageError
from omni_batch.journal import STATES, open_journal
from tests.conftest import journal_story

SECRET = "s3cr3t-pass-word"


@pytest.fixture
def db(postgres: Any) -> str:
    return str(postgres.create_database("shared_status"))


def _fill(target: str | Path, tmp_path: Path, run: str | None = None) -> None:
    """Five jobs: one completed, one failed, one running, two pending (one retired later)."""
    journal = open_journal(target, run=run, runner="r0")
    try:
        journal_story(journal, tmp_path, jobs=5, review=False)
    finally:
        journal.close()


def test_status_of_a_shared_run_is_the_folders_table(db, tmp_path):
    folder = tmp_path / "out"
    _fill(folder, tmp_path)
    _fill(db, tmp_path, run="story")
    _fill(db, tmp_path, run="other")  # another run of the database is not counted
    found = omni_batch.status(db, run="story")
    assert list(found) == [*STATES, "retired"]
    assert found == omni_batch.status(folder)
    assert found["completed"] == 1 and found["failed"] == 1 and found["retired"] == 1
    assert found["pending"] == 2 and sum(found.values()) == 5

    with_password = db.replace("postgres@", f"postgres:{SECRET}@")  # trust auth: accepted
    shared = CliRunner().invoke(main, ["status", with_password, "--run", "story"])
    local = CliRunner().invoke(main, ["status", str(folder)])
    assert shared.exit_code == 0 and local.exit_code == 0, shared.output + local.output
    assert shared.output == local.output
    lines = shared.output.splitlines()
    assert [line.split() for line in lines] == [
        *([state, str(n)] for state, n in found.items()),
        ["total", "5"],
    ]
    assert SECRET not in shared.output


def test_an_unknown_run_or_unreachable_database_is_one_line_and_exit_2(db, tmp_path):
    _fill(db, tmp_path, run="there")
    with pytest.raises(StateError, match="no such run"):
        omni_batch.status(db, run="elsewhere")
    for target, said in (
        (db.replace("postgres@", f"postgres:{SECRET}@"), "no such run"),
        (f"postgresql://operator:{SECRET}@127.0.0.1:1/nowhere", "cannot connect"),
    ):
        result = CliRunner().invoke(main, ["status", target, "--run", "elsewhere"])
        assert result.exit_code == StateError.exit_code == 2
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and said in result.stderr
        assert SECRET not in result.stderr and "operator" not in result.stderr


def test_a_run_name_with_a_folder_is_a_usage_error(tmp_path):
    folder = tmp_path / "out"
    _fill(folder, tmp_path)
    with pytest.raises(UsageError, match="shared journal"):
        omni_batch.status(folder, run="story")
    result = CliRunner().invoke(main, ["status", str(folder), "--run", "story"])
    assert result.exit_code == UsageError.exit_code and "shared journal" in result.stderr


def test_the_report_of_a_shared_run_is_the_folders_report(db, tmp_path):
    import pandas as pd

    from omni_batch.outputs.report import _TIMES

    folder, out = tmp_path / "out", tmp_path / "shared-report"
    _fill(folder, tmp_path)
    _fill(db, tmp_path, run="story")
    with_password = db.replace("postgres@", f"postgres:{SECRET}@")
    local = CliRunner().invoke(main, ["report", str(folder)])
    shared = CliRunner().invoke(
        main, ["report", with_password, "--run", "story", "--out", str(out)]
    )
    assert local.exit_code == 0 and shared.exit_code == 0, local.output + shared.output
    assert SECRET not in shared.output
    lines = shared.output.splitlines()
    assert lines[-1] == f"wrote {out / 'report.csv'}, report.parquet, failures.csv, gallery.html"
    # the run recorded no shared store: its videos are the runners', the gallery shows none
    assert lines[-2] == (
        "gallery.html: no videos shown: run story recorded no shared store "
        "(--store s3://...), so its videos are in its runners' own folders"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "failures.csv",
        "gallery.html",
        "report.csv",
        "report.parquet",
    ]
    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    assert "<video" not in gallery and "5 jobs" in gallery and SECRET not in gallery
    clock = [*_TIMES, "latency_s"]  # when each journal was written: differs
    for name in ("report.csv", "failures.csv"):
        mine, theirs = (pd.read_csv(where / name).drop(columns=clock) for where in (folder, out))
        pd.testing.assert_frame_equal(mine, theirs)
    frame = pd.read_parquet(out / "report.parquet")
    pd.testing.assert_frame_equal(
        frame.drop(columns=clock), pd.read_parquet(folder / "report.parquet").drop(columns=clock)
    )
    assert list(frame["status"]) == ["completed", "failed", "pending", "pending", "retired"]
    digest = omni_batch.write_reports(db, run="story", out=tmp_path / "again")
    assert digest.rows == 5 and digest.states.get("completed") == 1


def test_the_report_of_a_shared_run_needs_out_and_a_folder_takes_neither(db, tmp_path):
    _fill(db, tmp_path, run="story")
    with pytest.raises(UsageError, match="needs a folder"):
        omni_batch.write_reports(db, run="story")
    result = CliRunner().invoke(main, ["report", db, "--run", "elsewhere", "--out", "x"])
    assert result.exit_code == 2 and "no such run" in result.stderr
    folder = tmp_path / "out"
    _fill(folder, tmp_path)
    result = CliRunner().invoke(main, ["report", str(folder), "--out", str(tmp_path / "x")])
    assert result.exit_code == UsageError.exit_code and "shared journal" in result.stderr


PREFIX = "runs/night-1"


def _shared_run_in_a_bucket(db: str, tmp_path: Path, bucket: str) -> dict[str, str]:
    """Run "story" of the shared journal, its store s3://BUCKET/PREFIX: `journal_story` (one
    completed, one failed, one retired, two pending) and one more completed; the completed
    jobs' videos and the first one's poster in the bucket, and a stray video of a pending job
    (a runner's put whose journal write never came). Returns job id → report status."""
    import asyncio

    from omni_batch.planning.manifest import load_manifest
    from omni_batch.store.location import STORE_META
    from omni_batch.store.s3 import S3Store
    from tests.conftest import shots_manifest

    ids = [job.job_id for job in load_manifest(shots_manifest(tmp_path, 5)).jobs()]
    journal = open_journal(db, run="story", runner="r0")
    try:
        journal_story(journal, tmp_path, jobs=5, review=True)
        journal.set_meta(STORE_META, f"s3://{bucket}/{PREFIX}")
        journal.mark_submitting(ids[3], "ob-3", True, "main")
        journal.mark_running(ids[3], "task-3", "rid-3")
        journal.mark_downloading(ids[3], "https://cdn/3.mp4", 2e9, 1.5e9, polls=2)
        journal.mark_completed(ids[3], "videos/3.mp4", 4)
        journal.commit()
    finally:
        journal.close()

    async def chunks(data: bytes) -> Any:
        yield data

    store = S3Store(bucket, PREFIX)
    for job in (ids[0], ids[3], ids[4]):  # ids[4] is pending: its video must not be linked
        asyncio.run(store.put(job, chunks(b"mp4!")))
    store.put_poster(ids[0], b"jpeg")
    return dict(zip(ids, ["completed", "failed", "retired", "completed", "pending"], strict=True))


def test_the_gallery_of_a_shared_run_links_its_videos_in_the_bucket(
    db, tmp_path, s3_server, monkeypatch
):
    import re

    for var, value in s3_server.env.items():  # what obstore reads (the test's S3Store too)
        monkeypatch.setenv(var, value)
    bucket = s3_server.create_bucket()
    jobs = _shared_run_in_a_bucket(db, tmp_path, bucket)
    out = tmp_path / "shared-report"
    with_password = db.replace("postgres@", f"postgres:{SECRET}@")
    result = CliRunner(env=s3_server.env).invoke(
        main, ["report", with_password, "--run", "story", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        f"wrote {out / 'report.csv'}, report.parquet, failures.csv, gallery.html"
    )
    assert "no videos shown" not in result.output

    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    base = f"{s3_server.endpoint}/{bucket}/{PREFIX}"
    completed = sorted(job for job, status in jobs.items() if status == "completed")
    # exactly the completed jobs' objects: not the pending job's stray video
    linked = sorted(re.findall(r'<video[^>]* src="([^"]+)"', gallery))
    assert linked == [f"{base}/videos/{job}.mp4" for job in completed]
    first = next(iter(jobs))
    assert re.findall(r'poster="([^"]+)"', gallery) == [f"{base}/posters/{first}.jpg"]
    assert f"media-src &#x27;self&#x27; {s3_server.endpoint}" in gallery  # the page may play it
    assert "X-Amz-" not in gallery and "Signature" not in gallery  # never presigned
    failed = next(job for job, status in jobs.items() if status == "failed")
    assert re.search(rf'id="job-{failed}"[^>]*>.*?<b>generation_failed</b>', gallery)
    assert 'class="pick picked"' in gallery  # the saved review, read-only
    assert "<title>story" in gallery

    secrets = (SECRET, s3_server.secret_key, s3_server.access_key)
    for path in out.iterdir():
        data = path.read_bytes()
        assert not any(secret.encode() in data for secret in secrets), path
    assert not any(secret in result.output for secret in secrets)


def test_a_gallery_source_is_a_shared_journal(tmp_path):
    folder = tmp_path / "out"
    _fill(folder, tmp_path)
    with pytest.raises(UsageError, match="shared journal"):
        omni_batch.write_gallery(tmp_path / "elsewhere", source=str(folder))
