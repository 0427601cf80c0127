"""How every command reports a library error: its one-line messages on stderr, its exit code.

Kept apart from cli.py (click only, no heavy imports) so the simulator's command can use it too.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from omni_batch.errors import OmniBatchError

# SIGHUP (the terminal went away) and SIGTERM are treated like Ctrl-C
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into their one-line messages on stderr and their exit code.

    A signal outside a run's own handling (while the manifest is read and planned, or while
    the summary is printed) ends the command with one line and exit 130, never a traceback:
    nothing is sent then, and the journal is closed. During a run, runner._interrupts takes
    the signals over and puts these handlers back when it ends."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = {}
        try:
            for sig in STOP_SIGNALS:
                previous[sig] = signal.signal(sig, signal.default_int_handler)
        except ValueError:  # not the main thread (a test runner): leave them alone
            pass
        try:
            return func(*args, **kwargs)
        except OmniBatchError as exc:
            for line in exc.lines():
                click.echo(line, err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        finally:
            for sig, old in previous.items():
                signal.signal(sig, signal.SIG_DFL if old is None else old)

    return wrapper
