"""A paid result is never abandoned: a job that has a task id but no saved video (a completed
answer without a link, an expired link, a 404 or other 4xx on a poll, a download refused) is
polled again under the same task id by the next plain run, before anything is sent again.
`--retry-failed` sends again only jobs whose task the API said failed (or no longer knows),
or that never got one; every task id a job had stays in the report, and so does a
`possible_duplicate` flag."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

from tests.conftest import E2E_JOBS, cli, report, sim

PLAIN, RETRY = (), ("--retry-failed",)


@pytest.mark.parametrize(
    ("knobs", "first_args", "why", "second_args"),
    [
        ({"no_url_answers": 1}, (), "no_video_url", PLAIN),
        ({"no_url_answers": 1}, (), "no_video_url", RETRY),
        ({"stale_link_answers": 2}, (), "link_expired", PLAIN),  # the answer and its refresh
        ({"unknown_polls": 1}, (), 404, PLAIN),  # a lagging upstream (a 404 on --retry-failed
        # is a task gone: sent again, see test_retry_failed_resends_a_task_the_api_no_longer_knows)
        ({}, ("--max-video-mb", "0.001"), "download_failed", RETRY),  # refused on our side
    ],
    ids=["no-url", "no-url-retry-failed", "expired-link", "404", "over-the-cap-retry-failed"],
)  # fmt: skip
def test_a_task_with_no_saved_video_is_polled_again_and_its_video_saved_without_a_new_submit(
    manifest, tmp_path, knobs, first_args, why, second_args
):
    out = tmp_path / "out"
    with sim(**knobs) as server:
        first = cli(server, manifest, out, *first_args)
        failed = report(out)
        second = cli(server, manifest, out, *second_args)
        stats = server.stats()
    assert first.exit_code == 1, first.output
    assert set(failed.status) == {"failed"} and failed.task_id.notna().all()
    assert set(failed.http_status if why == 404 else failed.error_type) == {why}
    assert second.exit_code == 0, second.output
    assert stats["submits"] == E2E_JOBS  # the same tasks, polled again: nothing bought twice
    rows = report(out)
    assert set(rows.status) == {"completed"}
    assert list(rows.task_id) == list(failed.task_id) == list(rows.task_ids)
    assert (rows.bytes > 1000).all()


def test_retry_failed_resends_failed_generations_and_the_report_keeps_both_task_ids(
    manifest, tmp_path
):
    out = tmp_path / "out"
    with sim(p_fail=0.5, seed=3) as server:
        first = cli(server, manifest, out)
        before = report(out).set_index("job_id")
        plain = cli(server, manifest, out)  # a failed generation is not asked about again
        polls = server.stats()["polls"]
        retried = cli(server, manifest, out, "--retry-failed")
        stats = server.stats()
    failed = before[before.status == "failed"]
    assert first.exit_code == 1 and len(failed) > 0
    assert set(failed.error_type) == {"generation_failed"}
    assert plain.exit_code == 1 and stats["polls_after_terminal"] == 0
    assert retried.exit_code in (0, 1)
    assert stats["submits"] == E2E_JOBS + len(failed) and polls > 0
    after = report(out).set_index("job_id")
    for job_id, row in after.iterrows():
        ids = row.task_ids.split(" ")
        if job_id in failed.index:  # the failed task first, then the new one
            assert ids == [failed.task_id[job_id], row.task_id] and ids[0] != ids[1]
            assert row.attempts == 2
        else:
            assert ids == [row.task_id] == [before.task_id[job_id]]
    parquet = pd.read_parquet(out / "report.parquet").set_index("job_id")
    assert (parquet.task_ids == after.task_ids).all()


def test_retry_failed_resends_a_task_the_api_no_longer_knows(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(gen_min=30, gen_max=30) as first:
        cli(first, manifest, out, "--max-wait", "0.3")  # every task times out, ids kept
        lost = report(out)
    with sim() as second:  # an upstream that never saw those task ids: 404
        plain = cli(second, manifest, out)
        gone = report(out)
        retried = cli(second, manifest, out, "--retry-failed")
        stats = second.stats()
    assert plain.exit_code == 1 and set(gone.http_status) == {404}
    assert retried.exit_code == 0, retried.output
    assert stats["submits"] == E2E_JOBS
    rows = report(out)
    assert set(rows.status) == {"completed"}
    for old, row in zip(lost.task_id, rows.itertuples(), strict=True):
        assert row.task_ids.split(" ") == [old, row.task_id]


def test_retry_failed_keeps_the_possible_duplicate_flag(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(p_ambiguous=1.0) as first:  # every POST lands, and its answer is lost
        cli(first, manifest, out, "--no-reconcile")
        flagged = report(out)
    with sim() as second:
        retried = cli(second, manifest, out, "--retry-failed")
    assert flagged.possible_duplicate.all() and set(flagged.status) == {"failed"}
    assert retried.exit_code == 0, retried.output
    rows = report(out)
    assert set(rows.status) == {"completed"} and rows.possible_duplicate.all()


def test_the_simulator_knobs_hold_a_video_back_for_a_counted_number_of_answers(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        assert (await api.poll(task_id)).status == 404  # unknown_polls=1
        await asyncio.sleep(0.4)
        body = (await api.wait(task_id)).body
        assert body["status"] == "completed" and "result" not in body  # no_url_answers=1
        stale = (await api.poll(task_id)).body["result"]["data"][0]["url"]
        assert (await api.fetch(stale))[0] == 403  # stale_link_answers=1
        fresh = (await api.poll(task_id)).body["result"]["data"][0]["url"]
        assert (await api.fetch(fresh))[0] == 200

    sim_run(scenario, unknown_polls=1, no_url_answers=1, stale_link_answers=1)


@pytest.mark.parametrize("knob", ["unknown_polls", "no_url_answers", "stale_link_answers"])
def test_the_new_knobs_refuse_a_negative_count_in_one_line(knob):
    from omni_batch.errors import UsageError
    from omni_batch.simulator import SimConfig

    with pytest.raises(UsageError, match=f"{knob} must be 0 or more"):
        SimConfig(**{knob: -1})
