"""The embedded ToAPIs stand-in: an aiohttp server with seeded faults, used by the quick start
and by every end-to-end test. Public names load lazily so `simulate --help` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omni_batch.simulator.config import (
        DEFAULT_KEY,
        KNOBS,
        PROFILES,
        SimConfig,
        parse_settings,
    )
    from omni_batch.simulator.server import Simulator, serve_in_thread, start_simulator

_HOMES = {
    "DEFAULT_KEY": "config",
    "KNOBS": "config",
    "PROFILES": "config",
    "SimConfig": "config",
    "parse_settings": "config",
    "Simulator": "server",
    "serve_in_thread": "server",
    "start_simulator": "server",
}

__all__ = [
    "DEFAULT_KEY",
    "KNOBS",
    "PROFILES",
    "SimConfig",
    "Simulator",
    "parse_settings",
    "serve_in_thread",
    "start_simulator",
]


def __getattr__(name: str) -> Any:
    # PEP 562: importing the package (e.g. for the `simulate` command) must not pull in aiohttp.
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"omni_batch.simulator.{home}"), name)
    globals()[name] = value
    return value
