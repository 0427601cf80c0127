"""The submit path's money rules against hostile servers, end to end through the CLI (one
test through the library's ``run``, for back-offs shorter than the documented ones).

What counts as "provably created nothing" (a refused connection, a 429, a 503 whose error type
says the limiter refused it, a 4xx) and what does not (every other 5xx — 500, 502, 503, 504,
520–524 — sent after the task was created, a lost answer, a 2xx without a task id). Each test
judges the client by the simulator's own counts: tasks created vs jobs, and whether every extra
task belongs to a job flagged ``possible_duplicate``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli, report, sim, write_manifest

JOBS = 12
SEED = 11  # the simulator seed these tests were written against
MANIFEST = f"""
name: money
vars:
  n: [{", ".join(str(n) for n in range(JOBS))}]
prompts:
  - id: "m-{{n}}"
    prompt: "money shot {{n}}"
"""


def run(tmp_path: Path, server, *extra: str, jobs_manifest: str = MANIFEST):
    """The CLI on ``jobs_manifest`` in ``tmp_path/out`` (lookups believed after 1 s); it must end
    without a traceback. (result, report)"""
    manifest = write_manifest(tmp_path / "money.yaml", jobs_manifest)
    out = tmp_path / "out"
    result = cli(server, manifest, out, "--lookup-grace", "1", *extra)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result, report(out)


def unflagged_extra(stats: dict, rows: pd.DataFrame) -> int:
    """Tasks created beyond one per job that no possible_duplicate flag accounts for."""
    flagged = rows[rows.possible_duplicate.astype(bool)]
    allowed = int((flagged.attempts - 1).clip(lower=0).sum())
    return max(0, stats["submits"] - len(rows) - allowed)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 520, 522, 524])
def test_a_5xx_sent_after_the_task_was_created_is_adopted_never_paid_twice(tmp_path, status):
    # the lookup works, but a reuse of the business id is not refused: a blind resend would
    # create (and bill) a second task
    with sim(
        seed=SEED, p_5xx_after_create=0.5, after_create_status=status, cbid="lookup_only"
    ) as server:
        result, rows = run(tmp_path, server, "--reconcile")
        stats = server.stats()
    assert stats["5xx_after_create"] > 0
    assert result.exit_code == 0, result.output
    assert stats["submits"] == JOBS and set(rows.status) == {"completed"}
    assert not rows.possible_duplicate.any()


def test_without_a_lookup_every_5xx_after_create_is_resent_only_flagged(tmp_path):
    with sim(seed=SEED, p_5xx_after_create=0.5) as server:
        _, rows = run(tmp_path, server, "--no-reconcile")
        stats = server.stats()
    assert stats["5xx_after_create"] > 0 and stats["submits"] > JOBS
    assert unflagged_extra(stats, rows) == 0
    # every POST is counted, and an ambiguous job is sent at most twice (one flagged resend)
    assert rows.attempts.sum() == stats["submit_requests"]
    assert rows.attempts.max() <= 2
    assert (rows[rows.attempts > 1].possible_duplicate.astype(bool)).all()


def test_a_server_that_ignores_the_business_id_is_never_trusted(tmp_path):
    # the server creates the task, answers 500, and drops client_business_id (no lookup, no
    # 409 on reuse): a 404 from a lookup never seen to work proves nothing, so each resend
    # is flagged
    with sim(seed=SEED, p_5xx_after_create=0.5, cbid="ignored") as server:
        _, rows = run(tmp_path, server, "--reconcile")
        stats = server.stats()
    assert stats["submits"] > JOBS
    assert unflagged_extra(stats, rows) == 0
    assert (rows[rows.attempts > 1].possible_duplicate.astype(bool)).all()


def test_a_409_naming_the_existing_task_adopts_it(tmp_path):
    # no lookup by business id, but a resend under the same id is refused with a 409 that
    # names the task the first POST created: that task is polled, not abandoned
    with sim(seed=SEED, p_5xx_after_create=0.5, cbid="no_lookup") as server:
        result, rows = run(tmp_path, server, "--reconcile")
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["submits"] == JOBS and stats["duplicate_client_business_ids"] > 0
    assert set(rows.status) == {"completed"}


def test_a_lagging_lookup_is_asked_again_after_its_grace_period(tmp_path):
    # the lookup finds a task only 0.4 s after its create (FAST's grace is 1 s): a first 404
    # right after the 5xx must not be believed
    with sim(seed=SEED, p_5xx_after_create=0.5, cbid_lag=0.4, cbid="lookup_only") as server:
        result, rows = run(tmp_path, server, "--reconcile")
        stats = server.stats()
    assert stats["submits"] == JOBS and set(rows.status) == {"completed"}, result.output
    assert not rows.possible_duplicate.any()


def test_a_503_limiter_unavailable_is_resent_unflagged_and_every_send_counted(tmp_path):
    with sim(seed=SEED, p_limiter_down=0.4) as server:
        result, rows = run(tmp_path, server, "--no-reconcile")
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["limiter_down"] > 0 and stats["submits"] == JOBS
    assert not rows.possible_duplicate.any()
    assert rows.attempts.sum() == stats["submit_requests"] == JOBS + stats["limiter_down"]


def test_a_2xx_without_a_known_task_id_is_never_resent_and_is_flagged(tmp_path):
    with sim(seed=SEED, p_unrecognised=0.25) as server:
        result, rows = run(tmp_path, server, "--reconcile")
        stats = server.stats()
    odd = rows[rows.error_type == "unrecognised_answer"]
    assert len(odd) == stats["unrecognised_submits"] > 0
    assert stats["submits"] == JOBS  # none of them sent again
    assert (odd.attempts == 1).all() and odd.possible_duplicate.astype(bool).all()
    assert odd.error_message.str.contains("uuid").all()  # the raw answer is kept
    assert result.exit_code == 1


def test_answers_that_changed_shape_stop_submitting_after_a_few(tmp_path):
    many = MANIFEST.replace(
        f"n: [{', '.join(str(n) for n in range(JOBS))}]",
        f"n: [{', '.join(str(n) for n in range(40))}]",
    )
    with sim(seed=SEED, p_unrecognised=1.0) as server:
        result, rows = run(tmp_path, server, "--reconcile", jobs_manifest=many)
        stats = server.stats()
    assert result.exit_code == 1
    assert "submit answers changed shape" in result.output
    # a few in a row (and the submits already under way), not four paid sends for each of 40
    assert stats["submits"] <= 12
    assert (rows.status == "pending").sum() >= 40 - 12
    sent = rows[rows.status != "pending"]
    assert (sent.error_type == "unrecognised_answer").all() and (sent.attempts == 1).all()


def test_server_text_in_the_final_table_is_never_read_as_markup():
    from rich.console import Console

    from omni_batch.cli.progress import final_table

    rows = pd.DataFrame(
        {
            "status": ["failed"],
            "error_type": ["[bold]odd[/bold]"],
            "http_status": [400],
            "error_message": ["bad key [redacted] and [link=http://x]click[/link]"],
            "possible_duplicate": [False],
        }
    )
    console = Console(width=200, record=True)
    console.print(final_table(rows))
    text = console.export_text()
    assert "[redacted]" in text and "[link=http://x]click[/link]" in text
    assert "[bold]odd[/bold]" in text


def test_a_lookup_that_answers_another_task_is_never_adopted(tmp_path):
    # the lookup by business id answers the key's first task, echoing that task's own id: no
    # job may take another job's task (its own may exist and be paid), and nothing is trusted
    with sim(seed=SEED, p_5xx_after_create=0.5, cbid="wrong_task") as server:
        _, rows = run(tmp_path, server, "--reconcile")
        stats = server.stats()
    assert stats["5xx_after_create"] > 0
    ids = rows.task_id.dropna()
    assert ids.is_unique  # no task adopted by two jobs
    assert unflagged_extra(stats, rows) == 0
    assert (rows[rows.attempts > 1].possible_duplicate.astype(bool)).all()
    events = (tmp_path / "out" / "events.jsonl").read_text()
    assert "answered a task of another id" in events


def test_a_409_that_names_no_task_after_a_trusted_404_leaves_the_job_flagged(tmp_path):
    # each task's first 3 lookups answer 404: the probe proves the lookup on its 4th try
    # (lag ~1 s, so a 3 s grace); an ambiguous job's two lookups say 404, so it is resent
    # under the same business id, and the 409 names no task. The task exists: flagged
    with sim(
        seed=SEED,
        p_5xx_after_create=0.5,
        unknown_polls=3,
        duplicate_cbid="conflict_bare",
        gen_min=0.1,
    ) as server:
        _, rows = run(tmp_path, server, "--reconcile", "--max-wait", "20")
    conflicts = rows[rows.http_status == 409]
    assert len(conflicts) > 0
    assert conflicts.possible_duplicate.astype(bool).all()


def test_a_409_naming_a_task_that_does_not_exist_is_not_adopted(tmp_path):
    with sim(
        seed=SEED, p_5xx_after_create=0.5, cbid="no_lookup", duplicate_cbid="conflict_bogus"
    ) as server:
        _, rows = run(tmp_path, server, "--reconcile")
    assert not rows.task_ids.fillna("").str.contains("bogus").any()
    conflicts = rows[rows.http_status == 409]
    assert len(conflicts) > 0 and conflicts.possible_duplicate.astype(bool).all()


def test_retry_failed_never_resends_an_answer_without_a_task_id(tmp_path):
    with sim(seed=SEED, p_unrecognised=0.3) as server:
        run(tmp_path, server, "--reconcile")
        before = server.stats()["submits"]
        _, rows = run(tmp_path, server, "--reconcile", "--retry-failed")
        after = server.stats()["submits"]
    odd = rows[rows.error_type == "unrecognised_answer"]
    assert len(odd) > 0 and (odd.attempts == 1).all()
    assert after == before  # nothing else had failed: nothing sent again


def test_a_limiter_that_stays_down_fails_the_jobs_unflagged_with_nothing_created(tmp_path):
    # every submit answers 503 rate_limit_unavailable: retried, then failed; nothing exists,
    # so nothing is looked up, resent as ambiguous or flagged. The run is the library's (what
    # the CLI calls) with the documented Policy's back-offs cut to FAST's (0.05-0.3 s, not
    # 0.5-4 s), its retries unchanged: the CLI with the documented back-offs took 35 s
    from omni_batch import RunOptions
    from omni_batch import run as library_run
    from omni_batch.running.options import FAST, Policy

    quick = Policy().scaled(retry_initial=FAST.retry_initial, retry_max=FAST.retry_max)
    assert quick.retries == Policy().retries
    with sim(seed=SEED, p_limiter_down=1.0) as server:
        options = RunOptions(
            out=tmp_path / "out",
            base_url=server.base_url,
            api_key=server.key,
            reconcile=True,
            lookup_grace=1,
            rate=200,
            poll_interval=0.2,
            policy=quick,
        )
        rows = library_run(write_manifest(tmp_path / "money.yaml", MANIFEST), options)
        stats = server.stats()
    assert stats["submits"] == 0 and set(rows.status) == {"failed"}
    assert not rows.possible_duplicate.astype(bool).any()
    assert (rows.attempts == 4).all()  # the first send and Policy.retries (3) more
