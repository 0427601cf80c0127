"""What the several-machines runner takes from DBOS as it is, proved against a real PostgreSQL
(tests/servers.py) with the spike app (tests/dbos_spike_app.py): launching from a URL given in
code, one run per workflow id, a failed step never retried. The spike's other findings (what
DBOS leaves to us: liveness, a rate at the POST, the in-flight cap) are now proved on the
runner itself: tests/test_shared_run.py (a killed runner's jobs taken up, its submit settled),
tests/test_shared_pace.py (the shared pacer), tests/test_shared_proof.py (three runners, one
budget, the in-flight cap); docs/design/several-machines.md keeps the spike's measurements.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS

from tests import dbos_spike_app as app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(postgres: Any) -> str:
    url = postgres.create_database("spike")
    app.create_tables(url)
    return str(url)


@pytest.fixture
def solo(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One launched DBOS in this process, configured in code from an empty cwd."""
    monkeypatch.chdir(tmp_path)
    app.configure(db, "solo")
    DBOS.launch()
    try:
        yield db
    finally:
        DBOS.destroy()


def test_dbos_launches_from_a_url_given_in_code_and_shuts_down(solo: str, tmp_path: Path) -> None:
    with app.SetWorkflowID("shot-1"):
        assert app.job_workflow("shot-1", 0.0) == "task-shot-1"
    assert [e[:2] for e in app.events(solo)] == [("shot-1", "submit"), ("shot-1", "record")]
    assert list(tmp_path.iterdir()) == []  # no dbos-config.yaml read, nothing written


def test_a_job_enqueued_twice_under_its_id_runs_once(solo: str) -> None:
    queue = app.register_queue(rate=10)
    first = app.enqueue(queue, "shot-1", "acct-a", 0.0)
    second = app.enqueue(queue, "shot-1", "acct-a", 0.0)
    assert first.get_result() == second.get_result() == "task-shot-1"
    assert second.workflow_id == "shot-1"
    assert len(app.events(solo, "submit")) == 1


def test_a_step_that_fails_is_not_retried(solo: str) -> None:
    with app.SetWorkflowID("shot-2"), pytest.raises(RuntimeError, match="upstream said no"):
        app.failing_workflow("shot-2")
    assert len(app.events(solo, "failing")) == 1
    assert DBOS.get_workflow_status("shot-2").status == "ERROR"  # type: ignore[union-attr]
