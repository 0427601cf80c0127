"""Everything a run checks and works out before it sends anything: the simulator profile and
knobs, the manifest, --only, the keys, the base URL, the output folder, the video store, the
slice, the timings.

`prepare` returns a `PreparedRun`, what `omni-batch run` shows before it asks; `run_folder_async`
runs it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni_batch.errors import UsageError
from omni_batch.planning.manifest import Manifest
from omni_batch.planning.plan import Plan, plan
from omni_batch.planning.slicing import SlicePlan, normalise, parse_only
from omni_batch.planning.slicing import check as check_slice
from omni_batch.running.accounts import KEYS_ENV, parse_keys_env, parse_keys_file
from omni_batch.running.api import check_base_url
from omni_batch.running.options import Policy, RunOptions
from omni_batch.store.base import VideoStore
from omni_batch.store.local import LocalStore
from omni_batch.store.location import open_store, parse_location, recorded_location

KEY_ENV = "TOAPIS_API_KEY"
BASE_URL_ENV = "TOAPIS_BASE_URL"
DEFAULT_OUT = Path("outputs")


def output_folder(manifest: Manifest, out: str | Path | None) -> Path:
    return Path(out) if out is not None else DEFAULT_OUT / manifest.name


def _default_policy(options: RunOptions) -> Policy:
    """The real API's documented timings, or the ones that fit the simulator profile's tasks."""
    if options.simulate is None:
        return Policy()
    from omni_batch.simulator.config import SimConfig, run_policy

    config = SimConfig.from_profile(options.simulate, **sim_settings(options))
    return run_policy(options.simulate, config)


def sim_settings(options: RunOptions) -> dict[str, Any]:
    """The simulator knobs of ``sim_set`` (``KNOB=VALUE`` items or a mapping) and of its old
    name ``simulator_settings``; a bad knob or value raises UsageError."""
    if not options.sim_set and not options.simulator_settings:
        return {}
    from omni_batch.simulator.config import parse_settings

    settings: dict[str, Any] = {}
    for given in (options.simulator_settings, options.sim_set):
        if isinstance(given, Mapping):  # each value checked as its --sim-set text would be
            settings.update(parse_settings(f"{name}={_knob_text(v)}" for name, v in given.items()))
        elif given:
            settings.update(parse_settings([given] if isinstance(given, str) else given))
    return settings


def _knob_text(value: Any) -> str:
    """A knob's value as --sim-set would spell it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(part) for part in value)
    return str(value)


def only_of(options: RunOptions) -> dict[str, list[str]]:
    """``only`` as NAME → values, from a mapping or from ``NAME=VALUE`` items (--only)."""
    if not options.only:
        return {}
    if isinstance(options.only, Mapping):
        return normalise(options.only)
    return parse_only([options.only] if isinstance(options.only, str) else options.only)


@dataclass
class PreparedRun:
    """A run checked and planned, nothing sent yet: what `omni-batch run` shows before it
    asks. Give it to `run_folder_async` (or `run_async`) to run it."""

    plan: Plan
    options: RunOptions
    folder: Path
    policy: Policy  # the timings the run uses, flags applied
    only: dict[str, list[str]]
    slice: SlicePlan | None  # with --limit / --only: what the slice holds
    store: VideoStore  # where the videos go (reached already when it is not the folder)
    # the store's location (``s3://BUCKET/PREFIX``, recorded in the journal's meta); None: the
    # output folder's own videos/
    store_url: str | None = None
    # a shared run (options.journal): its name in the shared journal
    run_name: str | None = None

    @property
    def videos(self) -> str:
        """Where the videos are, as the run's last line says it."""
        return self.store_url or str(self.folder / "videos")

    @property
    def manifest(self) -> Manifest:
        return self.plan.manifest

    @property
    def reconcile(self) -> bool:
        """Ambiguous submits are looked up: as asked, else with the simulator only."""
        given = self.options.reconcile
        if given is not None:
            return given
        # a shared run: a runner that dies mid-submit is settled by another, by that lookup
        return self.options.simulate is not None or self.options.journal is not None


def prepare(
    manifest: str | Path | Manifest | Plan,
    options: RunOptions | None = None,
    *,
    on_folder: Callable[[Path], None] | None = None,
) -> PreparedRun:
    """Every check a run makes before it sends anything, in the order the CLI reports them:
    the simulator profile and knobs, the manifest, --only, the keys, the base URL, the output
    folder (refused while another run holds it) and the slice. ``on_folder`` hears the output
    folder as soon as it is known. Raises the library's errors (one line each)."""
    options = options or RunOptions()
    if options.simulate is not None:  # a bad profile or knob: before anything else
        from omni_batch.simulator.config import SimConfig

        SimConfig.from_profile(options.simulate, **sim_settings(options))
    elif options.sim_set or options.simulator_settings:
        raise UsageError("--sim-set works with --simulate only")
    if isinstance(manifest, Plan):
        planned = manifest
    elif isinstance(manifest, Manifest):
        planned = Plan(manifest, manifest.summary())
    else:  # a bad manifest: before the rest
        planned = plan(manifest, options.catalog, max_jobs=options.max_jobs)
    only = only_of(options)
    if options.keys_file is not None:  # a bad keys file: one line per problem, before the rest
        parse_keys_file(options.keys_file)
    elif options.api_keys:
        parse_keys_env(options.api_keys, "api_keys")
    elif options.simulate is None and (keys_env := os.environ.get(KEYS_ENV, "").strip()):
        parse_keys_env(keys_env)
    if options.base_url is not None:  # a URL that cannot be the API root: one line
        check_base_url(options.base_url)
    elif options.simulate is None and (from_env := os.environ.get(BASE_URL_ENV, "").strip()):
        check_base_url(from_env, BASE_URL_ENV)
    policy = options.timed(options.policy or _default_policy(options))
    folder = output_folder(planned.manifest, options.out)
    if on_folder is not None:
        on_folder(folder)
    refuse_a_busy_folder(folder)
    run_name = None
    if options.journal is not None:
        run_name = _check_shared(options, planned.manifest)
        store_url: str | None = str(parse_location(options.store or ""))
    else:
        store_url = store_location(folder, options.store)
    store = open_store(store_url, folder)
    if store_url is not None:  # a wrong bucket, endpoint or key: one line, before any submit
        store.prepare()
    if options.limit is not None and options.limit < 0:
        raise UsageError(f"limit must be 0 or more, not {options.limit}")
    sliced = None
    if options.limit is not None or only:  # a NAME or VALUE that selects nothing: refused here
        from omni_batch.journal import started_counter

        with started_counter(folder) as started:
            sliced = check_slice(planned.manifest, only, options.limit, started)
    return PreparedRun(planned, options, folder, policy, only, sliced, store, store_url, run_name)


def _check_shared(options: RunOptions, manifest: Manifest) -> str:
    """A shared run's settings, each refused in one line when it cannot work with several
    runners; returns the run's name (``run_name``, default the manifest's)."""
    from omni_batch.journal import is_shared

    url = options.journal or ""
    if not is_shared(url):
        raise UsageError(
            f"--journal {url}: a shared journal is a postgresql://USER@HOST:PORT/DB URL"
        )
    if options.store is None:
        raise UsageError(
            "--journal needs --store s3://BUCKET/PREFIX: every runner puts its videos where "
            "all of them (and the report) reach them"
        )
    if options.simulate is not None:
        raise UsageError(
            "--simulate starts a simulator in each runner; with --journal start one "
            "(`omni-batch simulate`) and give every runner its --base-url"
        )
    if options.limit is not None or options.only:
        raise UsageError(
            "--limit and --only do not work with --journal yet: run the whole manifest"
        )
    if manifest.budget.max_cost is not None:
        raise UsageError(
            f"{manifest.path}: budget.max_cost is not enforced across several runners yet; "
            "remove it to run with --journal"
        )
    try:
        import dbos  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError:
        raise UsageError(
            "--journal needs the [shared] extra: pip install 'omni-batch[shared]'"
        ) from None
    return options.run_name or manifest.name


def store_location(folder: Path, given: str | None) -> str | None:
    """The run's store: ``given`` (checked), else the one the folder's earlier runs used. A
    folder whose videos are in one store is not resumed into another (its completed videos
    would look lost and be fetched again): UsageError, one line."""
    wanted = str(parse_location(given)) if given is not None else None
    recorded = recorded_location(folder)
    if wanted is None or wanted == recorded:
        return recorded
    # nothing recorded: a new folder, one whose journal was rebuilt (its meta lost), or the
    # folder's own store, which is switched away from only while it holds no video
    if recorded is None and next(LocalStore(folder).stored(), None) is None:
        return wanted
    where = recorded or str(folder / "videos")
    raise UsageError(
        f"--store {given}: the videos of {folder} are in {where}; resume with "
        + (f"--store {recorded}" if recorded else "no --store")
        + ", or use a new --out"
    )


def refuse_a_busy_folder(folder: Path) -> None:
    """A folder another run holds is refused (StateError) before anything is shown or sent.

    (The journal takes the lock for the run itself; between this look and that, another run
    could still start, and is then refused by the journal.)"""
    from omni_batch.journal import lock_folder

    if folder.is_dir():
        with contextlib.suppress(OSError):  # unreadable or unwritable: the journal says so
            lock_folder(folder).close()
