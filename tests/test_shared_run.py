"""Several runners, one run (issue #18): `omni-batch run --journal postgresql://... --store s3://...`
started as separate processes against one simulator, a real PostgreSQL and moto's S3."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests import spawn
from tests.conftest import shots_manifest, sim

pytestmark = pytest.mark.timeout(240)


def runner(
    manifest: Path,
    out: Path,
    server: Any,
    url: str,
    store: str,
    s3: Any,
    name: str,
    *extra: str,
    env: dict[str, str] | None = None,
) -> spawn.Started:
    command = ["run", str(manifest), "--out", str(out)]
    command += ["--base-url", server.base_url, "--yes", "--no-progress"]  # reconciles: shared
    command += ["--journal", url, "--store", store, "--runner", name, "--poll-interval", "0.2"]
    return spawn.start(
        *command,
        *extra,
        env={**os.environ, **s3.env, "TOAPIS_API_KEY": server.key, **(env or {})},
    )


def states(url: str, run: str) -> dict[str, int]:
    from omni_batch.results import status

    return status(url, run)


def finish(proc: spawn.Started, within: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=within)
    return proc.returncode, out, err


def test_one_runner_runs_a_shared_run_to_the_end(
    tmp_path: Path, postgres: Any, s3_server: Any
) -> None:
    url = postgres.create_database()
    bucket = s3_server.create_bucket()
    manifest = shots_manifest(tmp_path, 12)
    with sim(seed=3) as server:
        proc = runner(
            manifest, tmp_path / "out", server, url, f"s3://{bucket}/r1", s3_server, "r1",
            "--submit-rate", "20",
        )  # fmt: skip
        code, _, err = finish(proc)
        assert code == 0, err[-3000:]
        stats = server.stats()
    assert stats["submits"] == 12 and stats["max_submits_per_body"] == 1
    assert states(url, "shots")["completed"] == 12
    # each job's workflow id is the client_business_id its submit carried
    import psycopg

    with psycopg.connect(url) as db:
        ids = db.execute(
            "SELECT j.business_id, w.workflow_uuid, j.job_id FROM omni_batch.jobs j "
            "JOIN dbos.workflow_status w ON w.workflow_uuid = j.business_id "
            "WHERE j.run = 'shots' AND w.status = 'SUCCESS'"
        ).fetchall()
    assert len(ids) == 12 and all(bid.endswith(f"-0-{job}") for bid, _, job in ids)
    assert (tmp_path / "out" / "report.csv").is_file()


def journal_facts(url: str, run: str) -> tuple[int, dict[str, int], list[str]]:
    """(jobs flagged possible_duplicate, jobs each runner moved to `submitting`, log lines)."""
    import psycopg

    with psycopg.connect(url) as db:
        flagged = db.execute(
            "SELECT count(*) FROM omni_batch.jobs WHERE run = %s AND possible_duplicate", (run,)
        ).fetchone()
        per_runner = db.execute(
            "SELECT runner, count(DISTINCT job_id) FROM omni_batch.events WHERE run = %s "
            "AND fields ->> 'state' = 'submitting' GROUP BY runner",
            (run,),
        ).fetchall()
        logs = db.execute(
            "SELECT fields ->> 'message' FROM omni_batch.events WHERE run = %s AND event = 'log'",
            (run,),
        ).fetchall()
    assert flagged is not None
    return int(flagged[0]), {str(r): int(n) for r, n in per_runner}, [str(m) for (m,) in logs]


def submitted_by(url: str, runner: str) -> int:
    """Jobs ``runner`` moved to `submitting` so far (0 before the runners made the tables)."""
    import psycopg

    try:
        return journal_facts(url, "shots")[1].get(runner, 0)
    except psycopg.Error:
        return 0


def test_a_stopped_runner_leaves_its_jobs_and_the_next_runner_finishes_them(
    tmp_path: Path, postgres: Any, s3_server: Any
) -> None:
    """SIGTERM stops a runner within seconds (exit 130) with jobs under way; a runner started
    later (another id, another machine) finishes every job, none sent twice unflagged."""
    url = postgres.create_database()
    bucket = s3_server.create_bucket()
    jobs = 30
    manifest = shots_manifest(tmp_path, jobs)
    store = f"s3://{bucket}/stop"
    with sim(seed=9, gen_min=1.0, gen_max=2.0) as server:
        first = runner(manifest, tmp_path / "a", server, url, store, s3_server, "a",
                       "--submit-rate", "10")  # fmt: skip
        deadline = time.monotonic() + 60
        while submitted_by(url, "a") < 8:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.25)
        first.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        code, _, err = finish(first, within=20)
        took = time.monotonic() - stopped_at
        assert code == 130, err[-3000:]
        assert took < 10
        left = states(url, "shots")
        assert left["completed"] < jobs
        second = runner(manifest, tmp_path / "b", server, url, store, s3_server, "b",
                        "--submit-rate", "10")  # fmt: skip
        code, _, err = finish(second)
        stats = server.stats()
    assert code == 0, err[-3000:]
    assert states(url, "shots")["completed"] == jobs
    flagged, per_runner, _ = journal_facts(url, "shots")
    assert per_runner.get("b", 0) > 0
    assert stats["submits"] - jobs <= flagged, (stats["submits"], flagged)


@pytest.mark.parametrize("point", ["before_post", "after_post"])
def test_a_runner_killed_mid_submit_has_that_submit_settled_by_another_never_paid_twice(
    tmp_path: Path, postgres: Any, s3_server: Any, point: str
) -> None:
    """A runner dies (SIGKILL) with its third job `submitting`: before its POST left, or after
    the task was created and before its id was recorded. Another runner takes the job's
    workflow up, looks the submit up by its client_business_id (the workflow id) and adopts the
    task, or sends it once when the lookup, proven on this account, finds none: every job is
    paid once, none flagged."""
    url = postgres.create_database()
    bucket = s3_server.create_bucket()
    jobs = 8
    manifest = shots_manifest(tmp_path, jobs)
    store = f"s3://{bucket}/{point}"
    flags = ("--submit-rate", "20", "--dead-after", "2", "--lookup-grace", "0.5")
    with sim(seed=4) as server:
        doomed = runner(manifest, tmp_path / "a", server, url, store, s3_server, "a", *flags,
                        env={"OMNI_BATCH_CRASH_AT": f"{point}:3"})  # fmt: skip
        code, _, err = finish(doomed)
        assert code == -signal.SIGKILL, err[-2000:]
        left = states(url, "shots")
        assert left["submitting"] == 1
        heir = runner(manifest, tmp_path / "b", server, url, store, s3_server, "b", *flags)
        code, _, err = finish(heir)
        stats = server.stats()
    assert code == 0, err[-3000:]
    assert states(url, "shots")["completed"] == jobs
    flagged, _, logs = journal_facts(url, "shots")
    assert flagged == 0
    assert stats["submits"] == jobs and stats["max_submits_per_body"] == 1
    if point == "after_post":
        assert any("did land" in line for line in logs), logs


def stopped(proc: spawn.Started) -> bool:
    """Whether ``proc`` is stopped (SIGSTOP), as /proc says."""
    with open(f"/proc/{proc.pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_paused_runner_replaced_by_another_sends_nothing_when_it_wakes(
    tmp_path: Path, postgres: Any, s3_server: Any
) -> None:
    """A runner paused (SIGSTOP: a suspended laptop, a stalled VM) with a job `submitting` and
    its POST about to leave is taken for dead and replaced; when it wakes, its lease has run
    out: it sends nothing and stops, and every job is paid once."""
    url = postgres.create_database()
    bucket = s3_server.create_bucket()
    jobs = 8
    manifest = shots_manifest(tmp_path, jobs)
    store = f"s3://{bucket}/paused"
    flags = ("--submit-rate", "20", "--dead-after", "2", "--lookup-grace", "0.5")
    env = {"OMNI_BATCH_CRASH_AT": "before_post:3", "OMNI_BATCH_CRASH_SIG": "STOP"}
    with sim(seed=6) as server:
        sleeper = runner(manifest, tmp_path / "a", server, url, store, s3_server, "a", *flags,
                         env=env)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not stopped(sleeper):
                assert time.monotonic() < deadline and sleeper.poll() is None
                time.sleep(0.25)
            heir = runner(manifest, tmp_path / "b", server, url, store, s3_server, "b", *flags)
            code, _, err = finish(heir)
            assert code == 0, err[-3000:]
        finally:
            sleeper.send_signal(signal.SIGCONT)
        woke, _, said = finish(sleeper)
        stats = server.stats()
    assert woke == 2, said[-2000:]
    assert "silent for" in said and "stops without sending" in said
    assert states(url, "shots")["completed"] == jobs
    flagged, _, _ = journal_facts(url, "shots")
    assert flagged == 0 and stats["submits"] == jobs and stats["max_submits_per_body"] == 1


def test_two_runs_in_one_database_run_side_by_side(
    tmp_path: Path, postgres: Any, s3_server: Any
) -> None:
    """Runs `one` and `two` of one database at once: each runner takes only its run's jobs."""
    url = postgres.create_database()
    bucket = s3_server.create_bucket()
    manifest = shots_manifest(tmp_path, 6)
    with sim(seed=8) as server:
        procs = [
            runner(
                manifest,
                tmp_path / name,
                server,
                url,
                f"s3://{bucket}/{name}",
                s3_server,
                f"x-{name}",
                "--run",
                name,
                "--submit-rate",
                "20",
            )
            for name in ("one", "two")
        ]
        results = [finish(p) for p in procs]
        stats = server.stats()
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert states(url, "one")["completed"] == states(url, "two")["completed"] == 6
    assert stats["submits"] == 12


def test_a_runner_with_other_budgets_than_the_run_is_refused_in_one_line(
    tmp_path: Path, postgres: Any, s3_server: Any
) -> None:
    url = postgres.create_database()
    bucket = s3_server.create_bucket()
    manifest = shots_manifest(tmp_path, 2)
    store = f"s3://{bucket}/settings"
    with sim(seed=2) as server:
        first = runner(manifest, tmp_path / "a", server, url, store, s3_server, "a",
                       "--submit-rate", "20")  # fmt: skip
        assert finish(first)[0] == 0
        other = runner(manifest, tmp_path / "b", server, url, store, s3_server, "b",
                       "--submit-rate", "40")  # fmt: skip
        code, _, err = finish(other)
    assert code == 2
    assert "--submit-rate 20.0" in err and "Traceback" not in err
