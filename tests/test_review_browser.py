"""The review page in a real browser (issue #16): headless Debian Chromium through Playwright
against `omni-batch review`'s server on loopback. Pick, score and note by click and by key,
reload and see them; pivot; filter; compare in sync; 390 px wide without page-level scroll.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import omni_batch
from omni_batch.outputs.report import build_report
from omni_batch.outputs.review_server import serving
from tests.test_gallery_browser import ARGS, CHROMIUM

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
MANIFEST = """
name: ab-review
defaults:
  aspect_ratio: ["16:9", "9:16"]
  tags: {campaign: spring}
vars:
  product: [sneaker, backpack]
  setting: [beach, street]
prompts:
  - id: hero-{product}-{setting}
    prompt: "A {product} on a {setting} <img src=x onerror=alert(1)>"
"""
READY = "() => document.body.dataset.ready === '1'"
# where a screenshot is kept for docs/ (OMNI_BATCH_SCREENSHOTS=docs); else the test's tmp folder
SHOTS = os.environ.get("OMNI_BATCH_SCREENSHOTS")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("review-browser")
    manifest = base / "ab-review.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = base / "out"
    frame = omni_batch.run(manifest, out=out, simulate="fast")
    assert len(frame) == 8 and set(frame.status) == {"completed"}
    return out


@pytest.fixture(scope="module")
def server(folder) -> Iterator[str]:
    """The review server on its own loop in a thread (Playwright's sync API owns this one)."""
    ready, box = threading.Event(), {}

    async def serve() -> None:
        async with serving(folder) as url:
            box["url"], box["stop"] = url, asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="review-server")
    thread.start()
    assert ready.wait(20), "the review server did not start"
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=20)


@pytest.fixture(scope="module")
def browser(server) -> Iterator[object]:  # the run (in server) before Playwright's loop
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(server, browser) -> Iterator[object]:
    dialogs: list[str] = []
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(server)
    page.wait_for_function(READY, timeout=15_000)
    yield page
    assert dialogs == []  # nothing from a prompt or a note ever ran
    page.close()


def tile(page, job: str):
    return page.locator(f'.tile[data-job="{job}"]')


def saved(page, job: str) -> None:
    try:
        page.wait_for_function(
            "job => document.getElementById('saved').textContent === 'saved ' + job",
            arg=job,
            timeout=10_000,
        )
    except Exception:
        raise AssertionError(f"not saved: {page.inner_text('#saved')!r}") from None


def review_of(folder: Path, job: str) -> tuple:
    row = build_report(folder).set_index("job_id").loc[job]
    score = None if row["score"] is None or str(row["score"]) == "<NA>" else int(row["score"])
    return (row["pick"] if isinstance(row["pick"], str) else None, score, row["note"])


def test_pick_score_and_note_by_click_persist_after_reload(page, folder, server):
    job = build_report(folder)["job_id"].iloc[0]
    t = tile(page, job)
    t.locator(".pk").click()
    saved(page, job)
    t.locator('.stars button[data-score="4"]').click()
    page.wait_for_function(
        "job => document.querySelector(`.tile[data-job='${job}']`).dataset.score === '4'", arg=job
    )
    note = t.locator("textarea.note")
    note.fill("best light <script>alert(3)</script>")
    note.press("Enter")  # Enter saves the note
    page.wait_for_function(
        "job => document.getElementById('saved').textContent === 'saved ' + job"
        " && document.activeElement.dataset.job === job",
        arg=job,
    )
    assert review_of(folder, job) == ("picked", 4, "best light <script>alert(3)</script>")
    page.reload()
    page.wait_for_function(READY)
    t = tile(page, job)
    assert t.get_attribute("data-pick") == "picked" and t.get_attribute("data-score") == "4"
    assert t.locator(".pk").get_attribute("aria-pressed") == "true"
    assert t.locator("textarea.note").input_value() == "best light <script>alert(3)</script>"
    assert t.locator(".stars button.on").count() == 4


def test_pick_reject_score_and_note_by_keyboard_persist_after_reload(page, folder):
    order = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.job)")
    job, after = order[2], order[3]  # the page's order: by prompt, then ratio · duration
    t = tile(page, job)
    t.focus()
    page.keyboard.press("x")
    saved(page, job)
    page.keyboard.press("3")
    page.wait_for_function(
        "job => document.querySelector(`.tile[data-job='${job}']`).dataset.score === '3'", arg=job
    )
    page.keyboard.press("n")
    page.keyboard.type("too dark")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "job => document.querySelector(`.tile[data-job='${job}'] .note`).value === 'too dark'"
        " && document.getElementById('saved').textContent === 'saved ' + job",
        arg=job,
    )
    assert review_of(folder, job) == ("rejected", 3, "too dark")
    page.keyboard.press("ArrowRight")  # the next tile, picked by key
    assert page.evaluate("() => document.activeElement.dataset.job") == after
    page.keyboard.press("p")
    saved(page, after)
    page.reload()
    page.wait_for_function(READY)
    assert tile(page, job).get_attribute("data-pick") == "rejected"
    assert tile(page, job).get_attribute("data-score") == "3"
    assert tile(page, job).locator(".note").input_value() == "too dark"
    assert tile(page, after).get_attribute("data-pick") == "picked"


def test_pivot_rows_and_columns_by_variables_and_filter(page, folder):
    frame = build_report(folder)
    page.select_option("#rows", "var:product")
    page.select_option("#cols", "var:setting")
    heads = page.eval_on_selector_all(
        ".matrix thead th[scope=col]", "hs => hs.map(h => h.textContent)"
    )
    rows = page.eval_on_selector_all("tr.group", "rs => rs.map(r => r.dataset.row)")
    assert heads == ["beach", "street"] and rows == ["backpack", "sneaker"]
    cells = page.evaluate(
        """() => Array.from(document.querySelectorAll('tr.group')).flatMap(tr =>
        Array.from(tr.querySelectorAll('td')).map((td, i) => [tr.dataset.row, i,
        Array.from(td.querySelectorAll('.tile')).map(t => t.dataset.job)]))"""
    )
    for product, column, found in cells:
        setting = heads[column]
        want = frame[(frame.var_product == product) & (frame.var_setting == setting)]
        assert sorted(found) == sorted(want.job_id), (product, setting)
    page.select_option('select.filter[data-dim="var:product"]', "=sneaker")
    assert page.eval_on_selector_all("tr.group", "rs => rs.map(r => r.dataset.row)") == ["sneaker"]
    assert page.locator(".tile").count() == 4
    assert page.inner_text("#counts") == "4 of 8 jobs shown"
    # the summary counts per variable value, picks and mean score included
    page.select_option('select.filter[data-dim="var:product"]', "*")
    summary = page.locator('#summary table[data-dim="var:product"] tr[data-value]')
    assert summary.count() == 2
    # the aspect ratio as the rows: every job in its own ratio's row
    page.select_option("#rows", "aspect_ratio")
    assert page.eval_on_selector_all("tr.group", "rs => rs.map(r => r.dataset.row)") == [
        "9:16",
        "16:9",
    ]  # numbers in numeric order
    for ratio in ("9:16", "16:9"):
        found = page.eval_on_selector_all(
            f'tr.group[data-row="{ratio}"] .tile', "ts => ts.map(t => t.dataset.job)"
        )
        assert sorted(found) == sorted(frame[frame.aspect_ratio == ratio].job_id)


def test_summary_shows_picks_and_mean_score_per_value(page, folder):
    frame = build_report(folder)
    picked = frame[frame["pick"] == "picked"]
    scored = frame[frame["score"].notna()]
    table = page.locator('#summary table[data-dim="var:product"]')
    for product in ("sneaker", "backpack"):
        cells = table.locator(f'tr[data-value="{product}"] td').all_inner_texts()
        mine = scored[scored.var_product == product]["score"].astype(float)
        assert cells[0] == product and cells[1] == "4" and cells[2] == "100 %"
        assert int(cells[3]) == (picked.var_product == product).sum()
        assert cells[5] == (f"{mine.mean():.2f}" if len(mine) else "—")


def test_compare_two_takes_plays_them_in_sync(page, folder):
    jobs = build_report(folder)["job_id"].tolist()
    assert page.locator("#compare-btn").is_disabled()
    for job in jobs[4:6]:
        tile(page, job).locator(".cmp input").check()
    assert page.inner_text("#compare-btn") == "compare (2)"
    page.click("#compare-btn")
    videos = page.locator("#compare-grid video")
    assert videos.count() == 2 and page.locator("#compare").is_visible()
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#compare-grid video'))"
        ".every(v => v.readyState >= 2)"
    )
    page.click("#cmp-play")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#compare-grid video'))"
        ".every(v => !v.paused && v.currentTime > 0)"
    )
    page.click("#cmp-pause")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#compare-grid video')).every(v => v.paused)"
    )
    page.evaluate("() => { document.querySelector('#compare-grid video').currentTime = 2.0; }")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#compare-grid video'))"
        ".every(v => Math.abs(v.currentTime - 2.0) < 0.3)"
    )
    page.keyboard.press("Escape")
    assert not page.locator("#compare").is_visible()


def test_phone_width_has_no_page_level_horizontal_scroll(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    try:
        page.goto(server)
        page.wait_for_function(READY, timeout=15_000)
        widths = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.body.scrollWidth,"
            " window.innerWidth, document.getElementById('matrix').scrollWidth,"
            " document.getElementById('matrix').clientWidth]"
        )
        page_width, body_width, inner, matrix_scroll, matrix_box = widths
        assert inner == 390 and page_width <= 390 and body_width <= 390
        assert matrix_scroll > matrix_box  # the matrix scrolls inside its own box
        path = Path(SHOTS or tmp_path) / "review-phone.png"
        page.screenshot(path=str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        page.close()


def test_screenshot(page, tmp_path):
    path = Path(SHOTS or tmp_path) / "review.png"
    page.screenshot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
