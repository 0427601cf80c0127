"""How every command reports a library error: its one-line messages on stderr, its exit code.

Kept apart from cli.py (click only, no heavy imports) so the simulator's command can use it too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from omni_batch.errors import OmniBatchError


def reports_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into their one-line messages on stderr and their exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OmniBatchError as exc:
            for line in exc.lines():
                click.echo(line, err=True)
            sys.exit(exc.exit_code)

    return wrapper
