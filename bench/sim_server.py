"""The simulator in its own process, so a benchmark's CPU and memory are the runner's alone.

    .venv/bin/python bench/sim_server.py [--profile fast] [--set KNOB=VALUE ...]

Prints one JSON line (base_url, cdn_url, key, control_url) once it listens, then serves until
SIGTERM/SIGINT. The control listener answers GET /tasks (every task's created/started/done
times, so a benchmark can tell when a task really finished) and GET /usage (this process's
CPU seconds and peak RSS). The clip for the benchmark manifests is rendered before the line is
printed, so no measured run pays for the first encode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys

from _support import peak_rss_mb
from aiohttp import web

from omni_batch.simulator import SimConfig, parse_settings, start_simulator
from omni_batch.simulator.clips import get_clip


def _usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_rss_mb()}


async def serve(config: SimConfig) -> None:
    async with start_simulator(config) as sim:

        async def tasks(request: web.Request) -> web.Response:
            out = {
                t.id: {
                    "created": t.created,
                    "started": t.started,
                    "done": t.done,
                    "failed": t.failed,
                    "polls": t.polls,
                }
                for t in sim.state.tasks.values()
            }
            return web.json_response(out)

        async def usage(request: web.Request) -> web.Response:
            return web.json_response(_usage())

        control = web.Application()
        control.router.add_get("/tasks", tasks)
        control.router.add_get("/usage", usage)
        runner = web.AppRunner(control, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await asyncio.to_thread(get_clip, "16:9", 6, "720P", config.clip_fps)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        info = {
            "base_url": sim.base_url,
            "cdn_url": sim.cdn_url,
            "key": sim.key,
            "control_url": f"http://127.0.0.1:{port}",
        }
        sys.stdout.write(json.dumps(info) + "\n")
        sys.stdout.flush()
        await stop.wait()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--set", dest="settings", action="append", default=[])
    args = parser.parse_args()
    config = SimConfig.from_profile(args.profile, **parse_settings(args.settings))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
