"""The `omni-batch` command: parse options, call the library, print, map errors to exit codes."""

from __future__ import annotations

import contextlib
import sys

import click

from omni_batch._version import __version__
from omni_batch.cli.errors import reports_errors
from omni_batch.cli.simulate import simulate
from omni_batch.errors import OmniBatchError, UsageError
from omni_batch.outputs import PROMOTE_REPEATS, REVIEW_HOST, REVIEW_PORT
from omni_batch.planning.manifest import DEFAULT_MAX_JOBS
from omni_batch.running.budgets import TIERS
from omni_batch.running.options import FAST, MB, RANGES, Policy, RunOptions

# every default of a run is written once, in RunOptions and Policy; the flags show them
DEFAULTS = RunOptions()
TIMINGS = Policy()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="omni-batch")
def main() -> None:
    """Run batches of text-to-video generations against the ToAPIs video task API."""


def _range(name: str) -> click.ParamType:
    """The click type of a numeric run flag, from RunOptions' one table of ranges."""
    low, open_ = RANGES[name]
    if name in ("max_in_flight", "limit", "max_jobs"):
        return click.IntRange(min=int(low), min_open=open_)
    return click.FloatRange(min=low, min_open=open_)


MAX_JOBS_OPTION = click.option(
    "--max-jobs",
    type=_range("max_jobs"),
    metavar="N",
    help="Refuse a manifest that expands to more than N jobs, counted before any is made "
    f"[default: its budget.max_jobs, else {DEFAULT_MAX_JOBS:,}].",
)


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
@MAX_JOBS_OPTION
@reports_errors
def plan(manifest: str, fmt: str, catalog: str | None, max_jobs: int | None) -> None:
    """Validate MANIFEST and show the jobs it expands to. No network; exit 2 when invalid."""
    from omni_batch.planning.plan import plan as make_plan

    result = make_plan(manifest, catalog, max_jobs=max_jobs)
    out = sys.stdout
    if fmt != "table":  # the table shows them; stdout stays the jobs alone
        for note in result.manifest.notes:
            click.echo(str(note), err=True)
    if fmt == "json":
        result.write_json(out)
    elif fmt == "csv":
        result.write_csv(out)
    else:
        from omni_batch.cli.views import plan_summary

        console = _console()
        console.print(plan_summary(result, console.width))


# Output that is not a terminal (a pipe, a file, CI, docker logs) has no width to fit: rich
# would assume 80 columns and cut job ids and table cells with "…". It gets whole values.
UNBOUNDED_WIDTH = 10_000


def _console(err: bool = False):
    import os

    from rich.console import Console

    console = Console(stderr=err)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=err, width=UNBOUNDED_WIDTH)
    return console


def _value_width(console) -> int | None:
    """Summary values are cut to fit a terminal; elsewhere they stay whole."""
    return 32 if console.is_terminal else None


def _timings_help(name: str) -> str:
    """The documented default of a Policy field, and the simulator profiles' one."""
    real, fast = getattr(TIMINGS, name), getattr(FAST, name)
    return f"{real:g}; {fast:g} with --simulate default/fast/chaos"


def _manifest_and_profile(manifest: str | None, profile: str | None) -> tuple[str, str | None]:
    """`run --simulate m.yaml`: the optional profile took the manifest; give it back."""
    from omni_batch.simulator.config import PROFILES

    if manifest is None:
        if profile is not None and profile not in PROFILES and _looks_like_a_path(profile):
            return profile, "default"
        raise click.UsageError("Missing argument 'MANIFEST'.")
    return manifest, profile


def _looks_like_a_path(text: str) -> bool:
    from pathlib import Path

    path = Path(text)
    return (
        path.exists()
        or path.suffix.lower() in (".yaml", ".yml", ".csv", ".tsv", ".txt", ".json")
        or "/" in text
        or "\\" in text
    )


@main.command()
@click.argument("manifest", required=False, metavar="MANIFEST", type=click.Path(path_type=str))
@click.option(
    "--out",
    type=click.Path(path_type=str),
    help="Output folder [default: outputs/<manifest name>/]. The same folder resumes.",
)
@click.option(
    "--store",
    metavar="s3://BUCKET/PREFIX",
    help="Put the videos and posters in an S3-compatible bucket (endpoint and credentials "
    "from the AWS_* environment) instead of the output folder, which keeps the journal and "
    "the reports [default: the store the folder's earlier runs used, else its videos/].",
)
@click.option(
    "--simulate",
    "simulate_profile",
    is_flag=False,
    flag_value="default",
    default=None,
    metavar="[PROFILE]",
    help="Run against the embedded simulator: default, fast, chaos or realistic "
    "[default: default]. Its tasks are kept in the output folder, so a rerun resumes. "
    "Knobs: `omni-batch simulate --show`.",
)
@click.option(
    "--sim-set",
    "sim_set",
    multiple=True,
    metavar="KNOB=VALUE",
    help="Simulator knob for --simulate (repeatable).",
)
@click.option(
    "--base-url",
    help="API root [default: $TOAPIS_BASE_URL, else https://toapis.com]; /v1 optional.",
)
@click.option(
    "--keys-file",
    type=click.Path(path_type=str),
    help="API keys of several accounts, one `KEY` or `ACCOUNT=KEY` a line (# comments); "
    "keys of one ACCOUNT share its rate limits [default: $TOAPIS_API_KEYS, comma-separated, "
    "else $TOAPIS_API_KEY].",
)
@click.option(
    "--tier",
    type=click.Choice(list(TIERS)),
    default=DEFAULTS.tier,
    show_default=True,
    help="The account's published rate limits: submits "
    + "/".join(f"{s:.3g}" for s, _ in TIERS.values())
    + " per s, status calls "
    + "/".join(f"{q:.3g}" for _, q in TIERS.values())
    + " per s (the API's X-RateLimit-* headers, when sent, correct them).",
)
@click.option(
    "--submit-rate",
    type=_range("submit_rate"),
    help="Submits per second for the account [default: the tier's].",
)
@click.option(
    "--query-rate",
    type=_range("query_rate"),
    help="Status calls and lookups per second for the account [default: the tier's].",
)
@click.option(
    "--rate",
    type=_range("rate"),
    help="One budget of R requests/s shared by every API call, for a gateway with a single "
    "limit (replaces the tier's unless --submit-rate/--query-rate are given too).",
)
@click.option(
    "--max-in-flight",
    type=_range("max_in_flight"),
    default=DEFAULTS.max_in_flight,
    show_default=True,
    help="Tasks submitted and not yet finished, at most (lowered by itself when the API "
    "refuses more tasks at once).",
)
@click.option(
    "--poll-interval",
    type=_range("poll_interval"),
    help="Poll every this many seconds, a fixed cadence; without it polls are planned from "
    "each task's progress, this cadence only for a task that reports none [default: "
    + _timings_help("poll_interval")
    + "].",
)
@click.option(
    "--max-wait",
    type=_range("max_wait"),
    help="Give up on a task after this many seconds (its id is kept) [default: "
    + _timings_help("max_wait")
    + ", raised to twice the longest task --sim-set knobs allow].",
)
@click.option(
    "--lookup-grace",
    type=_range("lookup_grace"),
    help="Seconds a client_business_id lookup may lag behind a create: its 404 after an "
    "ambiguous submit is believed only when asked again this long after the POST "
    "[default: " + _timings_help("lookup_grace") + "].",
)
@click.option(
    "--max-video-mb",
    type=_range("max_video_mb"),
    default=TIMINGS.max_download_bytes // MB,
    show_default=True,
    help="Refuse a video larger than this (a failed job, not a full disk).",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Send again, as new billed tasks, failed jobs whose generation failed, whose task the "
    "API no longer knows (404), or that never got a task. Other failed jobs with a task id are "
    "polled again by every plain run.",
)
@click.option(
    "--reconcile/--no-reconcile",
    default=None,
    help="Look ambiguous submits up by client_business_id [default: on with --simulate].",
)
@click.option(
    "--catalog",
    type=click.Path(path_type=str),
    help="A model catalog file that adds or overrides models.",
)
@click.option(
    "--verify/--no-verify",
    default=DEFAULTS.verify,
    show_default=True,
    help="Decode every video, check its ratio and duration, and make its gallery poster.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--no-progress", is_flag=True, help="Plain summary lines instead of the live display."
)
@click.option(
    "--json",
    "json_out",
    is_flag=True,
    help="Print one JSON object on stdout at the end (counts, exit reason and code, folder, "
    "report paths, spend) and nothing else there; the rest goes to stderr.",
)
@click.option(
    "--limit",
    type=_range("limit"),
    metavar="N",
    help="Submit at most N new jobs this run (jobs resumed from an earlier run are always "
    "finished); the rest stay pending for the next run in the same folder.",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="NAME=VALUE",
    help="Run only the jobs whose template variable, tag, aspect_ratio or duration NAME is "
    "VALUE (repeatable: every NAME must match, one NAME twice: either value); the rest stay "
    "pending for the next run in the same folder.",
)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="When the balance cannot pay for every job to submit, run the jobs it pays for (in "
    "manifest order) instead of refusing; the rest stay pending.",
)
@click.option(
    "--no-preflight",
    is_flag=True,
    help="Skip the balance and model-list checks before the first submit.",
)
@click.option(
    "--journal",
    metavar="postgresql://USER@HOST:PORT/DB",
    help="Share the run through this PostgreSQL database: start the same command on any "
    "number of machines and they share its jobs (each submitted once), the account's rate "
    "and --max-in-flight. Needs --store s3://...; see README 'Running on several machines'.",
)
@click.option(
    "--run",
    "run_name",
    metavar="NAME",
    help="The shared run's name in the --journal database [default: the manifest's name].",
)
@click.option(
    "--runner",
    metavar="ID",
    help="This runner's id in a shared run [default: HOST-PID].",
)
@click.option(
    "--dead-after",
    type=_range("dead_after"),
    default=RunOptions.dead_after,
    show_default=True,
    metavar="SECONDS",
    help="A shared run's runner silent this long is taken for dead; the others take its jobs up.",
)
@MAX_JOBS_OPTION
@reports_errors
def run(
    manifest: str | None,
    simulate_profile: str | None,
    json_out: bool,
    yes: bool,
    no_progress: bool,
    no_preflight: bool,
    **flags,
) -> None:
    """Submit every job of MANIFEST, poll, download the videos and write the report.

    Exit 0 when every job completed, 1 when some failed, 2 on bad input, 3 when the API key is
    refused, 4 when the money ran out (a 402, a balance too short for the jobs, or
    budget.max_cost reached), 130 when interrupted (run again to resume).
    """
    manifest, simulate_profile = _manifest_and_profile(manifest, simulate_profile)
    options = RunOptions(simulate=simulate_profile, preflight=not no_preflight, **flags)
    where: dict = {"folder": None}  # the output folder, once the manifest has named it
    try:
        report = _run(where, manifest, options, json_out, yes, no_progress)
    except OmniBatchError as exc:
        if json_out:
            _print_json(where["folder"], None, exc, simulate_profile, sliced=options.sliced)
        raise
    if json_out:
        _print_json(
            where["folder"],
            report,
            None,
            simulate_profile,
            declined=report is None,
            sliced=options.sliced,
        )
    from omni_batch.cli.progress import unfinished

    if report is not None and unfinished(report, options.sliced):
        sys.exit(1)


def _polling_line(policy: Policy) -> str:
    polling = (
        f"planned from each task's progress and the generation times seen, at least "
        f"{policy.poll_min_interval:g} s apart (every {policy.poll_interval:g} s for a task "
        "that reports no progress; --poll-interval for a fixed cadence)"
        if policy.plan_polls
        else f"first after {policy.first_poll:g} s, then every {policy.poll_interval:g} s"
    )
    return (
        f"polling: {polling}; a task still unfinished after {policy.max_wait:g} s is given up, "
        "its id kept (--max-wait)"
    )


def _run(
    where: dict, manifest: str, options: RunOptions, json_out: bool, yes: bool, no_progress: bool
):
    """The run itself; returns the report's digest, or None when the user declined."""
    import asyncio

    from omni_batch.batch import run_folder_async
    from omni_batch.cli.progress import Progress, final_table
    from omni_batch.cli.views import plan_summary
    from omni_batch.preparing import prepare

    prepared = prepare(manifest, options, on_folder=lambda f: where.update(folder=f))
    result, folder, sliced = prepared.plan, prepared.folder, prepared.slice
    console = _console(err=json_out)  # with --json, stdout holds the JSON object alone
    err = _console(err=True)
    console.print(plan_summary(result, console.width, first=5))
    if sliced is not None:
        console.print(sliced.describe(prepared.only), highlight=False, soft_wrap=True)
    console.print(_polling_line(prepared.policy), style="dim", highlight=False)
    if options.simulate is None and not yes and sys.stdin.isatty():
        s = result.summary
        what = f"{s.jobs:,} jobs ({s.video_seconds:,} s of video)"
        if sliced is not None:
            what = f"at most {sliced.to_submit:,} of the manifest's {s.jobs:,} jobs"
        if not click.confirm(
            f"Submit {what} to the API, output in {folder}?",
            err=json_out,
        ):
            click.echo("nothing submitted", err=True)
            return None
    display = Progress(err, live=err.is_terminal and not no_progress)

    async def main():
        def started(stats, engine):
            display.start(stats, engine.rate_line)

        try:
            # the digest, never the table: memory stays flat for any number of jobs
            return await run_folder_async(prepared, on_start=started)
        finally:
            await display.stop()

    try:
        report = asyncio.run(main())
    except OmniBatchError as exc:
        _finish(folder, err)
        raise exc from None
    from omni_batch.outputs.summary import summary_renderable

    console.print(final_table(report))
    tables = report.summary_tables()
    console.print(summary_renderable(tables, value_width=_value_width(console)))
    from omni_batch.cli.progress import LEFT_PENDING, account_line, left_pending

    if line := account_line(report):
        console.print(line, highlight=False, soft_wrap=True)

    if left := left_pending(report, options.sliced):
        console.print(LEFT_PENDING.format(n=left), highlight=False)
    console.print(
        f"gallery: {folder / 'gallery.html'}  report: {folder / 'report.csv'}  "
        f"videos: {prepared.videos}",
        highlight=False,
        soft_wrap=True,
    )
    return report


def _finish(folder, console) -> None:
    """After an interrupted or stopped run: the summary of what the journal holds."""
    from omni_batch.cli.progress import final_table
    from omni_batch.outputs.report import digest_report

    with contextlib.suppress(OmniBatchError):  # no journal yet: nothing to summarise
        console.print(final_table(digest_report(folder)))


def _print_json(
    folder, report, error, profile, declined: bool = False, sliced: bool = False
) -> None:
    """`run --json`: how the run ended and what it left, one object on stdout."""
    import json

    from omni_batch.cli.progress import run_summary

    summary = run_summary(
        folder, report, error, simulated=profile, declined=declined, sliced=sliced
    )
    click.echo(json.dumps(summary, ensure_ascii=False))


_RUN_HELP = "The run of a shared journal (FOLDER a postgresql:// URL) [default: default]."


@main.command()
@click.argument("folder", type=click.Path(path_type=str))
@click.option("--run", "run_name", metavar="NAME", help=_RUN_HELP)
@reports_errors
def status(folder: str, run_name: str | None) -> None:
    """Jobs per state in an output FOLDER (works while a run is going), or in run NAME of a
    shared journal: FOLDER a postgresql://USER@HOST:PORT/DB URL."""
    from omni_batch.results import status as jobs_per_state

    # retired: no longer in the manifest, kept in the report
    found = jobs_per_state(folder, run=run_name)
    for state, n in found.items():
        click.echo(f"{state:<12}{n:>8}")
    click.echo(f"{'total':<12}{sum(found.values()):>8}")


@main.command()
@click.argument("folder", type=click.Path(path_type=str))
@click.option("--run", "run_name", metavar="NAME", help=_RUN_HELP)
@click.option(
    "--out",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=str),
    help="Where to write the report of a shared journal's run (FOLDER a postgresql:// URL).",
)
@reports_errors
def report(folder: str, run_name: str | None, out: str | None) -> None:
    """Rebuild report.csv, report.parquet, failures.csv and gallery.html of an output FOLDER;
    or write them for run NAME of a shared journal (FOLDER a postgresql://USER@HOST:PORT/DB
    URL) into --out DIR, the gallery linking the videos in the run's S3 store."""
    from pathlib import Path

    from omni_batch.cli.progress import final_table
    from omni_batch.outputs.gallery import GALLERY
    from omni_batch.outputs.summary import summary_renderable
    from omni_batch.results import write_reports

    # a slice at a time: never the whole table
    digest = write_reports(folder, run=run_name, out=out)
    console = _console()
    console.print(final_table(digest))
    tables = digest.summary_tables()
    console.print(summary_renderable(tables, value_width=_value_width(console)))
    for note in digest.notes:
        click.echo(note)
    where = Path(folder if out is None else out)
    click.echo(f"wrote {where / 'report.csv'}, report.parquet, failures.csv, {GALLERY}")


main.add_command(simulate)


@main.command()
@click.argument("folder", type=click.Path(path_type=str))
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@click.option("--reject", is_flag=True, help="Mark them rejected instead of picked.")
@click.option("--clear", is_flag=True, help="Remove their pick, score and note.")
@click.option("--score", type=click.IntRange(1, 5), metavar="N", help="Score them 1 to 5.")
@click.option("--note", metavar="TEXT", help="Their note (replaces any earlier one).")
@reports_errors
def pick(
    folder: str,
    job_ids: tuple[str, ...],
    reject: bool,
    clear: bool,
    score: int | None,
    note: str | None,
) -> None:
    """Pick (or --reject) jobs of an output FOLDER, as the review page does; saved in its
    journal at once, and report.csv / report.parquet / gallery.html rewritten with them."""
    from omni_batch.journal import KEEP
    from omni_batch.outputs.review import save_reviews

    if clear and (reject or score is not None or note is not None):
        raise UsageError("--clear removes the whole review; give it alone")
    if clear:
        saved = save_reviews(folder, job_ids, pick=None, score=None, note="", refresh=True)
    else:
        saved = save_reviews(
            folder,
            job_ids,
            pick="rejected" if reject else "picked",
            score=KEEP if score is None else score,
            note=KEEP if note is None else note,
            refresh=True,
        )
    for review in saved:
        parts = [review.pick or "no pick"]
        if review.score is not None:
            parts.append(f"score {review.score}")
        if review.note:
            parts.append(f"note {review.note!r}")
        click.echo(f"{review.job_id}: {', '.join(parts)}")


@main.command()
@click.argument("folder", type=click.Path(path_type=str))
@click.option("--picked", is_flag=True, help="The winners are the picked jobs.")
@click.option(
    "--min-score",
    type=click.IntRange(1, 5),
    metavar="N",
    help="The winners are the jobs scored N or more (rejected ones left out).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change a field of every winner: model, aspect_ratio, duration or resolution "
    "(repeatable), e.g. --set duration=10.",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 1000),
    default=PROMOTE_REPEATS,
    show_default=True,
    help="Takes of each winner in the next run.",
)
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="The manifest to write (YAML).",
)
@reports_errors
def promote(
    folder: str,
    picked: bool,
    min_score: int | None,
    settings: tuple[str, ...],
    repeats: int,
    out: str,
) -> None:
    """Write the winners of a reviewed output FOLDER as the next round's manifest: their
    prompts, template variable values (as tags) and settings, with where they came from."""
    from omni_batch.outputs.promote import parse_overrides
    from omni_batch.outputs.promote import promote as make_manifest

    done = make_manifest(
        folder,
        out,
        picked=picked,
        min_score=min_score,
        overrides=parse_overrides(settings),
        repeats=repeats,
    )
    click.echo(
        f"wrote {done.path}: {len(done.winners)} winners as {done.entries} entries, "
        f"{done.jobs} jobs; next: omni-batch run {done.path}"
    )


@main.command()
@click.argument("folder", type=click.Path(path_type=str))
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=REVIEW_PORT,
    show_default=True,
    help="0: any free port.",
)
@click.option(
    "--host",
    default=REVIEW_HOST,
    show_default=True,
    help="Address to listen on; anything but loopback needs --token.",
)
@click.option(
    "--token",
    envvar="OMNI_BATCH_REVIEW_TOKEN",
    help="A secret (12+ characters) every request must carry: open /?token=T once "
    "[env OMNI_BATCH_REVIEW_TOKEN].",
)
@reports_errors
def review(folder: str, port: int, host: str, token: str | None) -> None:
    """Review an output FOLDER in the browser: pick, reject, score 1-5 and note each take,
    pivot the matrix by any variable, compare takes side by side. Every change is saved in the
    folder's journal at once; the report files carry them. Read-only while a run uses FOLDER."""
    from omni_batch.outputs.review import check_folder
    from omni_batch.outputs.review_server import check_bind, serve

    check_bind(host, token)
    check_folder(folder)
    serve(folder, host, port, token, lambda line: click.echo(line))
