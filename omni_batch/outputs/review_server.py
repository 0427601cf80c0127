"""`omni-batch review`: a small aiohttp server for reviewing one output folder in a browser.

The page (review_assets) fetches the jobs as JSON and posts each pick, score or note at once;
every save goes through the journal (omni_batch.outputs.review.save_reviews). Safety: binds 127.0.0.1
by default; any other address needs a token (sent once as ``?token=``, then held in an
HttpOnly cookie); without a token the Host header must name a loopback address (a DNS
rebinding page cannot reach it). Writes need a JSON body and a custom header (no cross-site
form can send one) and a same-origin Origin when one is sent. Only the videos and posters the
journal names are served, by job id, and only when their real path (symlinks resolved) lies
inside the folder: no request names a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from aiohttp import web

from omni_batch.outputs import REVIEW_HOST
from omni_batch.outputs import review_assets as assets
from omni_batch.errors import OmniBatchError, StateError, UsageError
from omni_batch.journal import KEEP, NOTE_MAX, check_review
from omni_batch.outputs.review import RunGoing, check_folder, refresh, run_going, save_reviews
from omni_batch.store.location import recorded_location

COOKIE = "omni_review"
HEADER = "X-Omni-Review"
LOOPBACK_NAMES = ("localhost",)
REFRESH_AFTER_S = 1.5  # report files rewritten this long after the last save (and at the end)
MIN_TOKEN = 12
MAX_BODY = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_FOLDER = web.AppKey("folder", Path)
_TOKEN = web.AppKey("token", str)
_STATE = web.AppKey("state", dict)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """A non-loopback bind without a token (or with a short one) is refused."""
    if token is not None and len(token) < MIN_TOKEN:
        raise UsageError(f"--token: at least {MIN_TOKEN} characters")
    if not is_loopback(host) and not token:
        raise UsageError(
            f"--host {host}: serving beyond this machine needs --token T (anyone who can reach "
            "the port could change the reviews)"
        )


def _value(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.timestamp()
    if hasattr(value, "item"):
        return value.item()
    return value


def _jobs(folder: Path) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
    """The page's data, and job id → video file / poster file for the files it may fetch."""
    from omni_batch.outputs.gallery import _posters, _videos
    from omni_batch.outputs.report import build_report
    from omni_batch.store.local import LocalStore

    frame = build_report(folder)
    store = LocalStore(folder)  # the server sends the folder's own files
    videos = {job: str(store.local_path(job)) for job in _videos(store, frame)}
    posters = {job: store.poster_path(job) for job in _posters(store, videos, extract=False)}
    var_cols = [c for c in frame.columns if c.startswith("var_")]
    tag_cols = [c for c in frame.columns if c.startswith("tag_")]
    keep = [
        "job_id", "prompt_id", "prompt", "model", "aspect_ratio", "duration", "resolution",
        "repeat", "status", "state", "error_type", "error_message", "http_status", "latency_s",
        "verified", "verify_message", "pick", "score", "note", "reviewed_at",
    ]  # fmt: skip
    jobs = []
    for row in frame[keep + var_cols + tag_cols].to_dict("records"):
        job = {k: _value(row[k]) for k in keep}
        job["vars"] = {c[4:]: _value(row[c]) or "" for c in var_cols}
        job["tags"] = {c[4:]: _value(row[c]) or "" for c in tag_cols}
        job["video"] = job["job_id"] in videos
        job["poster"] = job["job_id"] in posters
        jobs.append(job)
    data = {
        "title": folder.resolve().name,
        "vars": [c[4:] for c in var_cols],
        "tags": [c[4:] for c in tag_cols],
        "jobs": jobs,
        "read_only": run_going(folder),
        "note_max": NOTE_MAX,
    }
    return data, videos, posters


def _inside(folder: Path, path: str | None) -> str | None:
    """``path`` if its real path (symlinks resolved) is a file inside the folder's real path."""
    if not path:
        return None
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root or real == root or not os.path.isfile(real):
        return None
    return real


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _guard(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
    token = request.app[_TOKEN]
    if token:
        given = request.cookies.get(COOKIE) or ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        query = request.query.get("token")
        if (
            query is not None
            and request.method == "GET"
            and request.path == "/"
            and hmac.compare_digest(query.encode(), token.encode())
        ):
            response = web.HTTPFound("/")
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            _secure(response)
            raise response
        if not hmac.compare_digest(given.encode(), token.encode()):
            return _secure(web.Response(status=401, text="token needed: open /?token=YOUR_TOKEN"))
    elif not is_loopback(request.url.host or ""):
        # loopback without a token: the Host must be a loopback one (DNS rebinding)
        return _secure(web.Response(status=403, text="forbidden host"))
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("Origin")
        if request.headers.get(HEADER) != "1" or request.content_type != "application/json":
            return _secure(_json_error(403, f"writes need a JSON body and {HEADER}: 1"))
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return _secure(_json_error(403, "cross-origin write refused"))
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _secure(exc)
        raise
    return _secure(response)


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


async def _page(request: web.Request) -> web.Response:
    return web.Response(text=assets.PAGE, content_type="text/html", charset="utf-8")


async def _script(request: web.Request) -> web.Response:
    return web.Response(text=assets.SCRIPT, content_type="text/javascript", charset="utf-8")


async def _style(request: web.Request) -> web.Response:
    return web.Response(text=assets.CSS, content_type="text/css", charset="utf-8")


async def _data(request: web.Request) -> web.Response:
    folder, state = request.app[_FOLDER], request.app[_STATE]
    try:
        data, videos, posters = await asyncio.to_thread(_jobs, folder)
    except OmniBatchError as exc:
        return _json_error(500, " ".join(exc.lines()))
    state["videos"], state["posters"] = videos, posters
    return web.json_response(data, dumps=lambda o: json.dumps(o, ensure_ascii=False))


async def _file(request: web.Request, kind: str) -> web.StreamResponse:
    folder, state = request.app[_FOLDER], request.app[_STATE]
    job = request.match_info["job"]
    if job not in state[kind]:  # not yet listed: the page's data may be older than the file
        _, state["videos"], state["posters"] = await asyncio.to_thread(_jobs, folder)
    path = _inside(folder, state[kind].get(job))
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path)


async def _video(request: web.Request) -> web.StreamResponse:
    return await _file(request, "videos")


async def _poster(request: web.Request) -> web.StreamResponse:
    return await _file(request, "posters")


async def _save(request: web.Request) -> web.Response:
    folder, state = request.app[_FOLDER], request.app[_STATE]
    try:
        body = json.loads(await request.read())  # client_max_size: over MAX_BODY is a 413
    except ValueError:
        return _json_error(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _json_error(400, "the body must be a JSON object")
    ids = body.get("job_ids")
    if not (isinstance(ids, list) and ids and all(isinstance(j, str) for j in ids)):
        return _json_error(400, "job_ids: a list of job ids")
    fields = {k: body.get(k, KEEP) for k in ("pick", "score", "note")}
    if all(v is KEEP for v in fields.values()):
        return _json_error(400, "nothing to save: give pick, score or note")
    wrong = check_review(**fields)
    if wrong:
        return _json_error(400, wrong[0])
    try:
        async with state["writing"]:  # never alongside this server's own report refresh
            saved = await asyncio.to_thread(save_reviews, folder, ids, **fields)
    except RunGoing as exc:
        return _json_error(409, str(exc))
    except UsageError as exc:
        return _json_error(404 if "no job" in str(exc) else 400, str(exc))
    except StateError as exc:
        return _json_error(409, str(exc))
    state["dirty"] = time.monotonic()
    return web.json_response({"reviews": [r.to_dict() for r in saved]})


async def _refresher(app: web.Application) -> AsyncIterator[None]:
    """Report files rewritten a moment after the last save, and once more at the end."""
    state = app[_STATE]

    async def loop() -> None:
        while True:
            await asyncio.sleep(0.5)
            since = state.get("dirty")
            if since is not None and time.monotonic() - since >= REFRESH_AFTER_S:
                state["dirty"] = None
                try:
                    async with state["writing"]:
                        await asyncio.to_thread(refresh, app[_FOLDER])
                except OmniBatchError as exc:
                    state["refresh_error"] = " ".join(exc.lines())

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if state.get("dirty") is not None:
        async with state["writing"]:
            await asyncio.to_thread(refresh, app[_FOLDER])


def make_app(folder: str | Path, token: str | None = None) -> web.Application:
    folder = check_folder(folder)
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[_FOLDER] = folder
    app[_TOKEN] = token or ""
    app[_STATE] = {"videos": {}, "posters": {}, "dirty": None, "writing": asyncio.Lock()}
    app.router.add_get("/", _page)
    app.router.add_get("/app.js", _script)
    app.router.add_get("/app.css", _style)
    app.router.add_get("/api/jobs", _data)
    app.router.add_post("/api/review", _save)
    app.router.add_get("/video/{job}", _video)
    app.router.add_get("/poster/{job}", _poster)
    app.cleanup_ctx.append(_refresher)
    return app


@asynccontextmanager
async def serving(
    folder: str | Path, host: str = REVIEW_HOST, port: int = 0, token: str | None = None
) -> AsyncIterator[str]:
    """Serve ``folder`` until the block ends; yields the base URL."""
    check_bind(host, token)
    if where := recorded_location(folder):  # the server sends the folder's own files only
        raise UsageError(
            f"{folder}: its videos are in {where}, and review serves an output folder's own "
            "videos: open its gallery.html, or pick and score with `omni-batch pick`"
        )
    app = make_app(folder, token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise UsageError(f"--port {port}: cannot listen on {host}: {exc.strerror}") from None
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        yield f"http://{shown}:{bound[1]}/"
    finally:
        await runner.cleanup()


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def serve(folder: str | Path, host: str, port: int, token: str | None, say: Callable) -> None:
    """Run the server until Ctrl-C / SIGTERM; ``say`` prints a line."""

    async def main() -> None:
        # a signal ends the wait below, so the server stops between requests (a signal raised
        # as KeyboardInterrupt inside a request handler printed a traceback on Python 3.13)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        async with serving(folder, host, port, token) as url:
            say(f"review: {url}" + ("?token=<your token>" if token else ""))
            if run_going(Path(folder)):
                say("a run is using this folder: the page is read-only until it ends")
            say("Ctrl-C stops; report.csv, report.parquet and gallery.html carry the reviews")
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    say("review server stopped")
