"""Issue #19 items 7 and 9, end to end through the CLI against the simulator.

7: `run --limit N` / `--only NAME=VALUE` run part of a manifest in its output folder; the rest
stays pending for the next run, and nothing done is redone.
9: jobs that left the manifest (their ids changed) stay in the report and `status` as
`retired`, videos kept; a task of theirs still in flight is finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_batch.cli.main import main
from tests import spawn
from tests.conftest import report, sim, write_manifest

MANIFEST = """
name: slice
vars:
  product: [shoe, bag, hat]
defaults:
  aspect_ratio: ["16:9", "9:16"]
prompts:
  - id: ad
    prompt: "a {product} on a table"
    tags: {stage: draft}
  - id: plain
    prompt: "a plain shot"
    tags: {stage: final}
"""
JOBS = 8  # ad × 3 products × 2 ratios + plain × 2 ratios
QUICK = ("--simulate", "fast", "--no-progress", "--rate", "200", "--poll-interval", "0.2")


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "slice.yaml", MANIFEST)


def run(manifest: Path, out: Path, *extra: str, quick: tuple[str, ...] = QUICK):
    args = ["run", str(manifest), "--out", str(out), *quick, *extra]
    return CliRunner().invoke(main, args)


def submits(out: Path) -> list[str]:
    """The job id of every POST the runs sent (one `submitting` event each)."""
    lines = (out / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]
    return [e["job_id"] for e in events if e.get("state") == "submitting"]


def status_lines(out: Path) -> dict[str, int]:
    result = CliRunner().invoke(main, ["status", str(out)])
    assert result.exit_code == 0, result.output
    return {line.split()[0]: int(line.split()[1]) for line in result.output.splitlines()}


def test_limit_then_only_then_the_rest_submits_every_job_once(manifest, tmp_path):
    out = tmp_path / "out"
    first = run(manifest, out, "--limit", "3")
    assert first.exit_code == 0, first.output
    assert "this run submits at most 3 of the manifest's 8 jobs" in first.output
    assert "5 jobs left pending for a later run (outside --limit/--only)" in first.output
    rows = report(out)
    assert (rows.status == "completed").sum() == 3 and (rows.status == "pending").sum() == 5
    # the first three in manifest order: ad-shoe ×2, ad-bag-16x9; --only picks ad-bag-9x16
    second = run(
        manifest, out, "--only", "product=shoe", "--only", "product=bag",
        "--only", "aspect_ratio=9:16", "--json",
    )  # fmt: skip
    assert second.exit_code == 0, second.output
    assert "this run submits at most 1 of the manifest's 8 jobs" in second.output
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["exit_code"] == 0 and summary["left_pending"] == 4
    assert summary["counts"]["completed"] == 4 and summary["counts"]["pending"] == 4
    done = set(report(out).query("status == 'completed'").job_id)
    assert done == {"ad-shoe-16x9-6s-r1", "ad-shoe-9x16-6s-r1", "ad-bag-16x9-6s-r1",
                    "ad-bag-9x16-6s-r1"}  # fmt: skip
    # --only on a tag: both plain jobs
    third = run(manifest, out, "--only", "stage=final")
    assert third.exit_code == 0, third.output
    assert "2 jobs left pending" in third.output
    last = run(manifest, out)  # the rest, nothing redone
    assert last.exit_code == 0, last.output
    assert "left pending" not in last.output
    rows = report(out)
    assert len(rows) == JOBS and set(rows.status) == {"completed"}
    sent = submits(out)
    assert sorted(sent) == sorted(rows.job_id), "every job sent exactly once"
    assert status_lines(out)["completed"] == JOBS


def test_limit_does_not_count_jobs_resumed_from_an_earlier_run(manifest, tmp_path):
    out = tmp_path / "out"
    # two tasks that outlive --max-wait: failed wait_timeout, task ids kept for the next run
    slow = (*QUICK, "--sim-set", "gen_min=1.5", "--sim-set", "gen_max=1.5", "--max-wait", "0.3")
    first = run(manifest, out, "--limit", "2", quick=slow)
    assert first.exit_code == 1, first.output
    assert (report(out).error_type == "wait_timeout").sum() == 2
    second = run(manifest, out, "--limit", "1")
    assert second.exit_code == 0, second.output
    rows = report(out)
    assert (rows.status == "completed").sum() == 3, "2 resumed (not counted) + 1 new"
    assert (rows.status == "pending").sum() == 5
    assert len(submits(out)) == 3


def test_only_with_an_unknown_name_or_value_is_one_line_exit_2(manifest, tmp_path):
    out = tmp_path / "out"
    name = run(manifest, out, "--only", "prodct=shoe")
    assert name.exit_code == 2
    lines = name.output.strip().splitlines()
    assert len(lines) == 1, name.output
    assert "prodct" in lines[0] and "did you mean product?" in lines[0]
    for known in ("product", "stage", "aspect_ratio", "duration"):
        assert known in lines[0]
    value = run(manifest, out, "--only", "product=sho")
    assert value.exit_code == 2
    lines = value.output.strip().splitlines()
    assert len(lines) == 1, value.output
    assert "matches no job" in lines[0] and "bag, hat, shoe" in lines[0]
    bad = run(manifest, out, "--only", "product")
    assert bad.exit_code == 2 and "NAME=VALUE" in bad.output
    assert not (out / "journal.sqlite").exists(), "refused before anything ran"


def test_jobs_that_left_the_manifest_stay_in_the_report_as_retired(manifest, tmp_path):
    out = tmp_path / "out"
    first = run(manifest, out)
    assert first.exit_code == 0, first.output
    edited = tmp_path / "edited.yaml"  # hat → cap: two job ids leave, two new ones come
    edited.write_text(MANIFEST.replace("hat]", "cap]"), encoding="utf-8")
    second = run(edited, out, "--json")
    assert second.exit_code == 0, second.output
    assert "2 jobs are no longer in the manifest: kept in the report as retired" in second.output
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["retired"] == 2 and summary["jobs"] == JOBS
    assert summary["counts"]["completed"] == JOBS
    rows = report(out)
    retired = rows[rows.status == "retired"]
    assert sorted(retired.job_id) == ["ad-hat-16x9-6s-r1", "ad-hat-9x16-6s-r1"]
    assert set(retired.state) == {"completed"} and retired.task_id.notna().all()
    for path in retired.video_path:
        assert (out / path).is_file()
    assert status_lines(out)["retired"] == 2
    assert len(submits(out)) == JOBS + 2, "the new cap jobs only; the hat ones not again"
    page = (out / "gallery.html").read_text(encoding="utf-8")
    assert "ad-hat-16x9-6s-r1.mp4" in page and "retired" in page
    rebuilt = CliRunner().invoke(main, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output


def test_a_retired_job_in_flight_is_still_polled_and_downloaded(manifest, tmp_path):
    """A job whose task is running when it leaves the manifest: its paid video is fetched."""
    out = tmp_path / "out"
    with sim(seed=3, gen_min=1.0, gen_max=1.0) as server:
        base = ["--out", str(out), "--base-url", server.base_url, "--yes", "--no-progress"]
        base += ["--poll-interval", "0.2", "--rate", "200"]
        env = {**os.environ, "TOAPIS_API_KEY": server.key, "OMNI_BATCH_CRASH_AT": "after_task_id:1"}
        crashed = spawn.run("run", str(manifest), *base, "--limit", "1", env=env, timeout=60)
        assert crashed.returncode == -9, crashed.stderr  # killed with its task id committed
        edited = tmp_path / "edited.yaml"  # the shoe jobs leave, ad-shoe-16x9 mid-flight
        edited.write_text(MANIFEST.replace("[shoe, bag, hat]", "[bag, hat]"), encoding="utf-8")
        result = CliRunner(env={"TOAPIS_API_KEY": server.key}).invoke(
            main, ["run", str(edited), *base]
        )
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert "1 job is no longer in the manifest" in result.output
    assert "1 with a task under way are still finished" in result.output
    rows = report(out)
    gone = rows[rows.job_id == "ad-shoe-16x9-6s-r1"].iloc[0]
    assert gone.status == "retired" and gone.state == "completed"
    assert (out / gone.video_path).is_file()
    assert (rows.status == "completed").sum() == 6
    assert stats["submits"] == 7, stats  # the retired job was never sent again


def test_a_retired_job_whose_task_timed_out_is_polled_again_for_its_video(manifest, tmp_path):
    out = tmp_path / "out"
    slow = (*QUICK, "--sim-set", "gen_min=1.5", "--sim-set", "gen_max=1.5", "--max-wait", "0.3")
    first = run(manifest, out, "--only", "product=hat", quick=slow)
    assert first.exit_code == 1, first.output
    assert (report(out).error_type == "wait_timeout").sum() == 2
    edited = tmp_path / "edited.yaml"
    edited.write_text(MANIFEST.replace("[shoe, bag, hat]", "[shoe, bag]"), encoding="utf-8")
    second = run(edited, out)
    assert second.exit_code == 0, second.output
    rows = report(out)
    retired = rows[rows.status == "retired"]
    assert len(retired) == 2 and set(retired.state) == {"completed"}
    assert all((out / p).is_file() for p in retired.video_path)
    assert len(submits(out)) == 2 + 6, "polled again, never sent again"
