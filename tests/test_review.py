"""Reviewing a run (issue #16): `omni-batch pick`, the review server over loopback (its API and
its safety) and `omni-batch promote` (the next round's manifest plans and holds exactly the
winners). Every run is a real simulator run; every server call crosses a real socket.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest
import yaml

import omni_batch
from omni_batch.journal import lock_folder, open_journal
from omni_batch.outputs.report import build_report
from tests import spawn

MANIFEST = """
name: review
defaults:
  aspect_ratio: ["16:9", "9:16"]
  tags: {campaign: spring}
vars:
  product: [sneaker, backpack]
  setting: [beach, street]
prompts:
  - id: hero-{product}-{setting}
    prompt: "A {product} on a {setting} <script>alert(1)</script> {{literal}}"
"""
TOKEN = "s3cret-review-token"


def make_run(base: Path) -> Path:
    manifest = base / "review.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    folder = base / "out"
    frame = omni_batch.run(manifest, out=folder, simulate="fast")
    assert len(frame) == 8 and set(frame.status) == {"completed"}
    return folder


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("review-run"))


@pytest.fixture
def folder(pristine, tmp_path) -> Path:
    """A fresh copy of the run for each test (reviews change it)."""
    copy = tmp_path / "out"
    shutil.copytree(pristine, copy)
    return copy


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = spawn.run(*args)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def jobs(folder: Path) -> list[str]:
    return build_report(folder)["job_id"].tolist()


# -- omni-batch pick ---------------------------------------------------------------------------
def test_pick_saves_through_the_journal_and_rewrites_the_reports(folder):
    a, b, c = jobs(folder)[:3]
    note = 'winner <img src=x onerror=alert(1)> "quoted"'
    done = cli("pick", str(folder), a, b, "--score", "4", "--note", note)
    assert f"{a}: picked, score 4" in done.stdout
    cli("pick", str(folder), c, "--reject")
    report = pd.read_csv(folder / "report.csv").set_index("job_id")
    assert report.loc[a, "pick"] == "picked" and report.loc[a, "score"] == 4
    assert report.loc[a, "note"] == note and report.loc[b, "pick"] == "picked"
    assert report.loc[c, "pick"] == "rejected" and pd.isna(report.loc[c, "score"])
    assert report["reviewed_at"].notna().sum() == 3
    parquet = pd.read_parquet(folder / "report.parquet").set_index("job_id")
    assert parquet.loc[a, "pick"] == "picked" and parquet.loc[a, "score"] == 4
    assert str(parquet["reviewed_at"].dtype).startswith("datetime64")
    page = (folder / "gallery.html").read_text(encoding="utf-8")
    assert page.count("★ picked") == 2 and page.count("✗ rejected") == 1
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    # the events say it too, so a rebuilt journal keeps it
    lines = (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert sum('"event": "review"' in line for line in lines) == 3
    # --clear takes the whole review away
    cli("pick", str(folder), a, "--clear")
    assert pd.isna(pd.read_csv(folder / "report.csv").set_index("job_id").loc[a, "pick"])


def test_pick_of_an_unknown_job_or_a_bad_score_saves_nothing(folder):
    a = jobs(folder)[0]
    done = cli("pick", str(folder), a, "no-such-job", check=False)
    assert done.returncode == 2 and done.stderr.strip().endswith(
        "no job 'no-such-job' in this output folder"
    )
    assert len(done.stderr.strip().splitlines()) == 1
    assert build_report(folder)["pick"].isna().all()  # all or nothing: `a` not picked either
    done = cli("pick", str(folder), a, "--score", "6", check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    done = cli("pick", str(folder / "nope"), a, check=False)
    assert done.returncode == 2 and "no such folder" in done.stderr


def test_reviews_survive_a_journal_rebuilt_from_events(folder):
    a, b = jobs(folder)[:2]
    cli("pick", str(folder), a, "--score", "5", "--note", "keep")
    cli("pick", str(folder), b, "--reject")
    cli("pick", str(folder), b, "--score", "2")  # a later change wins
    for suffix in ("", "-wal", "-shm"):
        (folder / f"journal.sqlite{suffix}").unlink(missing_ok=True)
    journal = open_journal(folder)
    try:
        assert journal.recovered and "rebuilt from events.jsonl" in journal.recovered
        saved = journal.reviews()
    finally:
        journal.close()
    assert (saved[a].pick, saved[a].score, saved[a].note) == ("picked", 5, "keep")
    assert (saved[b].pick, saved[b].score) == ("picked", 2)  # pick overrides --reject


def test_a_pick_that_rebuilds_the_journal_keeps_every_paid_video_in_the_reports(folder, pristine):
    a, lost = jobs(folder)[:2]
    events = folder / "events.jsonl"  # the lost job's lines went with the journal
    kept = [line for line in events.read_text().splitlines() if f'"{lost}"' not in line]
    events.write_text("\n".join(kept) + "\n")
    for suffix in ("-wal", "-shm"):
        (folder / f"journal.sqlite{suffix}").unlink(missing_ok=True)
    (folder / "journal.sqlite").write_bytes(b"")  # an empty file: rebuilt from the events
    cli("pick", str(folder), a)
    report = build_report(folder).set_index("job_id")
    assert len(report) == 8  # the video in place is recorded, not dropped from the reports
    assert report.loc[lost, "video_path"] == f"videos/{lost}.mp4" and report.loc[lost, "bytes"] > 0
    # the next run finds it completed: nothing is bought again
    again = omni_batch.run(pristine.parent / "review.yaml", out=folder, simulate="fast")
    assert set(again.status) == {"completed"} and len(again) == 8
    assert again.set_index("job_id").loc[lost, "attempts"] == 0


def test_pick_is_refused_while_a_run_holds_the_folder(folder):
    a = jobs(folder)[0]
    lock = lock_folder(folder)  # what a run holds for its whole length
    try:
        done = cli("pick", str(folder), a, check=False)
    finally:
        lock.close()
    assert done.returncode == 2
    assert "a run is using this folder; reviews are read-only until it ends" in done.stderr
    assert build_report(folder)["pick"].isna().all()


# -- the review server ---------------------------------------------------------------------------
@contextmanager
def review_server(folder: Path, *args: str) -> Iterator[str]:
    """`omni-batch review FOLDER --port 0 ARGS` in a subprocess; yields its URL; SIGTERM at end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "omni_batch", "review", str(folder), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("review: http://127.0.0.1:"), line + proc.stderr.read()
        yield line.split()[1].split("?")[0]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        assert "Traceback" not in proc.stderr.read()


def request(
    url: str,
    method: str = "GET",
    path: str = "/",
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    sent = {"X-Omni-Review": "1", "Content-Type": "application/json"} if method == "POST" else {}
    sent.update(headers or {})
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def api_jobs(url: str, headers: dict[str, str] | None = None) -> dict:
    status, _, body = request(url, path="/api/jobs", headers=headers)
    assert status == 200, body
    return json.loads(body)


def test_server_saves_each_action_at_once_and_keeps_it_across_restarts(folder):
    a, b = jobs(folder)[:2]
    with review_server(folder) as url:
        data = api_jobs(url)
        assert data["vars"] == ["product", "setting"] and data["tags"] == ["campaign"]
        assert len(data["jobs"]) == 8 and data["read_only"] is False
        assert all(j["video"] and j["poster"] for j in data["jobs"])
        status, _, body = request(url, "POST", "/api/review", {"job_ids": [a], "pick": "picked"})
        assert status == 200 and json.loads(body)["reviews"][0]["pick"] == "picked"
        # saved at once, in the journal: another reader sees it while the server still runs
        assert build_report(folder).set_index("job_id").loc[a, "pick"] == "picked"
        request(url, "POST", "/api/review", {"job_ids": [a], "score": 5, "note": "hero <b>"})
        request(url, "POST", "/api/review", {"job_ids": [b], "pick": "rejected", "score": 1})
    with review_server(folder) as url:  # a restarted server shows them
        shown = {j["job_id"]: j for j in api_jobs(url)["jobs"]}
        assert (shown[a]["pick"], shown[a]["score"], shown[a]["note"]) == ("picked", 5, "hero <b>")
        assert (shown[b]["pick"], shown[b]["score"]) == ("rejected", 1)
    report = pd.read_csv(folder / "report.csv").set_index("job_id")  # written as it stopped
    assert report.loc[a, "pick"] == "picked" and report.loc[a, "note"] == "hero <b>"
    assert report.loc[b, "pick"] == "rejected"


def test_server_refuses_bad_writes_and_serves_nothing_outside_the_folder(folder, tmp_path):
    a, b = jobs(folder)[:2]
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"not yours")
    (folder / "videos" / f"{b}.mp4").unlink()
    (folder / "videos" / f"{b}.mp4").symlink_to(outside)  # a link out of the folder
    with review_server(folder) as url:
        status, headers, _ = request(url)
        assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert request(url, path=f"/video/{a}")[0] == 200
        assert request(url, path=f"/video/{b}")[0] == 404  # the link leads outside
        for path in (
            "/journal.sqlite", "/events.jsonl", "/report.csv", "/videos/" + a + ".mp4",
            "/video/..%2Fjournal.sqlite", "/video/../../etc/passwd", "/poster/..%2F..%2Fx",
        ):  # fmt: skip
            assert request(url, path=path)[0] == 404, path
        # DNS rebinding: a page on another name that resolves to 127.0.0.1
        assert request(url, path="/api/jobs", headers={"Host": "evil.example:80"})[0] == 403
        post = {"job_ids": [a], "pick": "picked"}
        no_header = {"X-Omni-Review": "", "Content-Type": "application/json"}
        assert request(url, "POST", "/api/review", post, no_header)[0] == 403
        form = {"Content-Type": "text/plain"}  # what a cross-site form can send
        assert request(url, "POST", "/api/review", post, form)[0] == 403
        foreign = {"Origin": "http://evil.example"}
        assert request(url, "POST", "/api/review", post, foreign)[0] == 403
        for bad in (
            {"job_ids": [a], "pick": "maybe"}, {"job_ids": [a], "score": 6},
            {"job_ids": [a], "score": "5"}, {"job_ids": [a], "note": 7}, {"job_ids": [a]},
            {"job_ids": "x", "pick": None}, [1, 2],
        ):  # fmt: skip
            assert request(url, "POST", "/api/review", bad)[0] == 400, bad
        assert request(url, "POST", "/api/review", b"{not json")[0] == 400
        assert request(url, "POST", "/api/review", {"job_ids": ["nope"], "score": 2})[0] == 404
        assert request(url, "POST", "/api/review", {"job_ids": [a], "note": "x" * 70_000})[0] == 413
    assert build_report(folder)["pick"].isna().all()


def test_server_is_read_only_while_a_run_holds_the_folder(folder):
    a = jobs(folder)[0]
    with review_server(folder) as url:
        lock = lock_folder(folder)
        try:
            assert api_jobs(url)["read_only"] is True
            status, _, body = request(url, "POST", "/api/review", {"job_ids": [a], "score": 3})
            assert status == 409 and b"read-only until it ends" in body
        finally:
            lock.close()
        assert api_jobs(url)["read_only"] is False
        assert request(url, "POST", "/api/review", {"job_ids": [a], "score": 3})[0] == 200


def test_beyond_loopback_needs_a_token_and_a_token_guards_every_request(folder):
    done = cli("review", str(folder), "--host", "0.0.0.0", "--port", "0", check=False)
    assert done.returncode == 2 and "needs --token" in done.stderr
    done = cli("review", str(folder), "--token", "short", check=False)
    assert done.returncode == 2 and "at least 12 characters" in done.stderr
    with review_server(folder, "--token", TOKEN) as url:
        assert request(url, path="/api/jobs")[0] == 401
        assert request(url, path="/api/jobs", headers={"Cookie": "omni_review=wrong"})[0] == 401
        assert request(url, path="/?token=wrong")[0] == 401
        status, headers, _ = request(url, path=f"/?token={TOKEN}")
        assert status == 302 and "HttpOnly" in headers["Set-Cookie"]
        assert "SameSite=Strict" in headers["Set-Cookie"]
        cookie = {"Cookie": headers["Set-Cookie"].split(";")[0]}
        assert len(api_jobs(url, cookie)["jobs"]) == 8
        assert len(api_jobs(url, {"Authorization": f"Bearer {TOKEN}"})["jobs"]) == 8
        # with a token, another Host name is allowed (a LAN address), the token is what counts
        assert request(url, path="/api/jobs", headers={**cookie, "Host": "10.0.0.5:80"})[0] == 200


# -- omni-batch promote --------------------------------------------------------------------------
def plan_jobs(manifest: Path) -> list[dict]:
    """The jobs `omni-batch plan` makes of a manifest (each job's body flattened in)."""
    done = cli("plan", str(manifest), "--format", "json")
    return [{**job, **job["body"]} for job in json.loads(done.stdout)]


def test_promote_writes_a_manifest_of_exactly_the_winners_that_plans(folder, tmp_path):
    ids = jobs(folder)
    report = build_report(folder).set_index("job_id")
    cli("pick", str(folder), ids[0], ids[3], "--score", "5", "--note", "line one\nline two {x}")
    cli("pick", str(folder), ids[5], "--score", "4")
    cli("pick", str(folder), ids[6], "--reject", "--score", "5")  # rejected: never a winner
    out = tmp_path / "next.yaml"
    done = cli("promote", str(folder), "--picked", "-o", str(out))
    assert "3 winners as 3 entries, 3 jobs" in done.stdout
    text = out.read_text(encoding="utf-8")
    assert f"# from the run in {folder.resolve()}" in text and f"# from {ids[0]}" in text
    planned = plan_jobs(out)
    winners = [ids[0], ids[3], ids[5]]
    assert sorted(j["prompt"] for j in planned) == sorted(report.loc[winners, "prompt"])
    assert sorted(j["job_id"] for j in planned) == sorted(winners)  # same ids: same settings
    for job in planned:
        source = report.loc[job["tags"]["source_jobs"]]
        assert job["tags"]["product"] == source["var_product"]
        assert job["tags"]["setting"] == source["var_setting"]
        assert job["tags"]["campaign"] == "spring"
        assert job["tags"]["promoted_from"] == folder.name
        assert (job["aspect_ratio"], job["duration"]) == (source["aspect_ratio"], 6)
    assert "{{literal}}" in text  # literal braces stay literal
    # by score, with overrides: rejected jobs stay out even with a high score
    out2 = tmp_path / "next2.yaml"
    cli("promote", str(folder), "--min-score", "5", "--set", "duration=10", "--repeats", "2",
        "-o", str(out2))  # fmt: skip
    planned = plan_jobs(out2)
    assert len(planned) == 4 and {j["duration"] for j in planned} == {10}
    assert {j["tags"]["source_jobs"] for j in planned} == {ids[0], ids[3]}
    assert yaml.safe_load(out2.read_text(encoding="utf-8"))["defaults"]["repeats"] == 2


def test_promote_refuses_what_would_not_plan_and_writes_nothing(folder, tmp_path):
    out = tmp_path / "next.yaml"
    done = cli("promote", str(folder), "--picked", "-o", str(out), check=False)
    assert done.returncode == 2 and "no job is picked" in done.stderr
    cli("pick", str(folder), jobs(folder)[0])
    for args, says in (
        (["--set", "duration=7"], "would not plan: prompts[0].duration: 7 is not allowed"),
        (["--set", "colour=red"], "--set colour: not a field promote sets"),
        (["--set", "duration"], "write NAME=VALUE"),
        (["--min-score", "3"], "--picked or --min-score N (one of them)"),
    ):
        done = cli("promote", str(folder), "--picked", *args, "-o", str(out), check=False)
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "promote-tmp" in p.name]


def test_promoted_manifest_runs_and_its_report_pivots_by_the_old_variables(folder, tmp_path):
    a = jobs(folder)[0]
    cli("pick", str(folder), a)
    out = tmp_path / "next.yaml"
    cli("promote", str(folder), "--picked", "--repeats", "2", "-o", str(out))
    frame = omni_batch.run(out, out=tmp_path / "round2", simulate="fast")
    assert len(frame) == 2 and set(frame.status) == {"completed"}
    assert set(frame["tag_source_jobs"]) == {a} and set(frame["tag_product"]) <= {
        "sneaker",
        "backpack",
    }
    assert os.path.exists(tmp_path / "round2" / "report.csv")
