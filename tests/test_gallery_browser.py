"""The gallery in a real browser: headless Debian Chromium (driven by Playwright) loads the page
of a simulator run from a loopback web server; every video loads, the filters filter.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web

import omni_batch
from omni_batch.outputs.gallery import write_gallery

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MANIFEST = """
name: browser
defaults:
  aspect_ratio: ["16:9", "9:16"]
  tags: {campaign: spring}
vars:
  product: [sneaker, backpack]
prompts:
  - id: hero-{product}
    prompt: "A {product} on a neon street <script>alert(1)</script> <img src=x onerror=alert(2)>"
    tags: {stage: hero}
  - id: teaser
    prompt: "A ten-second teaser, \\"fast cut\\""
    aspect_ratio: "9:16"
    duration: 10
    repeats: 2
    tags: {stage: teaser}
"""
SIM = {"p_fail": 0.3, "seed": 4}  # seed 4 fails 2 of the first 6 tasks
ALL_LOADED = """() => Array.from(document.querySelectorAll('.tile[data-status="completed"] video'))
    .every(v => v.readyState >= 1 && v.videoWidth > 0)"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    base = tmp_path_factory.mktemp("browser")
    manifest = base / "browser.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    folder = base / "out"
    frame = omni_batch.run(manifest, out=folder, simulate="fast", simulator_settings=SIM)
    assert len(frame) == 6 and set(frame.status) == {"completed", "failed"}
    write_gallery(folder, frame)
    return folder, frame


@pytest.fixture(scope="module")
def server(run) -> Iterator[str]:
    """A static file server for the run folder on a free loopback port, on its own loop in a
    thread (Playwright's sync API owns the main thread's loop). aiohttp answers Range requests,
    as a real web server would for video."""
    ready, box = threading.Event(), {}

    async def serve() -> None:
        app = web.Application()
        app.router.add_static("/", run[0])
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        box["port"], box["stop"] = runner.addresses[0][1], asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        await box["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="gallery-server")
    thread.start()
    assert ready.wait(10), "the static server did not start"
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def session(browser, server) -> Iterator[tuple[object, dict[str, list[str]]]]:
    """The loaded gallery page, and what happened while it loaded."""
    seen: dict[str, list[str]] = {"requests": [], "dialogs": [], "console": []}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}"))
    page.goto(f"{server}/gallery.html")
    page.wait_for_function(ALL_LOADED, timeout=10_000)
    yield page, seen
    page.close()


@pytest.fixture
def page(session):
    page, _ = session
    page.select_option("#f-status", "all")
    for select in page.locator("select[data-tag]").all():
        select.select_option("*")
    return page


def visible(page, selector: str = ".tile") -> list[str]:
    """Ids (tiles) or prompt ids (rows) of the elements the page shows."""
    return page.eval_on_selector_all(
        selector,
        "els => els.filter(e => e.offsetParent !== null).map(e => e.id || e.dataset.prompt)",
    )


def test_one_tile_per_job(run, page):
    _, frame = run
    assert sorted(visible(page)) == sorted(f"job-{j}" for j in frame.job_id)
    assert page.inner_text("#shown") == "6 of 6 shown"


def test_every_completed_video_loads_its_metadata(run, page):
    _, frame = run
    completed = frame[frame.status == "completed"]
    states = page.eval_on_selector_all(
        '.tile[data-status="completed"] video',
        "vs => vs.map(v => [v.readyState, v.videoWidth, v.videoHeight, Math.round(v.duration)])",
    )
    assert len(states) == len(completed) == 4
    expected = sorted(
        (1280, 720, 6) if r.aspect_ratio == "16:9" else (720, 1280, r.duration)
        for r in completed.itertuples()
    )
    assert all(state[0] >= 1 for state in states)
    assert sorted(tuple(s[1:]) for s in states) == expected


def test_posters_load(page):
    sizes = page.evaluate(
        """() => Promise.all(Array.from(document.querySelectorAll('video[poster]')).map(v =>
        new Promise(done => { const i = new Image(); i.onload = () => done(i.naturalWidth);
        i.onerror = () => done(0); i.src = v.poster; })))"""
    )
    assert len(sizes) == 4 and all(w in (180, 320) for w in sizes)


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_injected_script(server, session):
    page, seen = session
    assert seen["requests"] and all(url.startswith(server + "/") for url in seen["requests"])
    assert seen["dialogs"] == []  # neither <script> nor onerror= from the prompt ran
    assert not [m for m in seen["console"] if "Content Security Policy" in m]
    assert page.locator(".prompt img").count() == 0
    assert "<script>alert(1)</script>" in page.inner_text("tr.group .prompt")


def test_status_filter_shows_only_completed_then_only_failed(run, page):
    _, frame = run
    page.select_option("#f-status", "completed")
    expected = {f"job-{j}" for j in frame[frame.status == "completed"].job_id}
    assert set(visible(page)) == expected
    page.select_option("#f-status", "failed")
    assert set(visible(page)) == {f"job-{j}" for j in frame[frame.status == "failed"].job_id}
    assert page.inner_text("#shown") == "2 of 6 shown"


def test_tag_filter_shows_one_stage_and_hides_empty_rows(run, page):
    _, frame = run
    stage = page.locator("select[data-tag]").nth(1)  # tags in report order: campaign, stage
    stage.select_option("=teaser")
    assert set(visible(page)) == {f"job-{j}" for j in frame[frame.tag_stage == "teaser"].job_id}
    assert visible(page, "tr.group") == ["teaser"]  # the hero rows have nothing left to show
    page.select_option("#f-status", "completed")
    both = frame[(frame.tag_stage == "teaser") & (frame.status == "completed")]
    assert set(visible(page)) == {f"job-{j}" for j in both.job_id}


def test_screenshot(page, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "gallery.png"  # kept for a look after the run
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
