"""The simulator's download host (a separate listener, like a CDN): serves each completed
task's MP4 at an expiring link and counts downloads, expired links and leaked auth headers.
"""

from __future__ import annotations

import asyncio
import random

from aiohttp import web

from omni_batch.simulator.hostile import encode_video, gzip_bomb, send_stream
from omni_batch.simulator.state import SimState, Task


def video_url(cdn_url: str, task: Task, expiry: float | None = None) -> str:
    """``{cdn}/videos/{task_id}.mp4?exp={expiry in unix ms}`` (default: the task's expiry);
    ``download`` is its reader."""
    exp = task.expiry if expiry is None else expiry
    return f"{cdn_url}/videos/{task.id}.mp4?exp={int(exp * 1000)}"


class CdnHost:
    """The download endpoint; it reads the simulator's state and counts into its counters."""

    def __init__(self, state: SimState):
        self.state = state
        self.config = state.config
        self._rng = random.Random(f"omni-sim-cdn/{state.config.seed}")
        self.redirect_to: str | None = None  # cdn_redirect: answer 302 to this root

    def app(self) -> web.Application:
        app = web.Application()
        # a HEAD is not a download: it must neither render a clip nor count
        app.router.add_get("/videos/{task_id}.mp4", self.download, allow_head=False)
        return app

    async def download(self, request: web.Request) -> web.StreamResponse:
        cfg, state = self.config, self.state
        counts = state.counts
        counts["downloads"] += 1
        if "Authorization" in request.headers:
            counts["downloads_with_auth"] += 1
        if self.redirect_to is not None and "hop" not in request.query:
            counts["downloads_redirected"] += 1
            return web.Response(
                status=302, headers={"Location": f"{self.redirect_to}{request.path_qs}&hop=1"}
            )
        task = state.tasks.get(request.match_info["task_id"])
        now = state.clock()
        if task is None or not task.completed(now):
            return web.Response(status=404, text="no such video\n")
        try:
            exp = int(request.query["exp"])
        except (KeyError, ValueError):
            return web.Response(status=403, text="missing or malformed link signature\n")
        # Any exp a poll handed out is <= the task's current expiry; a later one was edited.
        if exp > int(task.expiry * 1000):
            return web.Response(status=403, text="link signature does not match\n")
        if now * 1000 >= exp:
            counts["downloads_expired"] += 1
            return web.Response(status=403, text="link expired\n")
        if cfg.video_bomb_mb:  # a "video" of zeros that inflates past any sane cap
            length, pieces = await asyncio.to_thread(gzip_bomb, cfg.video_bomb_mb, b"", b"\0")
            counts["downloads_ok"] += 1
            headers = {"Content-Type": "video/mp4", "Content-Encoding": "gzip"}
            return await send_stream(request, headers, length, pieces)
        data = await asyncio.to_thread(_clip_bytes, task, cfg.clip_fps)
        headers = {"Content-Type": "video/mp4"}
        if cfg.video_encoding != "identity":
            data = encode_video(data, cfg.video_encoding)
            headers["Content-Encoding"] = cfg.video_encoding
        truncate = self._rng.random() < cfg.p_truncate
        counts["downloads_ok"] += 1  # answered 200, truncated or not
        if not truncate and (cfg.download_rate is None or request.method == "HEAD"):
            counts["download_bytes"] += len(data)
            return web.Response(body=data, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        end = len(data) // 2 if truncate else len(data)
        rate = cfg.download_rate
        chunk = max(1024, int(rate / 20)) if rate else 65536
        for start in range(0, end, chunk):
            piece = data[start : min(end, start + chunk)]
            try:
                await response.write(piece)
            except (ConnectionResetError, ConnectionError):
                return response  # the client went away mid-download: its business, not ours
            counts["download_bytes"] += len(piece)
            if rate:
                await asyncio.sleep(len(piece) / rate)
        if truncate:
            counts["downloads_truncated"] += 1
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response


def _clip_bytes(task: Task, fps: int) -> bytes:
    # Imported here, in the worker thread, so av/numpy load only when a video is first fetched.
    from omni_batch.simulator import clips

    return clips.get_clip(task.ratio, task.duration, task.resolution, fps)
