"""The gallery page and the summary tables, built from a real simulator run of a small A/B
matrix with seeded failures; plus the summary arithmetic on a hand-made report.
"""

from __future__ import annotations

import os
import re
import shutil
from html import escape
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

import omni_batch
from omni_batch.outputs.gallery import write_gallery
from omni_batch.outputs.summary import summary_renderable, summary_tables
from omni_batch.simulator.clips import get_clip

MANIFEST = """
name: gallery
defaults:
  aspect_ratio: ["16:9", "9:16"]
  repeats: 2
  tags: {campaign: spring}
vars:
  product: [sneaker, backpack]
prompts:
  - id: hero-{product}
    prompt: "<script>alert(1)</script> \\"quotes\\" & 'apostrophes': a {product} on a neon street"
    tags: {stage: hero}
"""
JOBS = 8  # 2 products x 2 ratios x 2 repeats
SIM = {"p_fail": 0.3, "seed": 4}  # seed 4 fails 3 of the first 8 tasks


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    base = tmp_path_factory.mktemp("gallery")
    manifest = base / "gallery.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = base / "out"
    frame = omni_batch.run(manifest, out=out, simulate="fast", simulator_settings=SIM)
    assert len(frame) == JOBS and set(frame.status) == {"completed", "failed"}
    return out, frame


@pytest.fixture(scope="module")
def page(run) -> str:
    folder, frame = run
    path = write_gallery(folder, frame)
    assert path == folder / "gallery.html"
    return path.read_text(encoding="utf-8")


def tile(page: str, job_id: str) -> str:
    match = re.search(rf'<figure [^>]*id="job-{re.escape(job_id)}".*?</figure>', page, re.S)
    assert match, job_id
    return match.group(0)


def test_the_manifest_prompt_really_is_hostile(run):
    _, frame = run
    assert frame.prompt.str.contains("<script>alert(1)</script>", regex=False).all()
    assert frame.prompt.str.contains('"quotes"', regex=False).all()


def test_one_tile_per_job(run, page):
    _, frame = run
    assert page.count('<figure class="tile') == JOBS
    for job_id in frame.job_id:
        assert page.count(f'id="job-{job_id}"') == 1


def test_rows_per_prompt_and_columns_per_ratio_and_duration(page):
    assert page.count('<tr class="group"') == 2  # hero-sneaker, hero-backpack
    heads = re.findall(r"<thead><tr><th>prompt</th>(.*?)</tr></thead>", page)[0]
    assert re.findall(r"<th>(.*?)</th>", heads) == ["16:9 · 6 s", "9:16 · 6 s"]
    assert "product = sneaker" in page and "product = backpack" in page


def test_prompt_text_is_escaped_everywhere(page):
    assert "<script>alert(1)</script>" not in page
    assert escape("<script>alert(1)</script>") in page
    assert "&quot;quotes&quot;" in page and "&#x27;apostrophes&#x27;" in page
    assert page.count("<script") == 1  # only the page's own filter script


def test_the_page_references_nothing_on_the_network(page):
    assert not re.search(r"""(src|href|poster|action)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert escape("default-src 'none'") in page  # and the browser is told so


def test_completed_tiles_play_their_video_with_a_poster(run, page):
    folder, frame = run
    for row in frame[frame.status == "completed"].itertuples():
        html = tile(page, row.job_id)
        assert f'src="videos/{row.job_id}.mp4"' in html and 'preload="metadata"' in html
        assert f'poster="posters/{row.job_id}.jpg"' in html
        assert (folder / "posters" / f"{row.job_id}.jpg").read_bytes()[:2] == b"\xff\xd8"
        assert "✓ verified" in html and f"{row.latency_s:.1f} s" in html
        assert 'data-status="completed"' in html and 'data-t1="hero"' in html


def test_failed_tiles_show_the_error_and_no_video(run, page):
    _, frame = run
    failed = frame[frame.status == "failed"]
    assert len(failed) == 3
    for row in failed.itertuples():
        html = tile(page, row.job_id)
        assert "<video" not in html and 'data-status="failed"' in html
        assert row.error_type in html and escape(row.error_message) in html
        assert f"HTTP {row.http_status}" in html and row.request_id in html


def test_filters_offer_every_status_and_tag_value(page):
    assert re.search(r'<select id="f-status">', page)
    assert (
        '<select data-tag="0" id="f-tag-0"><option value="*">all</option><option value="=spring">'
        in page
    )
    assert '<option value="=hero">hero</option>' in page


def test_summary_tables_are_in_the_page(page):
    for caption in ("whole run", "by ratio", "by product"):
        assert f"<caption>{caption}</caption>" in page
    assert "by #campaign" not in page  # one value only: the whole-run table already says it


def test_posters_are_extracted_once(run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(run[0], folder)
    write_gallery(folder)
    posters = sorted((folder / "posters").iterdir())
    assert len(posters) == (run[1].status == "completed").sum()
    stale, kept = posters[0], posters[1]
    for path in posters:
        os.utime(path, (1_000_000_000, 2_000_000_000))  # newer than any video: kept as is
    video = folder / "videos" / stale.name.replace(".jpg", ".mp4")
    os.utime(stale, (1_000_000_000, 1_000_000_000))  # older than its video: made again
    os.utime(video, (1_500_000_000, 1_500_000_000))
    write_gallery(folder)
    assert kept.stat().st_mtime == 2_000_000_000
    assert stale.stat().st_mtime > 1_500_000_000
    assert not list(folder.glob(".gallery.html*"))  # written through a temp file, then renamed


def test_a_video_that_does_not_match_is_flagged(run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(run[0], folder)
    frame = run[1]
    job = frame[(frame.status == "completed") & (frame.aspect_ratio == "16:9")].iloc[0].job_id
    (folder / "videos" / f"{job}.mp4").write_bytes(get_clip("9:16", 6, "720P", fps=4))
    # without the engine's verdicts (a report from before probing), the gallery probes itself
    unprobed = frame.drop(columns=["verified", "verify_message"])
    page = write_gallery(folder, unprobed).read_text(encoding="utf-8")
    html = tile(page, job)
    assert 'data-flag="1"' in html and "720x1280, expected landscape 16:9" in html
    assert page.count('data-flag="1"') == 1


def test_a_verified_column_from_the_report_is_used_as_is(run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(run[0], folder)
    frame = run[1].copy()
    frame["verified"] = pd.array(
        [False if s == "completed" else None for s in frame.status], dtype="boolean"
    )
    frame["verify_message"] = "duration 3.0 s, expected 6 s"
    page = write_gallery(folder, frame).read_text(encoding="utf-8")
    assert page.count('data-flag="1"') == (frame.status == "completed").sum()
    assert "✓ verified" not in page and "⚠ duration 3.0 s, expected 6 s" in page


def test_summary_tables_of_the_run(run):
    _, frame = run
    tables = summary_tables(frame)
    assert list(tables) == [
        "all",
        "aspect_ratio",
        "duration",
        "var_product",
        "tag_campaign",
        "tag_stage",
    ]
    whole = tables["all"].loc["all"]
    assert (whole.jobs, whole.completed, whole.failed, whole.retries) == (8, 5, 3, 0)
    assert whole.success_rate == pytest.approx(5 / 8, abs=1e-4)
    assert whole.latency_p50 <= whole.latency_p90
    by_product = tables["var_product"]
    assert list(by_product.index) == ["backpack", "sneaker"]
    assert by_product.jobs.sum() == 8 and by_product.completed.sum() == 5
    assert whole.verify_failed == 0  # the engine probed every downloaded video


def test_summary_arithmetic_on_a_hand_made_report():
    frame = pd.DataFrame(
        {
            "status": ["completed", "completed", "failed", "pending", "completed"],
            "attempts": [1, 3, 2, 0, 1],
            "latency_s": [10.0, 20.0, None, None, 30.0],
            "aspect_ratio": ["16:9", "16:9", "16:9", "9:16", "9:16"],
            "duration": [6, 6, 10, 10, 10],
            "var_hook": ["fast", "slow", "fast", "", ""],  # a prompt without {hook}: left out
            "verified": pd.array([True, False, None, None, True], dtype="boolean"),
        }
    )
    tables = summary_tables(frame)
    landscape = tables["aspect_ratio"].loc["16:9"]
    assert (landscape.jobs, landscape.completed, landscape.failed) == (3, 2, 1)
    assert landscape.success_rate == pytest.approx(2 / 3, abs=1e-4)
    assert (landscape.latency_p50, landscape.latency_p90) == (15.0, 19.0)
    assert landscape.retries == 3 and landscape.verify_failed == 1
    assert tables["duration"].loc[10].retries == 1
    assert list(tables["var_hook"].index) == ["fast", "slow"]
    assert tables["var_hook"].jobs.sum() == 3
    pending_only = summary_tables(frame[frame.status == "pending"])["all"].loc["all"]
    assert pd.isna(pending_only.success_rate)  # nothing finished: no rate, not 0%


def test_summary_renderable_prints_values_as_text():
    frame = pd.DataFrame(
        {
            "status": ["completed", "failed"],
            "attempts": [1, 1],
            "latency_s": [12.0, None],
            "aspect_ratio": ["16:9", "16:9"],
            "duration": [6, 6],
            "tag_owner": ["[red]ana", "bo"],
        }
    )
    console = Console(width=120, record=True, color_system=None)
    console.print(summary_renderable(summary_tables(frame)))
    text = console.export_text()
    assert "[red]ana" in text and "#owner" in text and "50%" in text
    assert "ratio" not in text  # one ratio only: nothing to compare


def test_unfinished_jobs_show_their_state(run, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(run[0], folder)
    frame = run[1].copy()
    frame.loc[0, ["status", "state", "video_path"]] = ["running", "downloading", None]
    frame.loc[1, ["status", "state", "video_path"]] = ["pending", "pending", None]
    page = write_gallery(folder, frame).read_text(encoding="utf-8")
    running, pending = tile(page, frame.job_id[0]), tile(page, frame.job_id[1])
    assert 'data-status="running"' in running and ">downloading</div>" in running
    assert 'data-status="pending"' in pending and "<video" not in pending
    assert "1 running · 1 pending" in page
