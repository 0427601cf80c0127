"""`omni-batch simulate`: run the simulator standalone until Ctrl-C and print where it listens.

Only click is imported at module level, so registering this command keeps the CLI fast.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from omni_batch.cli.errors import reports_errors


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8700, show_default=True, type=int, help="API port (0: any).")
@click.option(
    "--cdn-port",
    type=int,
    default=None,
    help="Port of the video download host  [default: API port + 1, or any when --port 0]",
)
@click.option(
    "--profile",
    default="default",
    show_default=True,
    help="default, fast, chaos, realistic, published, published-fast.",
)
@click.option(
    "--key", "keys", multiple=True, help="Accepted API key (repeatable).  [default: sk-sim-local]"
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice.")
@click.option(
    "--set", "settings", multiple=True, metavar="KNOB=VALUE", help="Override one knob (repeatable)."
)
@click.option(
    "--catalog",
    "catalog_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Model catalog overlay (YAML/JSON), as `run --catalog` takes.",
)
@click.option("--show", is_flag=True, help="Print each knob's value and what it does, then exit.")
@reports_errors
def simulate(
    host: str,
    port: int,
    cdn_port: int | None,
    profile: str,
    keys: tuple[str, ...],
    seed: int,
    settings: tuple[str, ...],
    catalog_path: str | None,
    show: bool,
) -> None:
    """Run a local ToAPIs-compatible server with seeded faults until Ctrl-C.

    Profiles: default (tasks finish in 0.6-2.3 s, no faults), fast (for tests), chaos (every
    fault), realistic (documented timings: queued 5-10 s, generation 60-300 s), published (the
    default tier's published per-account limits and X-RateLimit-* headers, documented timings),
    published-fast (the same limits, generation 20-40 s).
    """
    import asyncio
    import contextlib
    import signal

    from omni_batch.planning.catalog import load_catalog
    from omni_batch.simulator import SimConfig, parse_settings, start_simulator

    overrides = parse_settings(settings)
    if keys:
        overrides["keys"] = keys
    config = SimConfig.from_profile(profile, seed=seed, **overrides)
    if show:
        _show(profile, config)
        return
    catalog = load_catalog(catalog_path)
    if cdn_port is None:
        cdn_port = port + 1 if port else 0

    async def run() -> None:
        stop = asyncio.Event()
        # Ctrl-C and SIGTERM (a test or a supervisor ending us) both stop it cleanly
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with start_simulator(config, host, port, cdn_port, catalog) as sim:
            click.echo(f"omni-batch simulator: profile {profile}, seed {seed}")
            click.echo(f"  API:  {sim.base_url}")
            click.echo(f"  CDN:  {sim.cdn_url}")
            click.echo(f"  key:  {sim.key}")
            click.echo(f"  stats: {sim.base_url}/_sim/stats")
            click.echo("Press Ctrl-C to stop.")
            sys.stdout.flush()
            await stop.wait()
        click.echo("simulator stopped")

    asyncio.run(run())


def _show(profile: str, config: Any) -> None:
    """``knob = value  # what it does``, one line each, under the profile and its run timings."""
    from omni_batch.simulator.config import PROFILE_ABOUT, knob_help, run_policy

    policy = run_policy(profile, config)
    click.echo(f"# profile {profile}: {PROFILE_ABOUT.get(profile, '')}")
    click.echo(
        f"# run --simulate {profile} polls first after {policy.first_poll:g} s, then every "
        f"{policy.poll_interval:g} s, and gives up on a task after {policy.max_wait:g} s"
    )
    knobs = config.knobs().items()
    lines = [(f"{name} = {_text(value)}", knob_help(name)) for name, value in knobs]
    width = max(len(left) for left, _ in lines)
    for left, about in lines:
        click.echo(f"{left:<{width}}  # {about}")


def _text(value: Any) -> str:
    """A knob's value as ``--set`` takes it."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)
