"""`run` / `run_async`: a manifest in, every job settled, the report out (as a DataFrame).

Wires manifest → journal → engine (with the embedded simulator when asked) → report, and turns
the ways a run can end (401, 402, Ctrl-C) into errors raised after the journal and report are
consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from omni_batch.errors import Interrupted, OmniBatchError, OutputError, UsageError
from omni_batch.journal import Journal, open_journal
from omni_batch.outputs.digest import ReportDigest
from omni_batch.outputs.gallery import write_gallery
from omni_batch.outputs.report import build_report, refresh_reports, write_reports_digest
from omni_batch.planning.catalog import Catalog
from omni_batch.planning.manifest import Manifest
from omni_batch.planning.plan import Plan
from omni_batch.preparing import BASE_URL_ENV, KEY_ENV, PreparedRun, prepare, sim_settings
from omni_batch.running.accounts import (
    KEYS_ENV,
    AccountKeys,
    AccountRun,
    Identity,
    parse_keys_env,
    parse_keys_file,
    recognise,
)
from omni_batch.running.api import DEFAULT_BASE_URL, Balance, ToapisClient
from omni_batch.running.budgets import Account, Rates
from omni_batch.running.download import adopt_stored_videos, requeue_lost_videos
from omni_batch.running.engine import CANCEL_WITHIN_S, Engine, RunStats, cancel_and_wait
from omni_batch.running.money import (
    PRICES_META,
    Preflight,
    Spend,
    balance_after,
    preflight,
    price_table,
)
from omni_batch.running.netguard import GuardedResolver, VideoGuard
from omni_batch.running.options import Policy, RunOptions  # RunOptions: also its old home
from omni_batch.running.redact import Redactor
from omni_batch.store.base import VideoStore
from omni_batch.store.location import STORE_META

if TYPE_CHECKING:
    import pandas as pd

SIMULATOR_DIR = ".simulator"  # the embedded simulator's tasks, in the output folder
T = TypeVar("T")


class _PacedQueries:
    """The client's model-list and balance calls under the account's query budget (429s
    honoured, as for every other call), for the preflight and the balance after the run."""

    def __init__(self, engine: Engine):
        self._engine = engine

    async def models(self) -> tuple[str, ...]:
        return await self._engine.pressured(lambda client: client.models())

    async def balance(self, account: bool = False) -> Balance:
        return await self._engine.pressured(lambda client: client.balance(account=account))


def _rates(options: RunOptions) -> Rates:
    from omni_batch.running.budgets import TIERS

    if options.tier not in TIERS:
        raise UsageError(f"tier: {options.tier!r} is not one of {', '.join(TIERS)}")
    return Rates(
        submit=options.submit_rate,
        query=options.query_rate,
        shared=options.rate,
        tier=options.tier,
    )


def account_keys(options: RunOptions) -> list[AccountKeys] | None:
    """The accounts and keys a run uses: ``keys_file``, else ``api_keys``, else ``api_key``,
    else $TOAPIS_API_KEYS, else $TOAPIS_API_KEY; None when none is given. A bare key is an
    account of its own (``account-1``, ``account-2``... by its place among the bare keys)."""
    if options.keys_file is not None:
        return parse_keys_file(options.keys_file)
    if options.api_keys:
        return parse_keys_env(options.api_keys, "api_keys")
    if options.api_key:  # one key, taken as it is (it may hold ',' or '=')
        return [AccountKeys("account-1", (options.api_key.strip(),))]
    if env := os.environ.get(KEYS_ENV, "").strip():
        return parse_keys_env(env)
    if key := os.environ.get(KEY_ENV, "").strip():
        return [AccountKeys("account-1", (key,))]
    return None


@contextlib.asynccontextmanager
async def _target(
    options: RunOptions, catalog: Catalog, folder: Path
) -> AsyncIterator[tuple[str, list[AccountKeys]]]:
    """(base URL, accounts): the embedded simulator's (its own key, unless keys were given
    explicitly: a keys file or ``api_keys``), or the real API's from options/environment.

    The embedded simulator keeps its tasks in ``folder/.simulator/``, so a rerun (a resume)
    finds the tasks of the run before it as the real API would."""
    if options.simulate is not None:
        from omni_batch.simulator import SimConfig, start_simulator

        config = SimConfig.from_profile(options.simulate, **sim_settings(options))
        # the simulator judges bodies by the same catalog (overlay included) as the manifest
        state_dir = folder / SIMULATOR_DIR
        explicit = options.keys_file is not None or options.api_keys
        keys = account_keys(options) if explicit else None
        async with start_simulator(config, catalog=catalog, state_dir=state_dir) as sim:
            yield sim.base_url, keys or [AccountKeys("account-1", (sim.key,))]
        return
    keys = account_keys(options)
    if not keys:
        raise UsageError(
            f"no API key: set {KEY_ENV} (or {KEYS_ENV} / --keys-file for several accounts), "
            "or use --simulate to rehearse against the embedded simulator"
        )
    yield options.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL, keys


# SIGHUP (the terminal went away) is treated like SIGTERM and Ctrl-C
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
# From the first signal to the process being gone, at most: the shutdown itself is bounded
# (engine.SUBMIT_GRACE_S, CANCEL_WITHIN_S); this is the last resort if something still hangs.
STOP_DEADLINE_S = 9.0
OVERDUE = (
    b"omni-batch: still stopping %d s after the signal; leaving now "
    b"(the journal is consistent: run the same command again to resume)\n"
)


def _watchdog(armed: threading.Event, released: threading.Event) -> None:
    armed.wait()
    if not released.wait(STOP_DEADLINE_S):
        os.write(2, OVERDUE % STOP_DEADLINE_S)
        os._exit(130)  # every journal write is its own commit: as safe as kill -9


def _restore(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: not set from Python


@contextlib.contextmanager
def _interrupts(stop: asyncio.Event) -> Iterator[None]:
    """First SIGINT, SIGTERM or SIGHUP: stop submitting and settle (bounded, and within
    STOP_DEADLINE_S whatever happens); a second one: leave at once, exit code 130.

    The handlers are plain ``signal.signal`` ones, not the loop's: they run in the main thread
    even while the loop is blocked (a journal write, a thread join), so a second signal always
    works. They only set flags, schedule ``stop.set`` and exit: nothing in them takes a lock
    the interrupted code could hold.
    """
    loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    armed, released = threading.Event(), threading.Event()
    signalled = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal signalled
        if signalled:
            os._exit(130)  # every journal write is its own commit: nothing half-written
        signalled = True  # before anything that may be interrupted by the next signal
        with contextlib.suppress(RuntimeError):  # the loop is closing: it is stopping anyway
            loop.call_soon_threadsafe(stop.set)
        armed.set()

    previous: dict[int, Any] = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    except (ValueError, OSError):  # pragma: no cover - not allowed here
        _restore(previous)
        yield
        return
    watchdog = threading.Thread(
        target=_watchdog, args=(armed, released), name="omni-batch-stop-deadline", daemon=True
    )
    watchdog.start()
    try:
        yield
    finally:
        _restore(previous)  # first, so no handler runs while we release the watchdog
        released.set()
        armed.set()


def _one_at_a_time(folder: Path, call: Callable[[], T]) -> T:
    """``call`` under the folder's report lock: several runners of one shared run started
    with the same --out write the (same) reports in turn, never over each other's files."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".reports.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return call()


class _ReportWriter:
    """Writes a run's reports, periodic and final, on one thread of its own.

    One thread: a refresh the run's end cut short finishes before the final write starts (they
    share temp files), and every write reuses the memory the last one freed; across threads
    each allocator arena kept its own (~20 MB at 20,000 jobs).
    """

    def __init__(
        self,
        folder: Path,
        store: VideoStore,
        source: str | None = None,
        run: str | None = None,
    ):
        self.folder = folder
        self.store = store  # the gallery links the videos and posters where the run put them
        # a shared run's journal (its URL and run name): the reports are written from it
        self.source, self.run = source, run
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omni-batch-reports")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(fn, *args, **kwargs)
        if self.source is not None:  # runners of a shared run may write into one folder
            call = functools.partial(_one_at_a_time, self.folder, call)
        return await asyncio.get_running_loop().run_in_executor(self.thread, call)

    async def refresh_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            if self.source is not None:
                await self._call(write_reports_digest, self.folder, self.source, self.run)
            else:
                await self._call(refresh_reports, self.folder)

    async def finish(self, title: str, posters: bool) -> ReportDigest:
        """The final report.csv, report.parquet, failures.csv and gallery, each written from the
        journal a slice at a time; returns the report's digest (never the table)."""
        try:
            if self.source is not None:  # the reports (and gallery) of the whole shared run
                from omni_batch.results import write_reports

                return await self._call(write_reports, self.source, self.run, self.folder)
            digest = await self._call(write_reports_digest, self.folder)
            await self._call(
                write_gallery,
                self.folder,
                title=title,
                posters=posters,
                digest=digest,
                store=self.store,
            )
            return digest
        finally:
            self.thread.shutdown(wait=False)


async def run_async(
    manifest: str | Path | Manifest | Plan | PreparedRun,
    options: RunOptions | None = None,
    *,
    on_start: Callable[[RunStats, Engine], None] | None = None,
    stop: asyncio.Event | None = None,
    **kw: Any,
) -> pd.DataFrame:
    """Run every job of ``manifest``; return the report (one row per job).

    For notebooks and scripts: the returned table holds a row per job in memory. The reports
    on disk are written a slice at a time either way; `run_folder_async` (what the CLI runs)
    returns their `ReportDigest` instead, so its memory stays flat for any number of jobs.

    Raises AuthError (the key was refused), QuotaError (the balance ran out; in-flight tasks
    were finished first) or Interrupted (Ctrl-C) after the journal and report are consistent.
    """
    options = options or RunOptions.of(**kw)
    digest = await run_folder_async(manifest, options, on_start=on_start, stop=stop)
    assert digest.folder is not None  # run_folder_async names it
    if isinstance(manifest, PreparedRun):
        options = manifest.options
    if options is not None and options.journal is not None:  # the shared run's, as written
        import pandas as pd

        return pd.read_parquet(Path(digest.folder) / "report.parquet")
    return build_report(digest.folder)


async def run_folder_async(
    manifest: str | Path | Manifest | Plan | PreparedRun,
    options: RunOptions | None = None,
    *,
    on_start: Callable[[RunStats, Engine], None] | None = None,
    stop: asyncio.Event | None = None,
    **kw: Any,
) -> ReportDigest:
    """`run_async` without the table: the reports are written in the output folder
    (``digest.folder``) and the digest of the report (counts, failures, spend, summary) is
    returned. Memory stays flat for any number of jobs: the CLI's run.

    Raises as `run_async` does.
    """
    if isinstance(manifest, PreparedRun):
        prepared = manifest
    else:
        prepared = prepare(manifest, options or RunOptions.of(**kw))
    stop = stop or asyncio.Event()
    # signals are handled from here to the end, the final report included: a signal at any
    # moment of the run stops it, and a second one leaves at once
    with _interrupts(stop):
        digest = await _run(prepared, stop, on_start)
    digest.folder = prepared.folder
    return digest


async def _run(
    prepared: PreparedRun,
    stop: asyncio.Event,
    on_start: Callable[[RunStats, Engine], None] | None,
) -> ReportDigest:
    manifest, options, folder = prepared.manifest, prepared.options, prepared.folder
    policy, reconcile = prepared.policy, prepared.reconcile
    ended: OmniBatchError | None = None
    shared = options.journal
    reports = _ReportWriter(folder, prepared.store, shared, prepared.run_name)
    async with _target(options, manifest.catalog, folder) as (base_url, keys):
        if shared is not None:
            from omni_batch.running.durable import default_runner

            journal: Journal = open_journal(
                shared, run=prepared.run_name, runner=options.runner or default_runner()
            )
            _same_store(journal, prepared.store_url)
        else:
            journal = open_journal(folder)
        try:
            journal.set_meta("manifest", str(manifest.path))
            journal.set_meta("name", manifest.name)
            journal.set_meta("var_names", ",".join(manifest.var_names))
            journal.set_meta("tag_names", ",".join(manifest.tag_names))
            journal.sync(manifest.jobs())
            journal.set_slice(prepared.only, options.limit, manifest.var_names, manifest.tag_names)
            repolled, requeued = journal.reopen(options.retry_failed)
            store = prepared.store
            if prepared.store_url is not None:  # report, status and a resume find it there
                journal.set_meta(STORE_META, prepared.store_url)
            # first: a store that cannot be reached must not make every video look lost
            store.prepare()
            adopted = adopt_stored_videos(journal, store)
            lost = requeue_lost_videos(journal, store)
            # the resolver refuses names (other than the API's) that resolve to internal
            # addresses, on the very lookup a video download connects with
            resolver = GuardedResolver(VideoGuard(base_url))
            connector = aiohttp.TCPConnector(
                # connections at once: the workers' (8 submit, 8 poll, 4 download) and lookups
                limit=max(16, min(64, options.max_in_flight // 2 + 8)),
                resolver=resolver,
            )
            async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
                table = price_table(manifest.catalog)
                journal.set_meta(PRICES_META, json.dumps(table))  # what the report prices by
                notes: list[str] = []
                engine: Engine | None = None
                # the journal's accounts recognised by their keys, never by name or place
                identities, known_as = recognise(journal, keys)

                def engine_log(message: str) -> None:
                    if engine is not None:
                        engine.log(message)

                accounts = _accounts(
                    keys,
                    options,
                    policy,
                    base_url,
                    session,
                    engine_log,
                    identities,
                )
                engine = Engine(
                    journal,
                    accounts,
                    session,
                    store,
                    policy,
                    max_in_flight=options.max_in_flight,
                    reconcile=reconcile,
                    verify=options.verify,
                )
                for note in known_as:
                    engine.log(note)
                paced = _PacedQueries(engine)  # the preflight's calls, under the budget
                checked = Preflight()
                if _preflight_wanted(options):
                    try:
                        checked = await preflight(
                            paced,
                            journal,
                            table,
                            allow_partial=options.allow_partial,
                            say=notes.append,
                        )
                    except OmniBatchError as exc:  # nothing was sent; the reports are written
                        ended = exc
                if journal.recovered:  # a journal rebuilt or caught up from events.jsonl
                    engine.log(journal.recovered)
                elif adopted:  # rebuilt by an earlier command (review, pick), adopted now
                    engine.log(f"{adopted} completed jobs recorded from videos in place")
                if journal.left_manifest:
                    engine.log(_left_message(journal))
                if repolled or requeued or lost:
                    engine.log(
                        f"resume: {repolled} failed jobs' tasks polled again, "
                        f"{requeued} failed jobs queued again, "
                        f"{lost} videos missing on disk fetched again"
                    )
                spend = Spend.from_journal(journal, table, manifest.budget.max_cost)
                engine.spend = engine.stats.spend = spend
                for note in notes:
                    engine.log(note)
                if on_start:
                    on_start(engine.stats, engine)
                refresher = asyncio.create_task(reports.refresh_every(options.report_every))
                try:
                    if ended is None and shared is not None:
                        await _run_shared(engine, journal, options, stop, keys)
                    elif ended is None:
                        await engine.run(stop)
                        if checked.balance is not None and not stop.is_set():
                            here = spend.spent_usd - spend.at_start
                            await balance_after(
                                paced,
                                checked,
                                here,
                                engine.log,
                            )
                except OmniBatchError as exc:
                    ended = exc  # the journal is consistent; still write what it holds
                except OSError as exc:  # e.g. the disk filled up under us
                    ended = OutputError(f"{folder}: {exc.strerror or exc}")
                finally:
                    await cancel_and_wait([refresher], CANCEL_WITHIN_S)
                    try:
                        journal.commit()  # the last completions (and their events) first
                        journal.event("run_end", counts=journal.counts())
                    except OmniBatchError as exc:
                        ended = ended or exc
        finally:
            try:
                journal.close()
            except OmniBatchError as exc:  # the first error is the one to report
                ended = ended or exc
        try:
            report = await reports.finish(manifest.name, posters=options.verify)
        except OmniBatchError as exc:  # e.g. the disk is still full: the first error wins
            ended = ended or exc
        if ended is not None:
            raise ended
        if stop.is_set():
            if shared is not None:
                raise Interrupted(
                    f"stopped; the other runners of run {prepared.run_name!r} take its jobs up, "
                    "or run the same command again to resume"
                )
            raise Interrupted(f"stopped; run the same command again to resume ({folder})")
        if engine.quota_hit is not None:
            raise engine.quota_hit
        return report


SETTINGS_META = "shared_settings"  # the budgets every runner of a shared run must share


def _same_settings(journal: Journal, options: RunOptions) -> None:
    """The first runner's budgets are the run's: a runner given others is refused in one line
    (its --submit-rate would set the whole account's pace, its --max-in-flight the run's cap)."""
    mine = {
        "tier": options.tier,
        "submit_rate": options.submit_rate,
        "query_rate": options.query_rate,
        "rate": options.rate,
        "max_in_flight": options.max_in_flight,
    }
    recorded = journal.meta(SETTINGS_META)
    if recorded is None:
        journal.set_meta(SETTINGS_META, json.dumps(mine, sort_keys=True))
        recorded = journal.meta(SETTINGS_META)  # two first runners: the one stored wins
    theirs = json.loads(recorded or "{}")
    differ = [k for k in mine if theirs.get(k, mine[k]) != mine[k]]
    if differ:
        flags = ", ".join(
            f"--{k.replace('_', '-')} {theirs[k] if theirs[k] is not None else '(unset)'}"
            for k in differ
        )
        raise UsageError(
            f"run {getattr(journal, 'run', '')!r} is shared with other settings: start this "
            f"runner with {flags} as its first runner was"
        )


def _same_store(journal: Journal, store_url: str | None) -> None:
    """A shared run keeps its videos in one store: a runner given another is refused."""
    recorded = journal.meta(STORE_META)
    if recorded is not None and store_url is not None and recorded != store_url:
        journal.close()
        raise UsageError(
            f"--store {store_url}: this shared run's videos are in {recorded}; "
            f"start every runner with --store {recorded}"
        )


async def _run_shared(
    engine: Engine,
    journal: Journal,
    options: RunOptions,
    stop: asyncio.Event,
    keys: list[AccountKeys],
) -> None:
    """The engine as one of several runners of a shared run: each job a DBOS workflow, the
    accounts' budgets shared through the database (running/durable.py)."""
    from omni_batch.journal.postgres import PostgresJournal
    from omni_batch.running.accounts import fingerprint
    from omni_batch.running.durable import Liveness, SharedRun

    assert isinstance(journal, PostgresJournal) and options.journal is not None
    # every runner (and every run) on an account paces by one row per budget, named by a
    # fingerprint of the account's keys salted per database: never a key
    _same_settings(journal, options)
    salt = journal.salt()
    for spec, acct in zip(keys, engine.accounts, strict=True):
        acct.budgets.share(options.journal, fingerprint(min(spec.keys), salt))
    admit = 0.0
    for acct in engine.accounts:
        budgets = acct.budgets
        rate = budgets.submit.effective_rate
        if rate is None and budgets.shared is not None:
            rate = budgets.shared.effective_rate
        if rate is None:
            admit = math.inf
            break
        admit += rate
    beat = min(1.0, options.dead_after / 5)
    sharing = SharedRun(
        engine,
        journal,
        options.journal,
        max_in_flight=options.max_in_flight,
        admit_rate=admit,
        liveness=Liveness(beat=beat, dead_after=options.dead_after),
    )
    try:
        await sharing.launch()
        await engine.run(stop, feed=sharing.feed)
    finally:
        await sharing.stop(CANCEL_WITHIN_S)
        await sharing.close()
        for acct in engine.accounts:
            with contextlib.suppress(OmniBatchError):
                await acct.budgets.aclose()


def _preflight_wanted(options: RunOptions) -> bool:
    """Preflight runs against a real API, and against the simulator only when it is given a
    balance (its default is unlimited, and its runs should not make calls they do not need)."""
    if not options.preflight:
        return False
    if options.simulate is None:
        return True
    from omni_batch.simulator.config import SimConfig

    config = SimConfig.from_profile(options.simulate, **sim_settings(options))
    return config.balance_credits is not None


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda message: log(prefix + message)


def _accounts(
    keys: list[AccountKeys],
    options: RunOptions,
    policy: Policy,
    base_url: str,
    session: aiohttp.ClientSession,
    log: Callable[[str], Any],
    identities: list[Identity] | None = None,
) -> list[AccountRun]:
    """One AccountRun per account: its budgets, and one client per key. Every client redacts
    every key: a server may echo key B in its answer to a request made with key A."""
    redactor = Redactor(*(key for account in keys for key in account.keys))
    several = len(keys) > 1
    made = []
    for n, spec in enumerate(keys):
        prefix = f"account {spec.name}: " if several else ""
        budgets = Account(spec.name, _rates(options), on_change=_prefixed(log, prefix))
        clients = []
        for key in spec.keys:
            client = ToapisClient(
                session, base_url, key, timeout=policy.request_timeout, redact=redactor
            )
            client.on_limits = functools.partial(budgets.observe, max_pause=policy.max_retry_after)
            clients.append(client)
        identity = identities[n] if identities else None
        made.append(AccountRun(spec.name, budgets, clients, options.max_in_flight, identity))
    return made


def _left_message(journal: Journal) -> str:
    n = journal.left_manifest
    text = (
        f"{n} job{'s are' if n != 1 else ' is'} no longer in the manifest: kept in the report "
        "as retired"
    )
    if journal.left_in_flight:
        text += f"; {journal.left_in_flight} with a task under way are still finished"
    if journal.left_submitting:
        text += (
            f"; {journal.left_submitting} left mid-submit are not settled (that could send "
            "them again): put their entries back in the manifest to settle them"
        )
    return text


def run(
    manifest: str | Path | Manifest | Plan | PreparedRun,
    options: RunOptions | None = None,
    **kw: Any,
) -> pd.DataFrame:
    """The blocking form of :func:`run_async`, for scripts and notebooks.

    Inside a running event loop (a Jupyter cell) the run gets a loop of its own on a worker
    thread, and this call waits for it; an interrupt (the notebook's stop button) stops the run
    as Ctrl-C does, and raises Interrupted once the journal and report are consistent.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop here: the usual case
        return asyncio.run(run_async(manifest, options, **kw))
    return _run_beside_a_loop(manifest, options, kw)


def _run_beside_a_loop(
    manifest: str | Path | Manifest | Plan | PreparedRun,
    options: RunOptions | None,
    kw: dict[str, Any],
) -> pd.DataFrame:
    ready = threading.Event()
    running: dict[str, Any] = {}

    async def main() -> pd.DataFrame:
        running["loop"], running["stop"] = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        return await run_async(manifest, options, stop=running["stop"], **kw)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="omni-batch-run") as pool:
        future = pool.submit(asyncio.run, main())
        try:
            return future.result()
        except KeyboardInterrupt:
            if ready.is_set():  # stop submitting and settle, as the first Ctrl-C does
                running["loop"].call_soon_threadsafe(running["stop"].set)
            return future.result()  # raises Interrupted once the run has settled
