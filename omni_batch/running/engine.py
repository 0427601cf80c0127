"""The async run: a submit feeder reading the journal in pages, bounded worker pools for
submits, polls (fed by a due-time heap) and downloads, and a structured shutdown.

Holds only in-flight jobs in memory; every state change goes through the journal first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from omni_batch.errors import (
    AlreadyStored,
    ApiError,
    ApiUnreachable,
    AuthError,
    JobTaken,
    NotSent,
    OmniBatchError,
    QuotaError,
    RateLimited,
    RequestRejected,
    ThrottledTooLong,
    TransportError,
)
from omni_batch.journal import DEFER_S, JobRow, Journal
from omni_batch.running.accounts import AccountRun
from omni_batch.running.api import TaskState, ToapisClient
from omni_batch.running.budgets import MAX_IN_FLIGHT, QUERY, SUBMIT, RateHeaders
from omni_batch.running.download import DownloadError, RetryableDownload, download
from omni_batch.running.netguard import VideoGuard
from omni_batch.running.options import Policy, retried
from omni_batch.running.polling import Plan, PollPacer, PollPlanner, Track
from omni_batch.running.stats import RunStats
from omni_batch.running.submit import Stopping, Submitter, unless_halted
from omni_batch.running.verify import probe_stored
from omni_batch.store.base import Stored, VideoStore

if TYPE_CHECKING:
    from omni_batch.running.money import Spend

# a 429 whose message speaks of tasks at once, not of requests per second
CONCURRENCY_WORDS = re.compile(
    r"concurren|in progress|in parallel|simultaneous|at once|running tasks|active tasks", re.I
)
# a bare submit 429 (no message, no headers) is read as the cap on tasks at once when the
# submits accepted in the last CONCURRENCY_WINDOW s were under CONCURRENCY_SHARE of the rate
CONCURRENCY_WINDOW = 3.0
MAX_CONCURRENCY_BACKOFF = 30.0  # a concurrency wait with none of our tasks running, at most
CONCURRENCY_SHARE = 0.3

T = TypeVar("T")

# On a stop (a signal, a fatal error), how long a submit already sent gets to be answered and
# recorded; one still unanswered then is cancelled and stays `submitting` (committed before its
# POST), so the next run reconciles it. Keeps the whole shutdown well inside 10 s.
SUBMIT_GRACE_S = 4.0
# The share of a budget shared by submits and status calls that polls are planned to use at
# most (the rest stays free for submits); a separate query budget is planned in full.
POLL_SHARE = 0.8
CANCEL_WITHIN_S = 2.0  # how long cancelled tasks get to finish before shutdown goes on


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], within: float) -> int:
    """Cancel ``tasks`` and wait, at most ``within`` seconds, until they are done; one that
    swallowed the cancel (on CPython 3.11 ``asyncio.wait_for`` can, when what it waited for
    finished at the same moment) is cancelled again. Returns how many are still running."""
    tasks = set(tasks)
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + within
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.1, left))
    for task in tasks - pending:
        _outcome(task)  # retrieved: an error while being cancelled is no news at shutdown
    return len(pending)


def _outcome(task: asyncio.Future[Any]) -> BaseException | None:
    """The exception a finished task ended with (None if it was cancelled or returned)."""
    return None if task.cancelled() else task.exception()


@dataclass
class Flight:
    """One job the API holds for us: what the poller and downloader need, nothing more."""

    job_id: str
    task_id: str
    deadline: float  # monotonic time after which it is failed as timed out (resumable)
    polls: int = 0
    status: str = "queued"
    state: str = "running"  # the journal state it is in: running or downloading
    refreshed: bool = False  # a fresh link was already asked for once
    asked: tuple[str, int] = ("", 0)  # (aspect ratio, duration) the video must match
    on_disk: Stored | None = None  # resume found its video whole in the store: no download
    account: AccountRun | None = None  # whose key polls it (None: the first account)
    track: Track | None = None  # what the poll planner knows of the task


class Engine:
    """One run: pools, the poll heap and shutdown. Composes a ``Submitter`` (the money rules,
    running/submit.py) and is its ``SubmitHost``."""

    def __init__(
        self,
        journal: Journal,
        accounts: list[AccountRun],
        session: aiohttp.ClientSession,
        store: VideoStore,
        policy: Policy,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        reconcile: bool = False,
        verify: bool = True,
        submit_workers: int = 8,
        poll_workers: int = 8,
        download_workers: int = 4,
        rng: random.Random | None = None,
        query_rate: float | None = None,
    ):
        """``accounts``: every configured account, each with its budgets and one client per
        key (the first also serves calls that belong to no job)."""
        self.accounts = accounts
        # journaled account name -> the account whose keys are that name's (recognised by
        # fingerprint, accounts.recognise): reordered bare keys or a renamed account still
        # poll and settle their jobs with their own keys
        self.by_name: dict[str, AccountRun] = {}
        for acct in accounts:
            for alias in acct.identity.aliases:
                self.by_name.setdefault(alias, acct)
        self.journal, self.client, self.session, self.store = (
            journal,
            accounts[0].clients[0],
            session,
            store,
        )
        self.policy = policy
        self.verify = verify  # decode every download (and make its poster) before completing
        # one thread decodes: probes queue behind each other instead of fighting over the GIL
        self.prober = ThreadPoolExecutor(1, thread_name_prefix="omni-batch-probe")
        self.rng = rng or random.Random()
        self.stats = RunStats(counts=journal.counts())
        # tasks in flight, all accounts together, at most (each account also has its own cap,
        # lowered by the API's concurrency 429s: AccountRun.cap)
        self.max_in_flight = max(1, max_in_flight)
        self.job_account: dict[str, AccountRun] = {}  # each claimed job's account
        self.with_task: set[str] = set()  # claimed jobs whose task exists (AccountRun.running)
        self.queued: set[str] = set()  # jobs that chose an account and wait for its budget
        self.quota_error: QuotaError | None = None  # the last 402 that retired an account
        self.n_submit, self.n_poll, self.n_download = submit_workers, poll_workers, download_workers
        self.active = 0  # jobs between claim and terminal state
        # jobs a shared run's workflows wait on (running/durable.py): resolved when the engine
        # lets go of the job (terminal, back to pending, or left for a later run)
        self.watched: dict[str, asyncio.Future[None]] = {}
        # a shared run's lease (running/durable.py): why no POST may leave now, or None
        self.fence: Callable[[], str | None] | None = None
        self.capacity = asyncio.Condition()
        self.polls: asyncio.Queue[tuple[Flight]] = asyncio.Queue(maxsize=poll_workers)
        self.downloads: asyncio.Queue[tuple[Flight, str]] = asyncio.Queue(
            maxsize=self.max_in_flight
        )
        self.heap: list[tuple[float, int, Flight]] = []
        # when to poll each task (from its progress and the timings learned this run), and
        # due times spread so the polls planned never exceed what the query budget serves
        self.planner = PollPlanner(policy)
        # a rate given here is fixed; else the pacer follows the accounts' query budgets as
        # published limits and 429 cuts change them (checked in `schedule`)
        self.pace_fixed = query_rate is not None
        if query_rate is None:
            query_rate = self._poll_rate()
        self.pacer = PollPacer(query_rate)
        self.heap_changed = asyncio.Event()
        self.order = itertools.count()
        self.idle = asyncio.Event()
        self.stopping = False  # Ctrl-C: send nothing new, and stop polling
        self.halt = asyncio.Event()  # no new submit may leave (Ctrl-C, 402, a fatal error)
        self.background: set[asyncio.Task[None]] = set()  # timers' wakers; cancelled at the end
        self.fatal: BaseException | None = None
        self.video_guard = VideoGuard(self.client.root)  # videos: public hosts, or the API's own
        # per kind of call (submit: True, status: False), the first 429 since another answer;
        # the API budgets the two apart, so one may be shut while the other flows
        self.throttled_since: dict[bool, float | None] = {True: None, False: None}
        self.submits_throttled: ThrottledTooLong | None = None
        self.cap_logged = -math.inf  # when a capped Retry-After was last logged
        # the money rules: the submit feeder and workers, reconciling, the spend limit
        self.submitter = Submitter(
            self,
            journal,
            accounts,
            policy,
            self.stats,
            self.halt,
            reconcile=reconcile,
            run_key=journal.meta("run_key") or "run",
            queue_size=submit_workers,
        )

    @property
    def spend(self) -> Spend | None:
        """budget.max_cost (issue #15): the runner sets it; the submitter holds it."""
        return self.submitter.spend

    @spend.setter
    def spend(self, spend: Spend | None) -> None:
        self.submitter.spend = spend

    @property
    def quota_hit(self) -> OmniBatchError | None:
        """Why submitting stopped early (402, a changed API, budget.max_cost), if it did."""
        return self.submitter.quota_hit

    def _poll_rate(self) -> float | None:
        """Status calls per second the accounts' query budgets serve, less a share kept for
        lookups and balance calls (a shared `--rate` budget also serves the submits)."""
        total = 0.0
        for acct in self.accounts:
            budgets = acct.budgets
            if budgets.query.effective_rate is not None:
                total += budgets.query.effective_rate * POLL_SHARE
            elif budgets.shared is not None and budgets.shared.effective_rate is not None:
                total += budgets.shared.effective_rate * POLL_SHARE
            else:
                return None  # an account without a query limit: nothing to spread for
        return total or None

    # -- bookkeeping ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.stats.messages.append(message)
        self.stats.logged += 1
        del self.stats.messages[:-20]
        self.journal.event("log", message=message)

    def _moved(self, old: str | None, new: str) -> None:
        self.stats.move(old, new)

    def rate_line(self) -> str:
        """For the progress display: each account's rates (named when there are several)."""
        if len(self.accounts) == 1:
            return self.accounts[0].budgets.rate_line()
        return "  ".join(
            f"{a.name}: {'retired' if a.retired else a.budgets.rate_line()}" for a in self.accounts
        )

    def _who(self, account: AccountRun) -> str:
        """A log line's prefix naming the account, when there are several."""
        return f"account {account.name}: " if len(self.accounts) > 1 else ""

    def claim(self, job_id: str, account: AccountRun) -> None:
        self.active += 1
        account.active += 1
        self.job_account[job_id] = account

    def _unclaim(self, job_id: str) -> AccountRun | None:
        if self.spend is not None:  # out of this run's hands: no refund of it can come now
            self.spend.done(job_id)
        account = self.job_account.pop(job_id, None)
        self.active -= 1
        if account is not None:
            account.active -= 1
            if job_id in self.with_task:
                self.with_task.discard(job_id)
                account.running -= 1
                account.finished += 1
            if job_id in self.queued:
                self.queued.discard(job_id)
                account.waiting -= 1
        return account

    def account_of(self, flight: Flight) -> AccountRun:
        return flight.account or self.job_account.get(flight.job_id) or self.accounts[0]

    def account_named(self, name: str | None) -> AccountRun | None:
        """The account a journaled job belongs to: a job with none recorded (a journal of an
        older version) is the first account's; None when it is no longer configured."""
        return self.accounts[0] if name is None else self.by_name.get(name)

    def watch(self, job_id: str) -> asyncio.Future[None]:
        """A future that is done when the engine lets go of ``job_id`` (see ``release``)."""
        future = self.watched.get(job_id)
        if future is None or future.done():
            future = self.watched[job_id] = asyncio.get_running_loop().create_future()
        return future

    async def release(self, job_id: str | None = None) -> None:
        future = self.watched.pop(job_id, None) if job_id is not None else None
        if future is not None and not future.done():
            future.set_result(None)
        async with self.capacity:
            account = self._unclaim(job_id) if job_id is not None else None
            if job_id is None:
                self.active -= 1
            if (
                account is not None
                and account.cap < account.cap_ceiling
                and time.monotonic() - account.cap_cut_at >= self.policy.cap_calm
            ):
                account.cap += 1  # a task finished and no concurrency 429 for a while: probe up
            # a slot freed: submit workers wait for different accounts (and a concurrency
            # wait for its own), so all of them look; there are only a few
            self.capacity.notify_all()
        self.check_idle()

    def _wake_soon(self) -> None:
        """From a timer: wake every capacity waiter (a task kept with the background ones, so
        shutdown cancels it rather than leaving it pending)."""
        task = asyncio.ensure_future(self._wake())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _wake(self) -> None:
        async with self.capacity:
            self.capacity.notify_all()

    async def _leave(self, flight: Flight) -> None:
        """A task of a retired account: left as the journal has it, for a later run."""
        await self.release(flight.job_id)

    async def retire(self, account: AccountRun, exc: AuthError) -> None:
        """A 401 on one of the account's keys: nothing more is sent with it this run; its
        tasks stay in the journal for a later run. All accounts retired: the run stops."""
        if account.retired:
            return
        account.retired = account.no_submits = True
        if all(a.retired for a in self.accounts):
            self.fail_fatal(exc)
            return
        self.log(
            f"401 for account {account.name} (its key is refused): account retired; its tasks "
            "in flight stay in the journal for a later run; the other accounts go on"
        )
        self._check_submits_left()
        await self._wake()

    async def out_of_quota(self, account: AccountRun, exc: QuotaError) -> None:
        """A 402 on the account: no new submits with it; its tasks in flight are finished."""
        self.quota_error = exc
        if account.no_submits:
            return
        account.no_submits = True
        if len(self.accounts) > 1 and any(a.can_submit for a in self.accounts):
            self.log(
                f"402 insufficient quota for account {account.name}: no new submits with it "
                f"(its {account.active} in flight are finished); the other accounts go on"
            )
        self._check_submits_left()
        await self._wake()

    def _check_submits_left(self) -> None:
        """No account may submit any more: submissions close (as one account's 402 did)."""
        if not any(a.can_submit for a in self.accounts) and self.quota_error is not None:
            self.submitter.close_submissions(self.quota_error)

    def check_idle(self) -> None:
        if self.active == 0 and self.submitter.idle:
            self.idle.set()

    def schedule(self, flight: Flight, delay: float | Plan) -> None:
        """Put ``flight`` on the poll heap ``delay`` seconds from now: jittered unless the
        planner chose that moment from what it knows of the task, then moved later if its slot
        of the query budget is full."""
        plan = delay if isinstance(delay, Plan) else Plan(delay)
        wait = plan.delay
        if not plan.exact:
            wait *= 1 + self.policy.jitter * (2 * self.rng.random() - 1)
        now = time.monotonic()
        if not self.pace_fixed:  # a few accounts' rates: cheap; a no-op while unchanged
            self.pacer.set_rate(self._poll_rate())
        due = self.pacer.place(now + max(0.0, wait), now)
        heapq.heappush(self.heap, (due, next(self.order), flight))
        self.heap_changed.set()

    def unreachable(self, exc: NotSent) -> ApiUnreachable:
        return ApiUnreachable(
            f"cannot reach the API at {self.client.root} ({exc.message}); stopped: no job "
            "was lost, run the same command again when it is reachable"
        )

    def fenced(self) -> str | None:
        """Why no POST may leave now (a shared run's runner that may have been replaced)."""
        return self.fence() if self.fence is not None else None

    def fail_fatal(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
            self.stopping = True
            self.halt.set()
            self.idle.set()

    # -- calls under the account's budgets ------------------------------------------------------
    async def pressured(
        self,
        call: Callable[[ToapisClient], Awaitable[T]],
        *,
        submit: bool = False,
        acct: AccountRun | None = None,
    ) -> T:
        """One API call with a key of ``acct`` (the first account by default), under that
        account's budget (submit or query: they never wait on each other); 429s pause that
        budget for everyone and the call is tried again. A submit 429 that is the API's cap on
        tasks at once lowers the account's in-flight cap instead of the rate."""
        category = SUBMIT if submit else QUERY
        acct = acct or self.accounts[0]
        account = acct.budgets
        last: RateLimited | None = None
        for _ in range(self.policy.max_rate_limited):
            if submit and account.ready(category) and not self.halt.is_set():
                await account.acquire(category)  # free now: nothing to race against halt
            elif submit:
                await unless_halted(account.acquire(category), self.halt)
            else:
                await account.acquire(category)
            try:
                result = await call(acct.client(submit))
            except RateLimited as exc:
                if submit:  # the key is good; only a submit's answer says the balance is too
                    acct.key_proven.set()
                self.stats.rate_limited += 1
                last = exc
                self._still_throttled(submit)  # only 429s for too long: stop (either kind)
                if submit and self._concurrency_limited(exc, acct):
                    await self._wait_for_a_slot(acct, self._capped(exc.retry_after))
                    continue
                seen = exc.limits if exc.limits is not None else RateHeaders()
                account.throttled(
                    exc.category or category,
                    self._capped(exc.retry_after),
                    seen,
                    self.policy.max_retry_after,
                )
                continue
            except (AuthError, QuotaError):
                raise
            except ApiError:
                self._answered(submit, acct)
                raise
            self._answered(submit, acct)
            return result
        assert last is not None
        raise last

    def _answered(self, submit: bool, acct: AccountRun) -> None:
        if submit:  # a status or balance call proves the key, not that a submit is paid for
            acct.key_proven.set()
        self.throttled_since[submit] = None
        acct.budgets.succeeded(SUBMIT if submit else QUERY)
        now = time.monotonic()
        if submit:
            acct.concurrency_429s = 0
        if not submit:
            acct.last_query_ok = now
            return
        if acct.first_submit_at is None:
            acct.first_submit_at = now
        acct.accepted.append(now)
        while acct.accepted and acct.accepted[0] < now - CONCURRENCY_WINDOW:
            acct.accepted.popleft()

    def _concurrency_limited(self, exc: RateLimited, acct: AccountRun) -> bool:
        """Is this submit 429 the API's cap on unfinished tasks, not its rate? It says so
        (a message about concurrent tasks), or its headers show the submit budget has room,
        or it comes while submits go far slower than the rate and status calls succeed. Once a
        cap was learned, a refusal while fewer tasks than that run is about the rate."""
        seen = exc.limits
        if seen is not None and seen.category == QUERY:
            return False
        if CONCURRENCY_WORDS.search(exc.message or ""):
            return True
        if acct.cap < acct.cap_ceiling and acct.running < acct.cap:
            return False  # under the cap the API taught us: not the cap
        if seen is not None and seen.remaining is not None and seen.remaining >= 1:
            return True
        if seen is not None and seen.limit_per_min is not None:
            return False  # the budget is published: its Remaining said above
        # submits well under the rate were accepted lately, tasks are running and status
        # calls go through: a refusal now is about tasks at once, not requests per second
        rate = acct.budgets.submit.effective_rate
        now = time.monotonic()
        if rate is None or acct.first_submit_at is None or acct.running < 1:
            return False
        while acct.accepted and acct.accepted[0] < now - CONCURRENCY_WINDOW:
            acct.accepted.popleft()
        span = min(CONCURRENCY_WINDOW, now - acct.first_submit_at)
        slow = len(acct.accepted) < CONCURRENCY_SHARE * rate * span
        return span >= 1.0 and slow and now - acct.last_query_ok < CONCURRENCY_WINDOW

    async def _wait_for_a_slot(self, acct: AccountRun, retry_after: float | None) -> None:
        """A concurrency 429: the API runs as many of the account's tasks as it will. Lower its
        cap to the tasks it has running, and wait — this submit's slot given back — until one
        of them finishes, or for Retry-After (else 1 s, 2 s, 4 s… up to 30 s) when none of
        them runs (the slots are another program's): never a busy loop, never forever."""
        acct.concurrency_429s += 1
        backoff = min(MAX_CONCURRENCY_BACKOFF, 2.0 ** (acct.concurrency_429s - 1))
        wait = max(retry_after or 0.0, backoff if acct.running == 0 else 0.0)
        running = max(1, acct.running)
        if running < acct.cap:
            self.log(
                f"{self._who(acct)}the API refuses more tasks at once: in-flight cap "
                f"{acct.cap} -> {running} (raised again as tasks finish)"
            )
            acct.cap = running
        acct.cap_cut_at = time.monotonic()
        finished, deadline = acct.finished, time.monotonic() + wait
        waker = asyncio.get_running_loop().call_later(wait, self._wake_soon)
        try:
            async with self.capacity:
                self.active -= 1  # this job has no task: its slot goes back while it waits
                acct.active -= 1
                try:
                    await self.capacity.wait_for(
                        lambda: (
                            self.stopping
                            or acct.retired
                            or (
                                time.monotonic() >= deadline
                                and (acct.finished > finished or acct.running < acct.cap)
                            )
                        )
                    )
                finally:
                    self.active += 1
                    acct.active += 1
        finally:
            waker.cancel()
        if self.stopping or acct.retired:
            raise Stopping()

    def _capped(self, retry_after: float | None) -> float | None:
        """Retry-After, but never longer than the policy allows (logged when that bites)."""
        cap = self.policy.max_retry_after
        if retry_after is None or retry_after <= cap:
            return retry_after
        now = time.monotonic()
        if now - self.cap_logged >= cap:  # once per capped pause, not once per caller
            self.cap_logged = now
            self.log(f"429 asked to wait {retry_after:.0f} s (Retry-After); waiting {cap:g} s")
        return cap

    def _still_throttled(self, submit: bool) -> None:
        """After a 429: give up on a kind of call the API has answered with nothing but 429
        for too long. Submits: no new ones, the tasks in flight finish, the run then ends.
        Status calls: the run ends now, every task kept in the journal for a later run."""
        now = time.monotonic()
        since = self.throttled_since[submit]
        if since is None:
            self.throttled_since[submit] = now
            return
        if now - since < self.policy.max_throttled_s:
            return
        calls = "submit" if submit else "status call"
        ended = ThrottledTooLong(
            f"the API at {self.client.root} answered every {calls} with 429 (too many "
            f"requests) for {now - since:.0f} s: stopped; every submitted task is kept in "
            "the journal, run the same command again later to resume"
        )
        if not submit:
            self.fail_fatal(ended)
            raise ended
        if self.submits_throttled is None:
            self.submits_throttled = ended
            self.log(f"{ended}; finishing {self.active} in flight")
        self.halt.set()  # like a 402: nothing new is sent, what is in flight is finished
        raise Stopping()  # a refused submit created nothing: its job goes back to pending

    async def status_call(self, task_id: str, acct: AccountRun | None = None) -> TaskState:
        """A status call (or a lookup) with a key of ``acct``: tasks and business ids are per
        account, so another account's key would not find it (and must never be used)."""
        return await retried(
            self.policy.poll_retrying,
            lambda: self.pressured(lambda client: client.status(task_id), acct=acct),
        )

    def _flight(
        self, row: JobRow, task_id: str, *, submitted: float | None = None, **kw: Any
    ) -> Flight:
        """``submitted``: when the task was submitted (monotonic; default now)."""
        body = row.body
        asked = (body["aspect_ratio"], body["duration"])
        now = time.monotonic()
        key = (str(body.get("model", "")), int(body["duration"]), str(body.get("resolution", "")))
        track = self.planner.track(key, now if submitted is None else min(submitted, now))
        if row.job_id not in self.with_task and (acct := self.job_account.get(row.job_id)):
            self.with_task.add(row.job_id)  # a task of this account is in flight
            acct.running += 1
        return Flight(
            row.job_id,
            task_id,
            now + self.policy.max_wait,
            asked=asked,
            account=self.job_account.get(row.job_id),
            track=track,
            **kw,
        )

    def _first_poll(self, flight: Flight) -> Plan:
        """The first poll after a submit: planned from what tasks of its kind took."""
        assert flight.track is not None
        return self.planner.first(flight.track, time.monotonic(), flight.deadline)

    def start_polling(self, row: JobRow, task_id: str) -> None:
        """A task was just created for ``row``: on the poll heap, its first poll planned."""
        flight = self._flight(row, task_id)
        self.schedule(flight, self._first_poll(flight))

    async def first_answer(self, row: JobRow, task_id: str, state: TaskState) -> None:
        """An earlier POST's task was adopted: the lookup's answer is its first poll (it may
        already be finished, and a finished task is never polled again)."""
        await self.on_state(self._flight(row, task_id), state)

    # -- polling ----------------------------------------------------------------------------------
    async def dispatcher(self) -> None:
        """Hands tasks to poll workers when they are due; sleeps until the next one is.

        The sleep is a timer that sets ``heap_changed``, not ``asyncio.wait_for``: on CPython
        3.11, a wait_for cancelled just as its event fired returned normally and swallowed the
        cancel, so shutdown waited forever for this task (issue #13).
        """
        loop = asyncio.get_running_loop()
        while True:
            self.heap_changed.clear()
            timer = None
            if self.heap:
                delay = self.heap[0][0] - time.monotonic()
                if delay <= 0:
                    _, _, flight = heapq.heappop(self.heap)
                    await self.polls.put((flight,))
                    continue
                timer = loop.call_later(delay, self.heap_changed.set)
            try:
                await self.heap_changed.wait()
            finally:
                if timer is not None:
                    timer.cancel()

    async def committer(self) -> None:
        """Commits deferred `completed` transitions within DEFER_S when nothing else does."""
        while True:
            await asyncio.sleep(DEFER_S)
            try:
                self.journal.commit()
            except OmniBatchError as exc:  # e.g. the disk filled up
                self.fail_fatal(exc)
                return

    async def pool_worker(
        self, queue: asyncio.Queue[Any], handle: Callable[..., Awaitable[None]]
    ) -> None:
        """One worker of a bounded pool (polls or downloads). An error that escapes a handler
        (AuthError, OutputError, or a bug) ends the run, rather than hanging it on a lost job."""
        while True:
            item = await queue.get()
            try:
                await handle(*item)
            except JobTaken as exc:  # a shared run: another runner settled it first
                self.log(str(exc))
                await self.release(item[0].job_id)
            except Exception as exc:
                self.fail_fatal(exc)
            finally:
                queue.task_done()

    async def poll(self, flight: Flight) -> None:
        acct = self.account_of(flight)
        if acct.retired:  # its key was refused: never polled with another; left for later
            return await self._leave(flight)
        try:
            state = await self.status_call(flight.task_id, acct)
        except AuthError as exc:
            await self.retire(acct, exc)
            return await self._leave(flight)
        except RequestRejected as exc:
            kind = exc.error_type or f"http_{exc.status}"
            # a 404 is believed: the task is polled with a key of the account that created it
            # (journaled accounts are recognised by their keys' fingerprints on resume, never
            # by name or place: accounts.recognise), so it is not another account's 404
            gone = "gone" if exc.status == 404 else None  # another 4xx: the task may be fine
            return await self._fail(
                flight, flight.state, kind, exc.message, exc.status, exc.request_id, gone
            )
        except (ApiError, TransportError) as exc:
            if isinstance(exc, NotSent):  # no connection, after a few quick tries: stop
                self.fail_fatal(self.unreachable(exc))
                return
            self.log(f"{flight.job_id}: status call failed ({exc}); trying again later")
            if flight.track is not None:
                self.planner.unanswered(flight.track)
            return await self._next_poll(flight)
        await self.on_state(flight, state)

    async def on_state(self, flight: Flight, state: TaskState) -> None:
        """What one status answer means for the job: download, fail, or poll again later."""
        flight.polls += 1
        flight.status = state.status
        if flight.track is not None:
            self.planner.observe(flight.track, time.monotonic(), state.status, state.progress)
        if state.status == "completed":
            if not state.video_url:
                message = "completed without a video URL"
                return await self._fail(
                    flight, flight.state, "no_video_url", message, 200, state.request_id
                )
            self.journal.mark_downloading(
                # completion as this machine saw it: the API's `completed_at` is whole seconds
                # on another clock, which made latencies negative
                flight.job_id,
                state.video_url,
                state.expires_at,
                time.time(),
                flight.polls,
            )
            self._moved(flight.state, "downloading")
            flight.state = "downloading"
            return await self.downloads.put((flight, state.video_url))
        if state.status == "failed":
            message = state.error_message or "generation failed"
            kind = state.error_code or "generation_failed"
            return await self._fail(
                flight, flight.state, kind, message, 200, state.request_id, "failed"
            )
        await self._next_poll(flight)

    async def _next_poll(self, flight: Flight) -> None:
        now = time.monotonic()
        if now > flight.deadline:
            return await self._timeout(flight)
        if flight.track is None:  # pragma: no cover - every flight gets a track
            flight.track = self.planner.track(("", 0, ""), now)
        self.schedule(flight, self.planner.next(flight.track, now, flight.deadline))

    async def _timeout(self, flight: Flight) -> None:
        message = (
            f"not finished after {self.policy.max_wait:g} s (task id kept; a later run resumes it)"
        )
        await self._fail(flight, flight.state, "wait_timeout", message, None, None)

    async def _fail(
        self,
        flight: Flight,
        old: str,
        kind: str,
        message: str,
        status: int | None,
        request_id: str | None,
        task: str | None = None,
    ) -> None:
        """``task``: "failed" when the API said the generation failed (refunded), "gone" on a
        404; None when the task may still hold a paid video (the next run polls it again)."""
        if self.spend is not None and task == "failed":
            self.spend.refunded(flight.job_id)
        self.journal.mark_failed(
            flight.job_id,
            error_type=kind,
            message=message,
            http_status=status,
            request_id=request_id,
            polls=flight.polls,
            task=task,
        )
        self._moved(old, "failed")
        await self.release(flight.job_id)

    # -- downloading ------------------------------------------------------------------------------
    async def _already_stored(self, job_id: str) -> Stored | None:
        """The job's video when a store elsewhere (an object store) already holds it whole:
        one HEAD, off the event loop. A local store is not asked: its puts replace, and
        resume already found the videos a crash left unrecorded (`resume`)."""
        if self.store.local_path(job_id) is not None:
            return None
        size = await asyncio.to_thread(self.store.size, job_id)
        return Stored(job_id, size) if size else None

    async def fetch(self, flight: Flight, url: str) -> None:
        if flight.on_disk is None:  # stored by an earlier attempt or runner: never fetched again
            flight.on_disk = await self._already_stored(flight.job_id)
        if flight.on_disk is not None:
            return await self._completed(flight, flight.on_disk)
        p = self.policy
        try:
            got = await retried(
                lambda: p.download_retrying((RetryableDownload,)),
                lambda: download(
                    self.session,
                    url,
                    self.store,
                    flight.job_id,
                    max_bytes=p.max_download_bytes,
                    time_limit=p.download_timeout,
                    guard=self.video_guard,
                ),
            )
        except DownloadError as exc:
            if exc.expired and not flight.refreshed:
                flight.refreshed = True  # one status call for a fresh link; the task stays done
                acct = self.account_of(flight)
                if acct.retired:  # no key of its account left: a later run asks
                    return await self._leave(flight)
                try:
                    state = await self.status_call(flight.task_id, acct)
                except AuthError as err:
                    await self.retire(acct, err)
                    return await self._leave(flight)
                except NotSent as err:  # the API is gone: stop; the task stays downloading
                    self.fail_fatal(self.unreachable(err))
                    return await self._leave(flight)
                except (ApiError, TransportError) as err:
                    state = None
                    exc = DownloadError(
                        f"{exc.message}; asking for a fresh link failed: {err}", status=exc.status
                    )
                if state is not None and state.video_url:
                    return await self.fetch(flight, state.video_url)
            kind = exc.kind or ("link_expired" if exc.expired else "download_failed")
            message = self.client.redact(exc.message)  # it may quote the video host's headers
            return await self._fail(flight, "downloading", kind, message, exc.status, None)
        except AlreadyStored:  # a create-only store kept the copy stored first: record that one
            size = await asyncio.to_thread(self.store.size, flight.job_id)
            if not size:
                raise
            got = Stored(flight.job_id, size)
        await self._completed(flight, got)

    async def _completed(self, flight: Flight, got: Stored) -> None:
        check = None
        if self.verify:  # decode it and check it is what was asked; a mismatch is flagged
            check = await asyncio.get_running_loop().run_in_executor(
                self.prober,
                functools.partial(probe_stored, self.store, got.name, *flight.asked, poster=True),
            )
        self.journal.mark_completed(flight.job_id, self.store.link(got.name), got.size, check)
        self._moved("downloading", "completed")
        await self.release(flight.job_id)

    # -- the run ----------------------------------------------------------------------------------
    async def take_up(self, row: JobRow) -> bool:
        """Poll (or download) a job another runner's or an earlier workflow left `running` or
        `downloading`, as ``resume`` does for the jobs of a folder; False when its account is
        not configured here (left as it is) or the engine already holds it."""
        account = self.account_named(row.account)
        if account is None or row.job_id in self.job_account:
            return False
        self.claim(row.job_id, account)
        flight, link = self._resumed_flight(row)
        if link is not None:
            await self.downloads.put((flight, link))  # a stored copy is found by `fetch`
        else:
            self.schedule(flight, 0)
        return True

    def _resumed_flight(self, row: JobRow) -> tuple[Flight, str | None]:
        """A job left `running` or `downloading` as a Flight, and the link to download its
        video from when it finished and the link is still fresh (None: poll it)."""
        # its age (the journal's wall-clock submit time) lets the planner place its polls
        age = time.time() - row.submitted_at if row.submitted_at else 0.0
        flight = self._flight(
            row,
            row.task_id or "",
            submitted=time.monotonic() - max(0.0, age),
            polls=row.polls,
            state=row.state,
        )
        url = row.video_url or ""
        fresh = bool(url) and (row.expires_at or 0) > time.time()
        return flight, url if row.state == "downloading" and fresh else None

    def resume(self) -> tuple[list[tuple[JobRow, bool]], list[tuple[Flight, str]]]:
        """Re-enter what a previous process left in flight (at most its in-flight cap of jobs):
        returns (submits to settle, downloads to finish); running tasks go on the poll heap."""
        settle, downloads = [], []
        left: dict[str, int] = {}
        for row in self.journal.in_flight():
            account = self.account_named(row.account)
            if account is None:  # never polled or settled with another account's key
                left[row.account or ""] = left.get(row.account or "", 0) + 1
                continue
            self.claim(row.job_id, account)
            if row.state == "submitting":
                settle.append((row, True))
                continue
            flight, link = self._resumed_flight(row)
            if row.state == "downloading" and (size := self.store.size(row.job_id)):
                # put whole into the store, its `completed` lost to a crash: nothing to fetch
                flight.on_disk = Stored(row.job_id, size)
                downloads.append((flight, row.video_url or ""))
            elif link is not None:
                downloads.append((flight, link))  # no status call on a finished task
            else:
                self.schedule(flight, 0)  # running, or a link that needs refreshing
        for name, n in left.items():
            self.log(
                f"account {name} is not configured: its {n} job(s) in flight are left as they "
                "are for a later run with its key"
            )
        return settle, downloads

    async def run(
        self, stop: asyncio.Event, feed: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Until every job is settled, or ``stop``. ``feed``: what hands jobs to the
        submitter instead of its feeder reading pending jobs (a shared run's workflows,
        running/durable.py, which also take up what is in flight: no resume here)."""
        settle, downloads = self.resume() if feed is None else ([], [])
        workers: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.dispatcher()),
            asyncio.create_task(self.committer()),
        ]
        pools: list[tuple[asyncio.Queue[Any], Callable[..., Awaitable[None]], int]] = [
            (self.polls, self.poll, self.n_poll),
            (self.downloads, self.fetch, self.n_download),
        ]
        for queue, handle, size in pools:
            workers += [asyncio.create_task(self.pool_worker(queue, handle)) for _ in range(size)]
        submitters = [
            asyncio.create_task(self.submitter.submit_worker()) for _ in range(self.n_submit)
        ]

        async def settle_then_feed() -> None:
            try:
                for item in downloads:
                    await self.downloads.put(item)
                for job in settle:
                    self._unclaim(job[0].job_id)  # the submit worker claims it again
                    await self.submitter.submits.put(job)
                if feed is None:
                    await self.submitter.feeder()
                else:
                    try:
                        await feed()
                    finally:
                        self.submitter.feeding = False
                        self.check_idle()
            except Exception as exc:  # e.g. the journal became unreadable: end the run
                self.fail_fatal(exc)

        feeder = asyncio.create_task(settle_then_feed())
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self.idle.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() and self.fatal is None:
                self.stopping = True
                self.halt.set()
                self._say(
                    "stopping: no new submissions; the journal keeps every task for a later run"
                )
        finally:
            # Bounded at every step (a signal must end the process within 10 s): nothing here
            # waits for the network beyond SUBMIT_GRACE_S, or for a task beyond CANCEL_WITHIN_S.
            self.stopping = self.stopping or self.fatal is not None
            self.halt.set()
            feeder.cancel()
            async with self.capacity:
                self.capacity.notify_all()
            critical = self.submitter.critical
            under_way = set(critical)  # one may end while its worker is cancelled
            await cancel_and_wait(submitters, CANCEL_WITHIN_S)
            await self._settle_submits(under_way | critical, SUBMIT_GRACE_S)
            stuck = await cancel_and_wait(
                [*workers, *waits, *self.background, *self.submitter.probes, feeder],
                CANCEL_WITHIN_S,
            )
            if stuck:  # pragma: no cover - a task that ignores every cancel: leave it behind
                self._say(f"stopping: {stuck} tasks did not stop; leaving them")
            # a probe still decoding finishes on its own thread; nothing waits for it
            self.prober.shutdown(wait=False, cancel_futures=True)
        if self.fatal is not None:
            raise self.fatal
        if self.submits_throttled is not None and not stop.is_set():
            raise self.submits_throttled

    async def _settle_submits(self, submits: set[asyncio.Task[None]], grace: float) -> None:
        """Let submits already under way be answered and recorded (they send nothing new), for
        at most ``grace`` seconds; then cancel them. A cancelled one stays `submitting` in the
        journal, committed before its POST, so the next run reconciles it: its task, if one was
        created, is neither lost nor sent again blindly."""
        if not submits:
            return
        done, late = await asyncio.wait(submits, timeout=grace)
        for task in done:  # their workers are gone: an error (a full disk) is ours to report
            if isinstance(error := _outcome(task), Exception):
                self.fail_fatal(error)
        if late:
            self._say(
                f"stopping: {len(late)} submits unanswered after {grace:g} s are left "
                "`submitting`; the next run settles them"
            )
            await cancel_and_wait(late, CANCEL_WITHIN_S)

    def _say(self, message: str) -> None:
        """log() for shutdown: a journal that cannot be written (full disk) must not stop it."""
        with contextlib.suppress(OmniBatchError):
            self.log(message)
