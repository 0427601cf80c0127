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
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from omni_batch.client import TaskState, ToapisClient
from omni_batch.download import (
    Downloaded,
    DownloadError,
    LocalStore,
    RetryableDownload,
    download,
)
from omni_batch.errors import (
    ApiError,
    AuthError,
    OmniBatchError,
    QuotaError,
    RateLimited,
    RequestRejected,
    ThrottledTooLong,
    TransportError,
)
from omni_batch.journal import DEFER_S, JobRow, Journal
from omni_batch.limiter import Pressure
from omni_batch.netguard import VideoGuard
from omni_batch.policy import Policy, retried
from omni_batch.submit import LookupProof, Stopping, Submitting
from omni_batch.verify import probe

T = TypeVar("T")

# On a stop (a signal, a fatal error), how long a submit already sent gets to be answered and
# recorded; one still unanswered then is cancelled and stays `submitting` (committed before its
# POST), so the next run reconciles it. Keeps the whole shutdown well inside 10 s.
SUBMIT_GRACE_S = 4.0
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
    on_disk: Downloaded | None = None  # resume found its video whole in place: no download


@dataclass
class RunStats:
    """Live counters for the progress display; the journal stays the truth."""

    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0  # completed or failed during this process
    rate_limited: int = 0
    messages: list[str] = field(default_factory=list)  # the last 20
    logged: int = 0  # messages ever logged, so a reader knows how many it missed
    spend: Any = None  # money.Spend: spent and projected, for the display (issue #15)

    def move(self, old: str | None, new: str) -> None:
        if old:
            self.counts[old] = self.counts.get(old, 0) - 1
        self.counts[new] = self.counts.get(new, 0) + 1
        if new in ("completed", "failed"):
            self.finished_here += 1


class Engine(Submitting):
    def __init__(
        self,
        journal: Journal,
        client: ToapisClient,
        session: aiohttp.ClientSession,
        store: LocalStore,
        pressure: Pressure,
        policy: Policy,
        *,
        reconcile: bool = False,
        verify: bool = True,
        submit_workers: int = 8,
        poll_workers: int = 8,
        download_workers: int = 4,
        rng: random.Random | None = None,
    ):
        self.journal, self.client, self.session, self.store = journal, client, session, store
        self.pressure, self.policy, self.reconcile = pressure, policy, reconcile
        self.verify = verify  # decode every download (and make its poster) before completing
        # one thread decodes: probes queue behind each other instead of fighting over the GIL
        self.prober = ThreadPoolExecutor(1, thread_name_prefix="omni-batch-probe")
        self.rng = rng or random.Random()
        self.stats = RunStats(counts=journal.counts())
        self.cap = pressure.max_in_flight
        self.n_submit, self.n_poll, self.n_download = submit_workers, poll_workers, download_workers
        self.active = 0  # jobs between claim and terminal state
        self.claimed = 0  # submissions taken off the queue and not yet settled
        self.critical: set[asyncio.Task[None]] = set()  # submits that must finish, even on stop
        # until one call proves the key (and the balance), submits go one at a time, so a
        # wrong key costs one 401, not one per worker
        self.key_proven = asyncio.Event()
        self.probe = asyncio.Lock()
        self.capacity = asyncio.Condition()
        self.submits: asyncio.Queue[tuple[JobRow, bool]] = asyncio.Queue(maxsize=submit_workers)
        self.polls: asyncio.Queue[tuple[Flight]] = asyncio.Queue(maxsize=poll_workers)
        self.downloads: asyncio.Queue[tuple[Flight, str]] = asyncio.Queue(maxsize=max(1, self.cap))
        self.heap: list[tuple[float, int, Flight]] = []
        self.heap_changed = asyncio.Event()
        self.order = itertools.count()
        self.idle = asyncio.Event()
        self.feeding = True
        self.stopping = False  # Ctrl-C: send nothing new, and stop polling
        self.halt = asyncio.Event()  # no new submit may leave (Ctrl-C, 402, a fatal error)
        self.quota_hit: OmniBatchError | None = None  # why submitting stopped (402, ...)
        self.proof = LookupProof()
        self.background: set[asyncio.Task[None]] = set()  # lookup probes; cancelled at the end
        self.unrecognised_streak = 0  # submit answers in a row without a task id
        self.fatal: BaseException | None = None
        self.run_key = journal.meta("run_key") or "run"
        self.video_guard = VideoGuard(client.root)  # videos: public hosts, or the API's own
        # per kind of call (submit: True, status: False), the first 429 since another answer;
        # the API budgets the two apart, so one may be shut while the other flows
        self.throttled_since: dict[bool, float | None] = {True: None, False: None}
        self.submits_throttled: ThrottledTooLong | None = None
        self.cap_logged = -math.inf  # when a capped Retry-After was last logged
        self.spend: Any = None  # money.Spend (issue #15): the runner sets it

    # -- bookkeeping ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.stats.messages.append(message)
        self.stats.logged += 1
        del self.stats.messages[:-20]
        self.journal.event("log", message=message)

    def _moved(self, old: str | None, new: str) -> None:
        self.stats.move(old, new)

    async def _release(self) -> None:
        async with self.capacity:
            self.active -= 1
            self.capacity.notify()  # one slot freed: wake one waiting submit worker, not all
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.feeding and self.active == 0 and self.claimed == 0 and self.submits.empty():
            self.idle.set()

    def schedule(self, flight: Flight, delay: float) -> None:
        jittered = delay * (1 + self.policy.jitter * (2 * self.rng.random() - 1))
        heapq.heappush(self.heap, (time.monotonic() + max(0.0, jittered), next(self.order), flight))
        self.heap_changed.set()

    def _fail_fatal(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
            self.stopping = True
            self.halt.set()
            self.idle.set()

    # -- calls under pressure -------------------------------------------------------------------
    async def _pressured(self, call: Callable[[], Awaitable[T]], *, submit: bool = False) -> T:
        """One API call under the shared rate; 429s pause everyone and are tried again."""
        last: RateLimited | None = None
        for _ in range(self.policy.max_rate_limited):
            if submit and self.pressure.submit_ready() and not self.halt.is_set():
                await self.pressure.submit_permit()  # free now: nothing to race against halt
            elif submit:
                await self._unless_halted(self.pressure.submit_permit())
            else:
                await self.pressure.poll_permit()
            try:
                result = await call()
            except RateLimited as exc:
                self.key_proven.set()
                self.stats.rate_limited += 1
                self._still_throttled(submit)
                self.pressure.throttled(self._capped(exc.retry_after))
                last = exc
                continue
            except (AuthError, QuotaError):
                raise
            except ApiError:
                self.key_proven.set()
                self.throttled_since[submit] = None
                self.pressure.succeeded()
                raise
            self.key_proven.set()
            self.throttled_since[submit] = None
            self.pressure.succeeded()
            return result
        assert last is not None
        raise last

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
            self._fail_fatal(ended)
            raise ended
        if self.submits_throttled is None:
            self.submits_throttled = ended
            self.log(f"{ended}; finishing {self.active} in flight")
        self.halt.set()  # like a 402: nothing new is sent, what is in flight is finished
        raise Stopping()  # a refused submit created nothing: its job goes back to pending

    async def _status_call(self, task_id: str) -> TaskState:
        return await retried(
            self.policy.poll_retrying,
            lambda: self._pressured(lambda: self.client.status(task_id)),
        )

    def _flight(self, row: JobRow, task_id: str, **kw: Any) -> Flight:
        asked = (row.body["aspect_ratio"], row.body["duration"])
        return Flight(
            row.job_id, task_id, time.monotonic() + self.policy.max_wait, asked=asked, **kw
        )

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
                self._fail_fatal(exc)
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
            except Exception as exc:
                self._fail_fatal(exc)
            finally:
                queue.task_done()

    async def poll(self, flight: Flight) -> None:
        try:
            state = await self._status_call(flight.task_id)
        except RequestRejected as exc:
            kind = exc.error_type or f"http_{exc.status}"
            gone = "gone" if exc.status == 404 else None  # another 4xx: the task may be fine
            return await self._fail(
                flight, flight.state, kind, exc.message, exc.status, exc.request_id, gone
            )
        except (ApiError, TransportError) as exc:
            if isinstance(exc, AuthError):
                raise
            self.log(f"{flight.job_id}: status call failed ({exc}); trying again later")
            return await self._next_poll(flight)
        await self.on_state(flight, state)

    async def on_state(self, flight: Flight, state: TaskState) -> None:
        """What one status answer means for the job: download, fail, or poll again later."""
        flight.polls += 1
        flight.status = state.status
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
        if time.monotonic() > flight.deadline:
            return await self._timeout(flight)
        factor = self.policy.queued_factor if flight.status == "queued" else 1.0
        self.schedule(flight, self.policy.poll_interval * factor)

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
        if self.spend is not None:
            if task == "failed":
                self.spend.refunded(flight.job_id)
            self.spend.final(flight.job_id)  # out of flight: nothing more to refund this run
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
        await self._release()

    # -- downloading ------------------------------------------------------------------------------
    async def fetch(self, flight: Flight, url: str) -> None:
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
                try:
                    state = await self._status_call(flight.task_id)
                except AuthError:
                    raise
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
        await self._completed(flight, got)

    async def _completed(self, flight: Flight, got: Downloaded) -> None:
        relative = self.store.relative(got.path)
        check = None
        if self.verify:  # decode it and check it is what was asked; a mismatch is flagged
            poster = self.store.poster_path(flight.job_id)
            check = await asyncio.get_running_loop().run_in_executor(
                self.prober, functools.partial(probe, got.path, *flight.asked, poster_to=poster)
            )
        self.journal.mark_completed(flight.job_id, relative, got.size, check)
        if self.spend is not None:
            self.spend.final(flight.job_id)  # a completed task is never refunded
        self._moved("downloading", "completed")
        await self._release()

    # -- the run ----------------------------------------------------------------------------------
    def resume(self) -> tuple[list[tuple[JobRow, bool]], list[tuple[Flight, str]]]:
        """Re-enter what a previous process left in flight (at most its in-flight cap of jobs):
        returns (submits to settle, downloads to finish); running tasks go on the poll heap."""
        settle, downloads = [], []
        for row in self.journal.in_flight():
            self.active += 1
            if row.state == "submitting":
                settle.append((row, True))
                continue
            flight = self._flight(row, row.task_id or "", polls=row.polls, state=row.state)
            fresh = row.video_url and (row.expires_at or 0) > time.time()
            if row.state == "downloading" and (found := self.store.on_disk(row.job_id)):
                # renamed into place whole, its `completed` lost to a crash: nothing to fetch
                flight.on_disk = found
                downloads.append((flight, row.video_url or ""))
            elif row.state == "downloading" and fresh:
                downloads.append((flight, row.video_url))  # no status call on a finished task
            else:
                self.schedule(flight, 0)  # running, or a link that needs refreshing
        return settle, downloads

    async def run(self, stop: asyncio.Event) -> None:
        settle, downloads = self.resume()
        workers: list[asyncio.Task[Any]] = [
            asyncio.create_task(self.dispatcher()),
            asyncio.create_task(self.committer()),
        ]
        pools = [
            (self.polls, self.poll, self.n_poll),
            (self.downloads, self.fetch, self.n_download),
        ]
        for queue, handle, size in pools:
            workers += [asyncio.create_task(self.pool_worker(queue, handle)) for _ in range(size)]
        submitters = [asyncio.create_task(self.submit_worker()) for _ in range(self.n_submit)]

        async def settle_then_feed() -> None:
            try:
                for item in downloads:
                    await self.downloads.put(item)
                for item in settle:
                    self.active -= 1  # the submit worker claims it again
                    await self.submits.put(item)
                await self.feeder()
            except Exception as exc:  # e.g. the journal became unreadable: end the run
                self._fail_fatal(exc)

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
            under_way = set(self.critical)  # one may end while its worker is cancelled
            await cancel_and_wait(submitters, CANCEL_WITHIN_S)
            await self._settle_submits(under_way | self.critical, SUBMIT_GRACE_S)
            stuck = await cancel_and_wait(
                [*workers, *waits, *self.background, feeder], CANCEL_WITHIN_S
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
                self._fail_fatal(error)
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
