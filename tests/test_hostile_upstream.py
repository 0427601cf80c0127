"""A hostile upstream: every malformed answer becomes a recorded failure — never a crash, a
traceback, a write outside the output folder, or the key in a report."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web
from click.testing import CliRunner

from omni_batch.cli.main import main
from omni_batch.simulator.clips import get_clip

KEY = "sk-hostile-test-key-123"
MANIFEST = "prompts:\n  - {id: one, prompt: 'one shot'}\n"


class Hostile:
    """A real HTTP server whose answers are chosen per test (``mode``)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.base_url = ""
        self.submits = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/videos/generations", self.submit)
        app.router.add_get("/v1/videos/generations/{task_id}", self.status)
        app.router.add_get("/video.mp4", self.video)
        app.router.add_get("/loop", self.loop)
        return app

    async def submit(self, request: web.Request) -> web.StreamResponse:
        self.submits += 1
        if self.mode == "malformed_submit":
            return web.Response(
                text='{"id": "video_1", "status": ', content_type="application/json"
            )
        if self.mode == "html_500":
            return web.Response(
                status=500,
                text="<html><body><h1>502 Bad Gateway</h1> nginx</body></html>",
                content_type="text/html",
            )
        if self.mode == "giant_submit":
            return web.Response(
                text='{"id": "' + "x" * (2 << 20) + '"}', content_type="application/json"
            )
        if self.mode == "echo_key_400":
            auth = request.headers.get("Authorization", "")
            return web.json_response(
                {
                    "error": {
                        "code": 400,
                        "type": "invalid_request_error",
                        "message": f"bad request from {auth}",
                    }
                },
                status=400,
            )
        return web.json_response({"id": "video_1", "object": "generation.task", "status": "queued"})

    async def status(self, request: web.Request) -> web.Response:
        if self.mode == "status_missing_fields":
            return web.json_response({"id": "video_1"})
        if self.mode == "status_html":
            return web.Response(text="<html>maintenance</html>", content_type="text/html")
        urls = {
            "file_url": "file:///etc/passwd",
            "redirect_loop": f"{self.base_url}/loop",
            "too_big": f"{self.base_url}/video.mp4",
            "wrong_type": f"{self.base_url}/video.mp4?type=html",
        }
        url = urls.get(self.mode, f"{self.base_url}/video.mp4")
        return web.json_response(
            {
                "id": "video_1",
                "status": "completed",
                "progress": 100,
                "expires_at": 4102444800,
                "result": {"data": [{"url": url}]},
            }
        )

    async def video(self, request: web.Request) -> web.Response:
        if request.query.get("type") == "html":
            return web.Response(text="<html>not a video</html>", content_type="text/html")
        return web.Response(body=get_clip("16:9", 6, "720P", fps=4), content_type="video/mp4")

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{self.base_url}/loop")


@contextlib.contextmanager
def hostile(mode: str) -> Iterator[Hostile]:
    server = Hostile(mode)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(server.app())

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        ready.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True
    )
    thread.start()
    ready.wait(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def run(tmp_path: Path, server: Hostile, *extra: str):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--base-url", server.base_url, "--yes"]
    args += ["--poll-interval", "0.1", "--max-wait", "1.5", "--no-reconcile", *extra]
    result = CliRunner(env={"TOAPIS_API_KEY": KEY}).invoke(main, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result, out


def failure(out: Path) -> pd.Series:
    rows = pd.read_csv(out / "report.csv")
    assert len(rows) == 1 and rows.status[0] == "failed"
    return rows.iloc[0]


@pytest.mark.parametrize(
    ("mode", "error_type", "says"),
    [
        ("malformed_submit", "unrecognised_answer", "not a JSON object"),
        ("giant_submit", "unrecognised_answer", "larger than 1 MiB"),
        ("html_500", "ServerError", "502 Bad Gateway"),
        ("status_missing_fields", "wait_timeout", "not finished"),
        ("status_html", "wait_timeout", "not finished"),
        ("file_url", "unsafe_video_url", "refusing to download a file: URL"),
        ("redirect_loop", "download_failed", "bad video link"),
        ("wrong_type", "download_failed", "not a video"),
    ],
)
def test_each_malformed_answer_is_a_recorded_failure(tmp_path, mode, error_type, says):
    with hostile(mode) as server:
        result, out = run(tmp_path, server)
    assert result.exit_code == 1, result.output
    row = failure(out)
    assert row.error_type == error_type and says in row.error_message
    assert not list((out / "videos").iterdir())


def test_an_unparseable_submit_answer_is_never_sent_again_and_is_flagged(tmp_path):
    with hostile("malformed_submit") as server:
        _, out = run(tmp_path, server)
    row = failure(out)
    assert bool(row.possible_duplicate) and server.submits == row.attempts == 1
    assert "possibly billed" in row.error_message


def test_a_5xx_on_submit_without_a_lookup_is_resent_once_flagged(tmp_path):
    with hostile("html_500") as server:
        _, out = run(tmp_path, server)
    row = failure(out)
    assert bool(row.possible_duplicate) and server.submits == row.attempts == 2


def test_a_video_over_the_size_cap_is_refused(tmp_path):
    with hostile("too_big") as server:
        result, out = run(tmp_path, server, "--max-video-mb", "0.001")
    assert result.exit_code == 1
    row = failure(out)
    assert "cap" in row.error_message and not list((out / "videos").iterdir())


def test_a_server_echoing_the_key_does_not_put_it_in_any_output(tmp_path):
    with hostile("echo_key_400") as server:
        result, out = run(tmp_path, server)
    assert result.exit_code == 1
    assert "[redacted]" in failure(out).error_message
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in result.output
