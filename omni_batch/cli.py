"""The `omni-batch` command: parses options, calls the library, prints, maps errors to exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from omni_batch import __version__
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omni-batch")
def main() -> None:
    """Run batches of text-to-video generations against the ToAPIs video task API."""
