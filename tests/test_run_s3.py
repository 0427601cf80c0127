"""`omni-batch run --store s3://BUCKET/PREFIX` end to end: the real CLI against the real
simulator and moto's S3 server, both on loopback. The videos and posters land in the bucket, the
journal and reports stay in the output folder and link to the objects, a rerun fetches nothing
again, a wrong bucket fails before any submit, and no AWS credential is written or printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from omni_batch.cli.main import main
from omni_batch.journal import open_journal
from omni_batch.simulator import SimConfig, serve_in_thread
from omni_batch.store.s3 import S3Store

MANIFEST = """
name: s3run
defaults:
  aspect_ratio: ["16:9", "9:16"]
prompts:
  - id: alpha
    prompt: "alpha shot"
  - id: beta
    prompt: "beta shot"
"""
JOBS = 4
PREFIX = "runs/night-1"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "s3run.yaml"
    path.write_text(MANIFEST, encoding="utf-8")
    return path


@pytest.fixture
def bucket(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    for var, value in s3_server.env.items():  # what obstore reads (the test's S3Store too)
        monkeypatch.setenv(var, value)
    return s3_server.create_bucket()


def sim() -> Any:
    return serve_in_thread(SimConfig.from_profile("fast", seed=7))


def cli(server: Any, s3: Any, *args: str) -> Result:
    env = {"TOAPIS_API_KEY": server.key, **s3.env}
    return CliRunner(env=env).invoke(main, list(args))


def run(server: Any, s3: Any, manifest: Path, out: Path, *extra: str) -> Result:
    args = ["run", str(manifest), "--out", str(out), "--base-url", server.base_url, "--yes"]
    return cli(server, s3, *args, "--poll-interval", "0.2", "--rate", "200", *extra)


def secrets_absent(s3: Any, out: Path, *outputs: str) -> None:
    secrets = (s3.secret_key, s3.access_key)
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path
    for text in outputs:
        assert not any(s in text for s in secrets)


def test_a_run_puts_its_videos_in_the_bucket_and_links_them(manifest, tmp_path, s3_server, bucket):
    out = tmp_path / "out"
    with sim() as server:
        result = run(server, s3_server, manifest, out, "--store", f"s3://{bucket}/{PREFIX}")
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["submits"] == JOBS and stats["downloads_ok"] == JOBS
    assert f"videos: s3://{bucket}/{PREFIX}" in result.output
    with sim() as server:  # run --json names the bucket as where the videos are
        again = run(server, s3_server, manifest, out, "--json")
    assert json.loads(again.stdout)["reports"]["videos"] == f"s3://{bucket}/{PREFIX}"
    # the folder keeps the journal and reports, never a video or a poster
    assert not (out / "videos").exists() or not any((out / "videos").iterdir())
    assert not (out / "posters").exists()
    store = S3Store.from_url(f"s3://{bucket}/{PREFIX}")
    in_bucket = {v.name: v.size for v in store.stored()}
    rows = pd.read_csv(out / "report.csv")
    assert set(rows.status) == {"completed"} and bool(rows.verified.all())
    assert in_bucket == dict(zip(rows.job_id, rows.bytes, strict=True))
    base = f"{s3_server.endpoint}/{bucket}/{PREFIX}"
    for job, link in zip(rows.job_id, rows.video_path, strict=True):
        assert link == f"{base}/videos/{job}.mp4"  # a plain object URL, never presigned
        assert store.poster_link(job) == f"{base}/posters/{job}.jpg"
    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    for job in rows.job_id:
        assert f'src="{base}/videos/{job}.mp4"' in gallery
        assert f'poster="{base}/posters/{job}.jpg"' in gallery
    assert f"media-src &#x27;self&#x27; {s3_server.endpoint}" in gallery  # the page may play it
    journal = open_journal(out)
    assert journal.meta("store") == f"s3://{bucket}/{PREFIX}"  # the location, no credential
    journal.close()
    secrets_absent(s3_server, out, result.output)


def test_a_rerun_without_the_flag_fetches_nothing_and_report_rebuilds_the_links(
    manifest, tmp_path, s3_server, bucket
):
    out = tmp_path / "out"
    with sim() as server:
        first = run(server, s3_server, manifest, out, "--store", f"s3://{bucket}/{PREFIX}")
    assert first.exit_code == 0, first.output
    journal = open_journal(out)
    left = str(pd.read_csv(out / "report.csv").job_id[0])
    journal.requeue([left], "test: its completion was lost, its video was stored")
    journal.close()
    with sim() as server:
        again = run(server, s3_server, manifest, out)  # the store comes from the journal
        stats = server.stats()
    assert again.exit_code == 0, again.output
    assert stats["submits"] == 0 and stats["downloads"] == 0, stats
    rows = pd.read_csv(out / "report.csv")
    assert set(rows.status) == {"completed"}
    assert all(link.startswith(s3_server.endpoint) for link in rows.video_path)

    (out / "gallery.html").unlink()
    (out / "report.csv").unlink()
    with sim() as server:
        rebuilt = cli(server, s3_server, "report", str(out))
        status = cli(server, s3_server, "status", str(out))
    assert rebuilt.exit_code == 0, rebuilt.output
    assert status.exit_code == 0, status.output
    assert ["completed", str(JOBS)] in [line.split() for line in status.output.splitlines()]
    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    assert f'src="{s3_server.endpoint}/{bucket}/{PREFIX}/videos/{left}.mp4"' in gallery
    assert list(pd.read_csv(out / "report.csv").video_path) == list(rows.video_path)
    secrets_absent(s3_server, out, first.output, again.output, rebuilt.output)


def test_a_wrong_bucket_fails_in_one_line_before_any_submit(manifest, tmp_path, s3_server, bucket):
    out = tmp_path / "out"
    with sim() as server:
        result = run(server, s3_server, manifest, out, "--store", f"s3://no-{bucket}/x")
        stats = server.stats()
    assert result.exit_code == 2, result.output
    assert stats["requests"] == 0
    assert f"s3://no-{bucket}/x" in result.output and "cannot list the store" in result.output
    assert len(result.output.splitlines()) == 1, result.output
    secrets_absent(s3_server, tmp_path, result.output)


@pytest.mark.parametrize(
    "url",
    ["s3://", "s3://Bad_Bucket/x", "s3://key:secret@bucket/x", "http://bucket/x", "s3://b/../x"],
)
def test_a_store_that_cannot_be_a_bucket_is_refused_as_usage(manifest, tmp_path, s3_server, url):
    with sim() as server:
        result = run(server, s3_server, manifest, tmp_path / "out", "--store", url)
        stats = server.stats()
    assert result.exit_code == 2, result.output
    assert stats["requests"] == 0
    assert result.output.startswith(f"--store {url}: ") and result.output.count("\n") == 1


def test_a_folder_is_not_resumed_into_another_store(manifest, tmp_path, s3_server, bucket):
    out = tmp_path / "out"
    with sim() as server:
        first = run(server, s3_server, manifest, out, "--store", f"s3://{bucket}/{PREFIX}")
        other = run(server, s3_server, manifest, out, "--store", f"s3://{bucket}/elsewhere")
    assert first.exit_code == 0, first.output
    assert other.exit_code == 2
    assert f"resume with --store s3://{bucket}/{PREFIX}" in other.output


def test_a_video_another_runner_stored_is_recorded_not_fetched(
    manifest, tmp_path, s3_server, bucket
):
    import asyncio

    from omni_batch import plan
    from omni_batch.simulator.clips import get_clip

    job = next(iter(plan(manifest).manifest.jobs()))
    clip = get_clip(job.aspect_ratio, job.duration, job.resolution)
    store = S3Store.from_url(f"s3://{bucket}/{PREFIX}")

    async def one_chunk() -> Any:
        yield clip

    asyncio.run(store.put(job.job_id, one_chunk()))
    out = tmp_path / "out"
    with sim() as server:
        result = run(server, s3_server, manifest, out, "--store", f"s3://{bucket}/{PREFIX}")
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["submits"] == JOBS and stats["downloads"] == JOBS - 1, stats
    rows = pd.read_csv(out / "report.csv").set_index("job_id")
    assert rows.loc[job.job_id, "bytes"] == len(clip)
    assert bool(rows.verified.all())


def test_review_says_in_one_line_that_it_serves_local_videos_only(
    manifest, tmp_path, s3_server, bucket
):
    out = tmp_path / "out"
    with sim() as server:
        first = run(server, s3_server, manifest, out, "--store", f"s3://{bucket}/{PREFIX}")
        review = cli(server, s3_server, "review", str(out), "--port", "0")
    assert first.exit_code == 0, first.output
    assert review.exit_code == 2 and len(review.output.splitlines()) == 1, review.output
    assert f"its videos are in s3://{bucket}/{PREFIX}" in review.output


def test_a_journal_rebuilt_from_its_events_still_knows_the_store_and_buys_nothing_again(
    manifest, tmp_path, s3_server, bucket
):
    out = tmp_path / "out"
    with sim() as server:
        first = run(server, s3_server, manifest, out, "--store", f"s3://{bucket}/{PREFIX}")
    assert first.exit_code == 0, first.output
    links = list(pd.read_csv(out / "report.csv").video_path)
    lost = str(pd.read_csv(out / "report.csv").job_id[0])
    events = out / "events.jsonl"  # the journal is lost, and with it the lost job's lines
    events.write_text(
        "".join(line for line in events.open() if f'"{lost}"' not in line), encoding="utf-8"
    )
    for suffix in ("", "-wal", "-shm"):
        (out / f"journal.sqlite{suffix}").unlink(missing_ok=True)
    with sim() as server:
        again = run(server, s3_server, manifest, out)  # no --store: the events say where
        stats = server.stats()
    assert again.exit_code == 0, again.output
    assert stats["submits"] == 0 and stats["downloads"] == 0, stats
    rows = pd.read_csv(out / "report.csv")
    assert set(rows.status) == {"completed"} and list(rows.video_path) == links
    assert "1 of them from videos in place" in again.output
