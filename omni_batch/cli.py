"""The `omni-batch` command: parse options, call the library, print, map errors to exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from omni_batch import __version__
from omni_batch.errors import OmniBatchError
from omni_batch.simulator.command import simulate


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


@main.command()
@click.argument("manifest", type=click.Path(dir_okay=True, path_type=str))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table: a summary and the first jobs; json/csv: every job.",
)
@click.option(
    "--catalog",
    type=click.Path(path_type=str),
    help="A model catalog file that adds or overrides models.",
)
@reports_errors
def plan(manifest: str, fmt: str, catalog: str | None) -> None:
    """Validate MANIFEST and show the jobs it expands to. No network; exit 2 when invalid."""
    from omni_batch.plan import plan as make_plan

    result = make_plan(manifest, catalog)
    out = sys.stdout
    if fmt == "json":
        result.write_json(out)
    elif fmt == "csv":
        result.write_csv(out)
    else:
        from rich.console import Console

        from omni_batch.display import plan_summary

        console = Console()
        console.print(plan_summary(result, console.width))


main.add_command(simulate)
