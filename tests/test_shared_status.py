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
from omni_batch.planning.manifest import load_manifest
from tests.conftest import shots_manifest

SECRET = "s3cr3t-pass-word"


@pytest.fixture
def db(postgres: Any) -> str:
    return str(postgres.create_database("shared_status"))


def _fill(target: str | Path, tmp_path: Path, run: str | None = None) -> None:
    """Five jobs: one completed, one failed, one running, two pending (one retired later)."""
    journal = open_journal(target, run=run, runner="r0")
    try:
        jobs = list(load_manifest(shots_manifest(tmp_path, 5)).jobs())
        journal.sync(jobs)
        ids = [j.job_id for j in jobs]
        journal.mark_submitting(ids[0], "ob-0", True, "main")
        journal.mark_running(ids[0], "task-0", "rid-0")
        journal.mark_downloading(ids[0], "https://cdn/0.mp4", 2e9, 1.5e9, polls=3)
        journal.mark_completed(ids[0], "videos/0.mp4", 1234)
        journal.mark_submitting(ids[1], "ob-1", False, "main")
        journal.mark_running(ids[1], "task-1", None)
        journal.mark_failed(ids[1], error_type="generation_failed", message="x", task="failed")
        journal.mark_submitting(ids[2], "ob-2", False)
        journal.mark_running(ids[2], "task-2", None)
        journal.commit()
        journal.sync(jobs[:2] + jobs[3:])  # shot-2 left the manifest with its task: retired
        journal.commit()
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
