"""The CLI's streamed reports equal the whole-table ones, and the CLI's run never builds the table.

The CLI keeps a `ReportDigest` and writes the gallery from the journal a slice at a time
(flat memory for any number of jobs); notebooks still get the table from `omni_batch.run`.
Both paths must tell the same story: the same files byte for byte, the same terminal tables,
the same ``--json`` object.
"""

from __future__ import annotations

import io
import json
import re
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from rich.console import Console

import omni_batch
from omni_batch.cli.main import main
from omni_batch.cli.progress import final_table, left_pending, run_summary, unfinished
from omni_batch.journal import open_journal
from omni_batch.outputs import report as report_module
from omni_batch.outputs.gallery import render_gallery, write_gallery
from omni_batch.outputs.report import (
    build_report,
    csv_ready,
    digest_report,
    neutralise,
    write_reports,
    write_reports_digest,
)
from omni_batch.outputs.review import save_reviews
from omni_batch.outputs.summary import summary_renderable, summary_tables
from omni_batch.planning.manifest import load_manifest

MANIFEST = """
name: stream
defaults:
  aspect_ratio: ["16:9", "9:16"]
  duration: [6, 10]
  repeats: 2
  tags: {campaign: spring}
vars:
  product: [sneaker, backpack, "=cmd"]
  mood: [calm, loud]
prompts:
  - id: hero-{product}-{mood}
    prompt: "a {product} in a {mood} street"
    tags: {stage: hero}
  - id: plain
    prompt: "a plain shot"
    aspect_ratio: "16:9"
    repeats: 3
"""
# slices of 7 rows: a prompt's jobs, the CSV chunks and the summary groups span slices
SLICE = 7
SIM = ["--sim-set", "p_fail=0.3", "--sim-set", "p_reject=0.15", "--sim-set", "seed=5"]
# the simulator has no rate limit: submits at 100/s, not the tier's 5/s (what is compared here
# is the reports of whatever the run left, not its pace)
FAST_SUBMITS = ["--submit-rate", "100"]


def _cli(manifest: Path, out: Path, *extra: str):
    args = ["run", str(manifest), "--simulate", "fast", "--out", str(out), "--yes"]
    return CliRunner().invoke(main, [*args, "--no-progress", *SIM, *FAST_SUBMITS, *extra])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder run twice by the CLI: the second time without the 10 s jobs (kept as retired,
    their prompts' rows then not contiguous in the journal), with one video deleted."""
    base = tmp_path_factory.mktemp("stream")
    manifest = base / "stream.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = base / "out"
    first = _cli(manifest, out)
    assert first.exit_code == 1, first.output  # some failed
    manifest.write_text(MANIFEST.replace("duration: [6, 10]", "duration: 6"), encoding="utf-8")
    second = _cli(manifest, out, "--max-wait", "30")
    assert second.exit_code in (0, 1), second.output
    frame = build_report(out)
    assert {"completed", "failed", "retired"} <= set(frame.status)
    video = out / frame.loc[frame.status.eq("completed"), "video_path"].iloc[0]
    video.unlink()  # a completed job whose file is gone: "file missing" on its tile
    jobs = frame.job_id.tolist()  # reviews: the report's pick/score/note/reviewed_at columns
    save_reviews(out, jobs[:3], pick="picked", score=4, note="a <b>good</b> one, =cmd")
    save_reviews(out, jobs[5:7], pick="rejected")
    save_reviews(out, jobs[-1:], score=2)
    return out


@pytest.fixture
def small_slices(monkeypatch):
    monkeypatch.setattr(report_module, "SLICE_ROWS", SLICE)


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def _journal(folder: Path, var_names, tag_names, jobs) -> None:
    """A journal of planned jobs, as a run leaves it before its first submit."""
    journal = open_journal(folder)
    try:
        journal.set_meta("var_names", ",".join(var_names))
        journal.set_meta("tag_names", ",".join(tag_names))
        journal.sync(jobs)
    finally:
        journal.close()


def _fixed_clock(monkeypatch) -> None:
    import omni_batch.outputs.gallery as gallery

    monkeypatch.setattr(gallery.time, "strftime", lambda fmt, *a: "2025-01-01 00:00")


def test_the_report_files_are_the_same_bytes_as_the_whole_table_path(
    folder, tmp_path, small_slices
):
    frame = write_reports(folder)
    old = {n: (folder / n).read_bytes() for n in ("report.csv", "report.parquet", "failures.csv")}
    digest = write_reports_digest(folder)
    for name, data in old.items():
        assert (folder / name).read_bytes() == data, name
    assert digest.rows == len(frame) > SLICE * 3
    # the CSVs are the whole table's, its timestamps in one format (not one per pandas chunk)
    safe = csv_ready(neutralise(frame))
    assert old["report.csv"] == safe.to_csv(index=False).encode()
    failed = safe[safe["status"] == "failed"]
    assert old["failures.csv"] == failed.to_csv(index=False).encode()
    stamps = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[^,]*", old["report.csv"].decode())
    assert stamps and all(re.fullmatch(r".{19}\.\d{6}\+00:00", t) for t in stamps), stamps[:3]

    assert {"picked", "rejected"} <= set(frame["pick"].dropna()) and frame["score"].notna().any()
    assert frame["cost_usd"].gt(0).any() and frame["usd_per_second"].notna().all()
    parquet = pd.read_parquet(folder / "report.parquet")
    # Parquet has no seconds unit: a datetime64[s] column (reviewed_at) reads back as [ms]
    expected = frame.astype(
        {c: "datetime64[ms, UTC]" for c in frame if str(frame[c].dtype) == "datetime64[s, UTC]"}
    )
    pd.testing.assert_frame_equal(parquet, expected)  # same columns, order, dtypes, values


def test_the_streamed_gallery_is_the_page_of_the_whole_table(folder, monkeypatch, small_slices):
    _fixed_clock(monkeypatch)
    frame = build_report(folder)
    old = render_gallery(folder, frame)
    assert "file missing" in old and "retired" in old and "&#x27;=cmd" not in old
    assert "★ picked" in old and "✗ rejected" in old and "&lt;b&gt;good" in old
    path = write_gallery(folder)  # no table: streamed from the journal
    new = path.read_text(encoding="utf-8")
    assert new == old
    # the prompt rows hold their retired (10 s) jobs too, though they are last in the journal
    assert new.count('<tr class="group"') == frame.prompt_id.nunique()


def test_the_digest_tells_what_the_table_tells(folder, small_slices):
    frame = build_report(folder)
    digest = digest_report(folder)
    old, new = summary_tables(frame), digest.summary_tables()
    assert list(new) == list(old) == ["all", "aspect_ratio", "duration", "var_mood",
                                       "var_product", "tag_campaign", "tag_stage"]  # fmt: skip
    for name in old:
        pd.testing.assert_frame_equal(new[name], old[name], check_exact=True)
    assert _text(summary_renderable(new)) == _text(summary_renderable(old))
    assert _text(final_table(digest)) == _text(final_table(frame))
    assert "failures" in _text(final_table(digest))
    assert "cost_usd" in old["all"] and old["var_product"]["cost_usd"].gt(0).all()
    assert "spend" in _text(summary_renderable(new))
    for sliced in (False, True):
        assert unfinished(digest, sliced) == unfinished(frame, sliced)
        assert left_pending(digest, sliced) == left_pending(frame, sliced)
        a = run_summary(folder, digest, None, "fast", sliced=sliced)
        b = run_summary(folder, frame, None, "fast", sliced=sliced)
        assert json.dumps(a) == json.dumps(b)  # key order too: it is printed


def test_an_empty_report_digests_as_the_table(tmp_path, monkeypatch, small_slices):
    _fixed_clock(monkeypatch)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("prompts:\n  - {id: a, prompt: a}\n", encoding="utf-8")
    _journal(tmp_path / "out", [], [], [])
    frame, digest = build_report(tmp_path / "out"), digest_report(tmp_path / "out")
    assert _text(final_table(digest)) == _text(final_table(frame))
    old, new = summary_tables(frame), digest.summary_tables()
    pd.testing.assert_frame_equal(new["all"], old["all"], check_index_type=False)
    page = write_gallery(tmp_path / "out").read_text(encoding="utf-8")
    assert page == render_gallery(tmp_path / "out", frame)


def test_the_cli_run_never_builds_the_report_table(tmp_path, monkeypatch, small_slices):
    """The CLI run path writes the reports and the page from the journal a slice at a time and
    keeps only the digest: no call builds the whole table, and the digest's memory is a few
    bytes a job (a latency per summary dimension), not a row."""
    built: list[str] = []
    for name in ("build_report", "write_reports", "_concat"):
        real = getattr(report_module, name)

        def spy(*args, _real=real, _name=name, **kw):
            built.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(report_module, name, spy)
    import omni_batch.batch as runner
    import omni_batch.outputs.gallery as gallery

    monkeypatch.setattr(runner, "build_report", report_module.build_report)
    monkeypatch.setattr(gallery, "_page", lambda *a, **k: built.append("_page") or iter(()))
    from tests.conftest import shots_manifest

    manifest = shots_manifest(tmp_path, 30)
    result = CliRunner().invoke(
        main,
        ["run", str(manifest), "--simulate", "fast", "--out", str(tmp_path / "o"), "--yes",
         "--no-progress", "--no-verify", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert built == []
    assert json.loads(result.stdout.strip().splitlines()[-1])["counts"]["completed"] == 30
    page = (tmp_path / "o" / "gallery.html").read_text(encoding="utf-8")
    assert page.count('<figure class="tile') == 30


def _finish_peak(tmp_path: Path, jobs: int, streamed: bool) -> int:
    """Peak traced memory of what the CLI does after a run (digest, page, summary, final
    table) over a planned journal of ``jobs`` jobs (4 prompts × repeats)."""
    folder = tmp_path / f"{jobs}-{streamed}-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    manifest = folder / "m.yaml"
    values = ", ".join(str(n) for n in range(jobs // 8))
    manifest.write_text(  # prompt rows of 2 jobs; a summary group per 8 jobs
        f"vars: {{product: [a, b, c, d], n: [{values}]}}\n"
        "prompts:\n  - {id: 'p-{product}-{n}', prompt: 'a {product} {n}', repeats: 2}\n",
        encoding="utf-8",
    )
    plan = load_manifest(manifest)
    _journal(folder / "out", plan.var_names, plan.tag_names, plan.jobs())
    tracemalloc.start()
    try:
        if streamed:
            digest = digest_report(folder / "out")
            write_gallery(folder / "out", digest=digest, posters=False)
            _text(summary_renderable(digest.summary_tables()))
            _text(final_table(digest))
        else:  # the whole-table path the CLI took before
            frame = build_report(folder / "out")
            write_gallery(folder / "out", frame, posters=False)
            _text(summary_renderable(summary_tables(frame)))
            _text(final_table(frame))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_what_the_cli_does_after_a_run_holds_no_row_per_job(tmp_path, monkeypatch):
    """Deterministic (traced allocations, no timing): with slices of 100 rows, the streamed
    path's peak hardly grows from 200 to 800 planned jobs (the summary's groups only: ~150 bytes
    a job); the whole table's grows by more than 600 bytes a job (~940)."""
    monkeypatch.setattr(report_module, "SLICE_ROWS", 100)
    growth = {}
    for streamed in (True, False):
        _finish_peak(tmp_path, 40, streamed)  # imports, caches: once
        small = _finish_peak(tmp_path, 200, streamed)
        large = _finish_peak(tmp_path, 800, streamed)
        growth[streamed] = (large - small) / 600
    assert growth[True] < 300, growth  # bytes per extra job (a summary group per 8 jobs)
    assert growth[False] > 600, growth


def test_the_library_run_still_returns_the_table(folder):
    frame = build_report(folder)
    assert isinstance(frame, pd.DataFrame) and omni_batch.build_report is build_report


def test_a_variable_with_a_value_per_job_keeps_only_the_rows_shown(
    tmp_path, monkeypatch, small_slices
):
    """A summary table of more values than are ever shown (SHOWN_ROWS) is kept as its first
    rows plus its length: the same rows, terminal table and page as the whole table's, though
    the values come in an order unlike the sorted one and slices of 7 rows."""
    from omni_batch.outputs.summary import GROUPS, SHOWN_ROWS

    _fixed_clock(monkeypatch)
    values = [f"v{(n * 37) % 131:03d}" for n in range(131)]  # sorted ≠ manifest order
    manifest = tmp_path / "many.yaml"
    manifest.write_text(
        f"vars: {{n: [{', '.join(values)}]}}\nprompts:\n  - {{id: 's-{{n}}', prompt: 'shot {{n}}'}}\n",
        encoding="utf-8",
    )
    result = _cli(manifest, tmp_path / "out", "--no-verify")
    assert result.exit_code in (0, 1), result.output
    frame, digest = build_report(tmp_path / "out"), digest_report(tmp_path / "out")
    old, new = summary_tables(frame), digest.summary_tables()
    assert len(old["var_n"]) == 131 and old["var_n"]["latency_p50"].notna().any()
    assert len(new["var_n"]) == SHOWN_ROWS and new["var_n"].attrs[GROUPS] == 131
    pd.testing.assert_frame_equal(new["var_n"], old["var_n"].head(SHOWN_ROWS), check_exact=True)
    pd.testing.assert_frame_equal(new["all"], old["all"], check_exact=True)
    assert _text(summary_renderable(new)) == _text(summary_renderable(old))
    assert "… 119 more" in _text(summary_renderable(new))
    page = write_gallery(tmp_path / "out", digest=digest).read_text(encoding="utf-8")
    assert page == render_gallery(tmp_path / "out", frame)


def test_the_run_keeps_no_cost_per_finished_job(tmp_path):
    """Spend.held (a job's cost while its task may still be refunded) holds the jobs in flight
    only: after the run it is empty, whatever was billed, refunded or completed."""
    import asyncio

    from omni_batch.batch import RunOptions, run_folder_async
    from tests.conftest import shots_manifest

    engines = []
    options = RunOptions(
        simulate="fast",
        simulator_settings={"p_fail": 0.3, "seed": 3},
        out=tmp_path / "o",
        verify=False,
    )
    digest = asyncio.run(
        run_folder_async(
            shots_manifest(tmp_path, 24), options, on_start=lambda s, e: engines.append(e)
        )
    )
    assert digest.count("completed") and digest.count("failed")
    spend = engines[0].spend
    assert spend.spent_usd > 0 and spend.held == {}
