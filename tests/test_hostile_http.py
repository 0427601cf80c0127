"""A hostile server at the HTTP level (issue #13 items 7-11), built into the simulator and
judged through the CLI: the key echoed back in every encoding, video links to internal
addresses, compressed answers that inflate past the caps, Retry-After and endless 429s,
unusable --base-url values. Plus the pure parsing those rest on.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import html
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pandas as pd
import pytest
from aiohttp import web
from click.testing import CliRunner

from omni_batch.cli.main import main
from omni_batch.errors import UsageError
from omni_batch.running.api import MAX_RETRY_AFTER, check_base_url, retry_after_seconds
from omni_batch.running.download import DownloadError, download
from omni_batch.running.netguard import GuardedResolver, VideoGuard, address_problem, parse_address
from omni_batch.running.redact import Redactor
from omni_batch.simulator import SimConfig
from omni_batch.simulator.clips import get_clip
from omni_batch.store import LocalStore
from tests import spawn
from tests.conftest import cli, report, sim, write_manifest

MANIFEST = """
name: hostile
defaults:
  aspect_ratio: ["16:9", "9:16"]
prompts:
  - {id: alpha, prompt: "alpha shot"}
  - {id: beta, prompt: "beta shot"}
  - {id: gamma, prompt: "gamma shot"}
"""
JOBS = 6
ONE_JOB = "prompts:\n  - {id: one, prompt: 'one shot'}\n"
# the blocked model's jobs meet a 403 (an error answer), the others complete or fail
ECHO_MANIFEST = (
    MANIFEST + "  - {id: blocked, prompt: 'blocked shot', model: veo3.1-fast, duration: 8}\n"
)
# characters JSON, URLs and HTML all escape, a non-ASCII letter, and a '+' and '%'
HOSTILE_KEY = "sk-\"/\\é<&'+%x-hostile-0123"
PLAIN_KEY = "sk-plain-test-key-0123456789"
MB = 1 << 20


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "hostile.yaml", MANIFEST)


class Child:
    """A finished CLI subprocess: exit code, output, and its own peak memory."""

    def __init__(self, code: int, stdout: str, stderr: str, max_rss_mb: float, seconds: float):
        self.code, self.stdout, self.stderr = code, stdout, stderr
        self.max_rss_mb, self.seconds = max_rss_mb, seconds


def run_child(*args: str, key: str | None = None, timeout: float = 90, rss: bool = False) -> Child:
    """`python -m omni_batch ARGS` in a process of its own; with ``rss``, a fresh interpreter
    whose peak RSS comes from wait4 (its own, not the largest of every child this test process
    ever had), else one forked warm (tests/spawn.py; no peak RSS: NaN)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TOAPIS_API_KEY", "TOAPIS_BASE_URL")}
    env["COLUMNS"] = "3000"  # rich tables must not wrap a leaked key over two lines
    if key is not None:
        env["TOAPIS_API_KEY"] = key
    if not rss:
        began = time.monotonic()
        done = spawn.run(*args, env=env, timeout=timeout)
        took = time.monotonic() - began
        return Child(done.returncode, done.stdout, done.stderr, float("nan"), took)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "omni_batch", *args], stdout=out, stderr=err, env=env
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Child(
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
            usage.ru_maxrss / 1024,
            time.monotonic() - started,
        )


def run_args(manifest: Path, out: Path, server, *extra: str) -> list[str]:
    args = ["run", str(manifest), "--out", str(out), "--base-url", server.base_url, "--yes"]
    return [*args, "--poll-interval", "0.1", "--rate", "200", "--no-progress", *extra]


# -- 7. the key, in any form ------------------------------------------------------------------


def key_forms(key: str) -> set[str]:
    """How a key may be written out: plain, JSON-escaped (ASCII or not, every letter \\u),
    URL-encoded, HTML-escaped, base64 (the part that does not depend on what follows)."""
    raw = key.encode("utf-8")
    b64 = base64.b64encode(raw).decode()[:-4]
    forms = {
        key,
        json.dumps(key)[1:-1],
        json.dumps(key, ensure_ascii=False)[1:-1],
        "".join(f"\\u{unit:04x}" for unit in _utf16_units(key)),
        quote(key, safe=""),
        quote(key, safe="").lower(),
        quote_plus(key),
        html.escape(key),
        html.escape(key, quote=False),
        b64,
        b64.replace("+", "-").replace("/", "_"),
    }
    return {f for f in forms if len(f) >= 8}


def _utf16_units(text: str) -> list[int]:
    raw = text.encode("utf-16-be")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def strings(value: Any) -> list[str]:
    """Every string inside a decoded JSON value (dict keys included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def output_texts(out: Path) -> list[tuple[str, str]]:
    """(where, text) for every output file: raw bytes as text, and decoded (parquet cells,
    SQLite values, JSON strings, CSV cells, HTML with its entities resolved)."""
    found: list[tuple[str, str]] = []
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        found.append((str(path), data.decode("utf-8", "replace")))
        found.append((f"{path} (latin-1)", data.decode("latin-1")))
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            found += [(f"{path} cell", str(v)) for v in frame.to_numpy().ravel()]
        elif path.name == "journal.sqlite":
            # the SQLite file itself (every table), not the journal's reader: no key anywhere
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                tables = [
                    r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                for table in tables:
                    for row in db.execute(f'SELECT * FROM "{table}"'):
                        found += [(f"{path} {table}", str(v)) for v in row]
        elif path.suffix == ".jsonl":
            for line in data.decode().splitlines():
                found += [(f"{path} json", s) for s in strings(json.loads(line))]
        elif path.suffix == ".csv":
            for row in csv.reader(io.StringIO(data.decode("utf-8-sig"))):
                found += [(f"{path} cell", cell) for cell in row]
        elif path.suffix == ".html":
            found.append((f"{path} unescaped", html.unescape(data.decode())))
    return found


def assert_no_key(key: str, out: Path, *terminal: str) -> None:
    forms = key_forms(key)
    texts = output_texts(out) + [("terminal", t) for t in terminal]
    for where, text in texts:
        for form in forms:
            assert form not in text, f"the key ({form!r}) is in {where}"


@pytest.mark.parametrize(
    ("key", "places", "encoding"),
    [
        (HOSTILE_KEY, "error,header,url", "ascii"),
        (HOSTILE_KEY, "error,header,url", "utf8"),
        (HOSTILE_KEY, "error,header,url", "unicode"),
        (HOSTILE_KEY, "text,header", "ascii"),
        (PLAIN_KEY, "error,header,url", "ascii"),
    ],
)
def test_no_form_of_an_echoed_key_reaches_any_output(tmp_path, key, places, encoding):
    manifest = tmp_path / "echo.yaml"
    manifest.write_text(ECHO_MANIFEST, encoding="utf-8")
    out = tmp_path / "out"
    knobs = {"keys": (key,), "echo_key": tuple(places.split(",")), "echo_json": encoding}
    # seed 0: of the 6 tasks created, 2 fail (with the key in their message) and 4 complete
    with sim(seed=0, p_fail=0.4, blocked_models=("veo3.1-fast",), **knobs) as server:
        # --no-preflight: the blocked model must reach the submit path (a 403 that echoes)
        child = run_child(*run_args(manifest, out, server, "--no-preflight"), key=key)
        stats = server.stats()
    assert child.code == 1, child.stderr
    rows = report(out, keep_default_na=False)
    # the run met every echo: refused submits, failed generations, downloaded videos
    assert list(rows.status).count("completed") == 4, rows.status
    assert list(rows.error_type).count("generation_failed") == 2
    assert list(rows.http_status.astype(str)).count("403") == 2
    assert rows.request_id.str.contains("[redacted]", regex=False).all()
    assert rows.error_message.str.contains("[redacted]", regex=False).sum() == 2 + 2 * (
        "error" in places
    )
    assert stats["downloads_with_auth"] == 0
    assert_no_key(key, out, child.stdout, child.stderr)


def test_a_key_is_redacted_in_every_encoding_a_server_may_use():
    key = HOSTILE_KEY + "😀"
    redact = Redactor(key)
    for form in key_forms(key) | {json.dumps(json.dumps(key))[1:-1]}:
        for text in (form, f"before {form} after", f'{{"m": "{form}"}}'):
            cleaned = redact(text)
            assert "[redacted]" in cleaned and not any(f in cleaned for f in key_forms(key)), form
    body = {"error": {"message": f"bad key {key}", key: [key, 1]}}
    text, scrubbed = redact.json_text(json.dumps(body), body)
    assert key not in text and key not in json.dumps(scrubbed, ensure_ascii=False)
    assert redact.json_text('{"ok": true}', {"ok": True}) == ('{"ok": true}', {"ok": True})


UNUSABLE_BASE_URLS = [
    ("https://user:s3cret-pass@toapis.com", "credentials"),
    ("toapis.com", "no scheme"),
    ("ftp://toapis.com", "not ftp://"),
    ("garbage", "no scheme"),
    ("http://toapis.com:99999", "port"),
    ("http://toapis.com:0", "port 0"),
    ("http://[::1", "not a URL"),
    ("https://to apis.com", "spaces"),
    ("https://toapis.com/?key=s3cret-pass", "query"),
    ("http://-bad-/", "not a host name"),
]


@pytest.mark.parametrize(("url", "says"), UNUSABLE_BASE_URLS)
def test_an_unusable_base_url_is_one_line_and_exit_2(tmp_path, url, says):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB, encoding="utf-8")
    args = ["run", str(manifest), "--out", str(tmp_path / "out"), "--base-url", url, "--yes"]
    result = CliRunner(env={"TOAPIS_API_KEY": PLAIN_KEY}).invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("--base-url") and says in lines[0], lines
    assert "s3cret" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_an_unusable_base_url_in_the_environment_is_named(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB, encoding="utf-8")
    env = {"TOAPIS_API_KEY": PLAIN_KEY, "TOAPIS_BASE_URL": "https://me:pw@toapis.com"}
    result = CliRunner(env=env).invoke(main, ["run", str(manifest), "--yes"])
    assert result.exit_code == 2 and result.stderr.startswith("TOAPIS_BASE_URL")
    assert "pw@" not in result.output


def test_usable_base_urls_are_accepted_as_api_roots():
    assert check_base_url("https://toapis.com/v1/") == "https://toapis.com"
    assert check_base_url(" http://127.0.0.1:8700 ") == "http://127.0.0.1:8700"
    assert check_base_url("http://[::1]:80/v1") == "http://[::1]:80"
    assert (
        check_base_url("https://gateway.example.com/proxy") == "https://gateway.example.com/proxy"
    )
    with pytest.raises(UsageError):
        check_base_url("https://u:p@toapis.com")


# -- 8. video links to internal addresses ------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.2", "localhost", "169.254.169.254"])
def test_a_video_link_to_an_internal_address_fails_as_unsafe(manifest, tmp_path, host):
    out = tmp_path / "out"
    with sim(video_host=host) as server:
        result = cli(server, manifest, out, poll_interval="0.1")
        stats = server.stats()
    assert result.exit_code == 1, result.output
    rows = report(out, keep_default_na=False)
    assert set(rows.error_type) == {"unsafe_video_url"}
    assert rows.error_message.str.contains(f"from {host}", regex=False).all()
    assert rows.task_id.str.len().gt(0).all()  # the paid task's id is kept
    assert stats["downloads"] == 0 and not list((out / "videos").iterdir())


@pytest.mark.parametrize("target", ["127.0.0.2", "169.254.169.254"])
def test_a_redirect_from_the_api_host_to_an_internal_address_is_refused(manifest, tmp_path, target):
    out = tmp_path / "out"
    with sim(cdn_redirect=target) as server:
        result = cli(server, manifest, out, poll_interval="0.1")
        stats = server.stats()
    assert result.exit_code == 1, result.output
    rows = report(out, keep_default_na=False)
    assert set(rows.error_type) == {"unsafe_video_url"}
    assert rows.error_message.str.contains(f"redirected to {target}", regex=False).all()
    # each job's link was asked once (on the API's host), its redirect never followed
    assert stats["downloads"] == stats["downloads_redirected"] == JOBS
    assert stats["downloads_with_auth"] == 0


def test_an_api_named_localhost_may_send_videos_from_its_own_address(manifest, tmp_path):
    out = tmp_path / "out"
    with sim() as server:  # links on http://127.0.0.1:…, the API reached as localhost
        local = server.base_url.replace("127.0.0.1", "localhost")
        env = {"TOAPIS_API_KEY": server.key}
        args = ["run", str(manifest), "--out", str(out), "--base-url", local, "--yes"]
        result = CliRunner(env=env).invoke(main, [*args, "--poll-interval", "0.1"])
    assert result.exit_code == 0, result.output
    assert set(report(out, keep_default_na=False).status) == {"completed"}


def test_a_redirect_on_the_api_host_is_followed_and_never_carries_the_key(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(cdn_redirect="127.0.0.1") as server:
        result = cli(server, manifest, out, poll_interval="0.1")
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["downloads_redirected"] == JOBS and stats["downloads"] == 2 * JOBS
    assert stats["downloads_with_auth"] == 0


def test_a_status_call_redirected_elsewhere_is_not_followed_with_the_key(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB, encoding="utf-8")
    out = tmp_path / "out"
    with sim(status_redirect=True) as server:
        result = cli(server, manifest, out, "--max-wait", "0.5", poll_interval="0.1")
        stats = server.stats()
    assert result.exit_code == 1, result.output
    row = report(out, keep_default_na=False).iloc[0]
    assert row.error_type == "wait_timeout" and row.task_id
    assert stats["statuses"].get("307", 0) >= 1
    assert stats["downloads"] == 0 and stats["downloads_with_auth"] == 0


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "non-public"),
        ("2002:7f00:1::1", "loopback"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_addresses_are_classified(address, why):
    parsed = parse_address(address)
    assert parsed is not None and address_problem(parsed) == why


def test_the_guard_refuses_other_schemes_and_trusts_only_the_api_host():
    from yarl import URL

    guard = VideoGuard("http://127.0.0.1:8700")
    assert guard.literal_problem(URL("http://127.0.0.1:9999/v.mp4")) is None
    assert "loopback" in (guard.literal_problem(URL("http://127.0.0.2/v.mp4")) or "")
    for link in ("file:///etc/passwd", "ftp://cdn.example/v.mp4", "videos/v.mp4", "gopher://x/"):
        assert "refusing to download a" in (guard.literal_problem(URL(link)) or ""), link
    assert VideoGuard("https://toapis.com").literal_problem(URL("http://127.0.0.1/")) is not None


class _Rebinding(aiohttp.abc.AbstractResolver):
    """DNS as an attacker runs it: this name resolves to the machine's loopback."""

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[Any]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": 2,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


def test_a_name_that_resolves_to_loopback_at_connect_time_is_refused(tmp_path):
    """The pre-check cannot resolve the name; the connector's resolver sees 127.0.0.1."""

    async def scenario() -> DownloadError:
        app = web.Application()

        async def video(request: web.Request) -> web.Response:
            return web.Response(body=b"x" * 100, content_type="video/mp4")

        app.router.add_get("/v.mp4", video)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        guard = VideoGuard("https://api.example")
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(guard, _Rebinding()))
        store = LocalStore(tmp_path)
        store.prepare()
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                url = f"http://rebind.invalid:{port}/v.mp4"
                await download(session, url, store, "job", max_bytes=MB, time_limit=5, guard=guard)
        except DownloadError as exc:
            return exc
        finally:
            await runner.cleanup()
        raise AssertionError("downloaded from an address the resolver made loopback")

    exc = asyncio.run(scenario())
    assert exc.kind == "unsafe_video_url" and "rebind.invalid" in exc.message
    assert "127.0.0.1" in exc.message and not list((tmp_path / "videos").iterdir())


# -- 9. size caps count decoded bytes ----------------------------------------------------------

RSS_LIMIT_MB = 400  # the CLI itself peaks near 150 MB; an inflated gigabyte cannot hide


def test_a_gzip_bomb_status_answer_is_a_poll_failure_and_memory_stays_bounded(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB, encoding="utf-8")
    out = tmp_path / "out"
    with sim(status_bomb_mb=1024) as server:  # ~1 MB of gzip (under the 1 MiB cap) → 1 GiB
        args = run_args(manifest, out, server, "--max-wait", "1")
        child = run_child(*args, key=server.key, rss=True)
        stats = server.stats()
    assert child.code == 1, child.stderr
    row = report(out, keep_default_na=False).iloc[0]
    assert row.error_type == "wait_timeout" and row.task_id  # the task id is kept
    assert "larger than 1 MiB" in (out / "events.jsonl").read_text()
    assert stats["polls"] >= 1
    assert child.max_rss_mb < RSS_LIMIT_MB, f"peak RSS {child.max_rss_mb:.0f} MB"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_video_is_saved_decoded(manifest, tmp_path, encoding):
    out = tmp_path / "out"
    with sim(video_encoding=encoding) as server:
        result = cli(server, manifest, out, poll_interval="0.1")
    assert result.exit_code == 0, result.output
    rows = report(out, keep_default_na=False)
    assert set(rows.status) == {"completed"} and rows.verified.astype(str).eq("True").all()
    for ratio, path, size in zip(rows.aspect_ratio, rows.video_path, rows.bytes, strict=True):
        clip = get_clip(ratio, 6, "720P", fps=4)
        assert (out / path).read_bytes() == clip and int(size) == len(clip)


def test_a_gzip_bomb_video_stops_at_the_cap_and_memory_stays_bounded(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB, encoding="utf-8")
    out = tmp_path / "out"
    with sim(video_bomb_mb=1024) as server:
        args = run_args(manifest, out, server, "--max-video-mb", "5")
        child = run_child(*args, key=server.key, rss=True)
    assert child.code == 1, child.stderr
    row = report(out, keep_default_na=False).iloc[0]
    assert row.error_type == "download_failed" and "cap" in row.error_message
    assert not list((out / "videos").iterdir())  # no part file left either
    assert child.max_rss_mb < RSS_LIMIT_MB, f"peak RSS {child.max_rss_mb:.0f} MB"


# -- 10. bounded waits -------------------------------------------------------------------------


def test_retry_after_is_read_in_both_forms():
    now = 1_700_000_000.0
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 5 ", now) == 5.0
    assert retry_after_seconds("1.5", now) == 1.5
    assert retry_after_seconds("0", now) == 0.0
    for bad in (None, "", "-1", "soon", "inf", "nan", "1e3", "0x10"):
        assert retry_after_seconds(bad, now) is None, bad
    assert retry_after_seconds("9" * 40, now) == retry_after_seconds("9" * 400) == MAX_RETRY_AFTER
    date = formatdate(now + 30, usegmt=True)  # IMF-fixdate
    assert retry_after_seconds(date, now) == 30.0
    assert retry_after_seconds("Tuesday, 14-Nov-23 22:13:50 GMT", now) == 30.0  # RFC 850
    assert retry_after_seconds("Tue Nov 14 22:13:50 2023", now) == 30.0  # asctime
    assert retry_after_seconds(formatdate(now - 60, usegmt=True), now) == 0.0  # in the past


@pytest.mark.parametrize("form", ["http-date", "seconds"])
def test_a_retry_after_in_either_form_is_honoured(tmp_path, form):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(ONE_JOB, encoding="utf-8")
    out = tmp_path / "out"
    knobs = {"limit_first": 1, "retry_after_form": form, "retry_after_value": 2}
    with sim(**knobs) as server:
        started = time.monotonic()
        result = cli(server, manifest, out, poll_interval="0.1")
        elapsed = time.monotonic() - started
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["limited_forced"] == 1 and stats["status_429"] == 1
    assert stats["early_after_429"] == 0  # nothing came back before the server said
    assert elapsed >= 1.0


def test_a_huge_retry_after_is_capped_and_logged(manifest, tmp_path):
    out = tmp_path / "out"
    sets = ["--sim-set", "limit_first=1", "--sim-set", "retry_after_value=999999"]
    child = run_child(
        "run", str(manifest), "--out", str(out), "--simulate", "fast", *sets, timeout=60
    )
    assert child.code == 0, child.stderr
    assert child.seconds < 30  # FAST caps Retry-After at 2 s; uncapped it would sleep for days
    log = (out / "events.jsonl").read_text()
    assert "429 asked to wait 999999 s (Retry-After); waiting 2 s" in log


def test_429_forever_stops_the_run_and_keeps_every_submitted_task(manifest, tmp_path):
    out = tmp_path / "out"
    sets = ["--sim-set", "limit_after=2", "--max-in-flight", "2"]
    child = run_child(
        "run", str(manifest), "--out", str(out), "--simulate", "fast", *sets, timeout=60
    )
    assert child.code == 5, child.stderr
    line = child.stderr.strip().splitlines()[-1]
    assert line.startswith("the API at http://127.0.0.1:") and "every status call with 429" in line
    assert "Traceback" not in child.stderr
    assert child.seconds < 30  # FAST.max_throttled_s is 5 s
    rows = report(out, keep_default_na=False)
    # the first two requests pass: one or two submits (a lookup probe may take the second)
    assert set(rows.state) <= {"pending", "running"} and len(rows) == JOBS
    assert 1 <= (rows.state == "running").sum() <= 2
    assert rows[rows.state == "running"].task_id.str.len().gt(0).all()
    assert (rows.possible_duplicate.astype(str) == "False").all()


# -- the simulator's hostile knobs themselves ---------------------------------------------------


def test_the_simulator_sends_retry_after_as_an_http_date_or_seconds(sim_run):
    async def scenario(client):
        first = await client.submit()  # request 1: forced 429
        second = await client.submit()  # request 2: accepted, and early (before the date)
        stats = client.sim.stats()
        return first, second, stats

    first, second, stats = sim_run(
        scenario, limit_first=1, retry_after_form="http-date", retry_after_value=30
    )
    assert first.status == 429 and second.status == 200
    assert 29 <= retry_after_seconds(first.headers["Retry-After"]) <= 31
    assert first.headers["Retry-After"].endswith(" GMT")
    assert stats["limited_forced"] == 1 and stats["early_after_429"] == 1


def test_the_simulator_echoes_the_key_where_asked(sim_run):
    async def scenario(client):
        rejected = await client.submit(model="veo3.1-fast", duration=8)
        return rejected, client.sim.key

    rejected, key = sim_run(scenario, echo_key=("header", "error"), blocked_models=("veo3.1-fast",))
    assert rejected.status == 403 and rejected.headers["X-Request-Id"].endswith(key)
    assert key in rejected.body["error"]["message"]
    assert quote(key, safe="") in rejected.body["error"]["message"]


def test_the_simulator_refuses_unknown_hostile_settings():
    for bad in ({"echo_key": ("everywhere",)}, {"video_host": "a/b"}, {"limit_first": -1}):
        with pytest.raises(UsageError):
            SimConfig(**bad)


def test_a_gzip_bomb_is_valid_gzip_of_the_size_it_claims():
    import zlib

    from omni_batch.simulator.hostile import gzip_bomb

    length, pieces = gzip_bomb(64, tail=b'{"ok": true}')
    data = b"".join(pieces)
    assert len(data) == length < 64 * MB // 500
    inflated = zlib.decompressobj(31)
    size, tail = 0, b""
    while data:
        chunk = inflated.decompress(data, 4 * MB)
        size, tail = size + len(chunk), (tail + chunk)[-12:]
        data = inflated.unconsumed_tail
    assert size == 64 * MB + 12 and tail == b'{"ok": true}' and inflated.eof


def test_submits_refused_with_429_forever_stop_and_the_tasks_in_flight_finish(manifest, tmp_path):
    out = tmp_path / "out"
    sets = ["--sim-set", "limit_only=submits", "--sim-set", "limit_after=2"]
    args = ["run", str(manifest), "--out", str(out), "--simulate", "fast", *sets]
    child = run_child(*args, "--max-in-flight", "2", timeout=60)
    assert child.code == 5, child.stderr
    line = child.stderr.strip().splitlines()[-1]
    assert line.startswith("the API at http://127.0.0.1:") and "every submit with 429" in line
    assert child.seconds < 30
    rows = report(out, keep_default_na=False)
    assert sorted(rows.status) == ["completed"] * 2 + ["pending"] * (JOBS - 2)
