"""How a run runs, as values: ``RunOptions`` (one field per `omni-batch run` flag) and ``Policy``
(every timing and retry rule, per error class). Every default is written here, once.

Which failures are retried, how often and how long to wait: tenacity strategies built from a
``Policy`` so tests and benchmarks can shrink every delay without touching the engine.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import (
    DoAttempt,
    DoSleep,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from omni_batch.errors import Ambiguous, BadResponse, NotAccepted, NotSent, ServerError, UsageError
from omni_batch.running.budgets import DEFAULT_TIER, MAX_IN_FLIGHT

if TYPE_CHECKING:
    from omni_batch.planning.catalog import Catalog

T = TypeVar("T")

# Safe to send again as it is: the request provably created nothing (no connection was made,
# or a 503 said the submit limiter refused it). Any other 5xx, a timeout or a lost answer may
# hide a created task: the submitter settles those (reconcile, or resend flagged), never here.
SUBMIT_RETRYABLE = (NotSent, NotAccepted)
# A status call changes nothing upstream, so any transient failure may be retried.
POLL_RETRYABLE = (NotSent, ServerError, Ambiguous, BadResponse)


MB = 1_000_000  # --max-video-mb counts decimal megabytes


@dataclass(frozen=True)
class Policy:
    """Every timing knob of a run. Defaults follow the ToAPIs polling advice."""

    first_poll: float = 5.0  # seconds after submit
    poll_interval: float = 10.0
    queued_factor: float = 1.5  # poll less often while a task is still queued
    jitter: float = 0.2  # ± fraction applied to each poll interval
    max_wait: float = 900.0  # give up on a task (keeping its id) after this long
    # poll economy (omni_batch.running.polling): polls planned from progress and learned timings;
    # plan_polls=False polls at first_poll, then every poll_interval (--poll-interval)
    plan_polls: bool = True
    poll_min_interval: float = 5.0  # never two status calls for one task closer than this
    poll_slack: float = 12.0  # a completion known within this is polled once, at its end
    poll_max_gap: float = 180.0  # never longer than this between two polls of a task
    # submit-to-completion times assumed before any task of a kind finished (documented
    # 1-5 min, widened down to 30 s), and how long a task may wait queued before it starts
    gen_prior: tuple[float, float] = (30.0, 300.0)
    queue_allowance: float = 15.0
    retries: int = 3  # for 5xx, timeouts, connection resets
    retry_initial: float = 0.5
    retry_max: float = 4.0
    max_rate_limited: int = 50  # 429s tolerated for one call before its job fails
    # after an ambiguous submit (5xx, timeout, lost answer) that no proven lookup can settle:
    # how many times it is sent again, flagged possible_duplicate, before the job fails
    ambiguous_resends: int = 1
    # a client_business_id lookup that answers 404 is trusted only this long after the POST
    # (the lookup may lag behind the create); it is asked again before anything is resent
    lookup_grace: float = 10.0
    unrecognised_in_a_row: int = 3  # submit answers without a task id before the run stops
    max_retry_after: float = 60.0  # a longer Retry-After is cut to this (and logged)
    max_throttled_s: float = 600.0  # only 429s for this long, no other answer: the run stops
    # after a concurrency 429 lowered the in-flight cap: how long without another before each
    # finished task raises it by one again
    cap_calm: float = 30.0
    download_retries: int = 3
    request_timeout: float = 30.0
    download_timeout: float = 300.0
    max_download_bytes: int = 2048 * MB  # --max-video-mb

    def scaled(self, **changes: Any) -> Policy:
        return replace(self, **changes)

    def _retrying(self, kinds: tuple[type[BaseException], ...], attempts: int) -> Retrying:
        return Retrying(
            stop=stop_after_attempt(attempts + 1),
            wait=wait_exponential(multiplier=self.retry_initial, max=self.retry_max)
            + wait_random(0, self.retry_initial),
            retry=retry_if_exception_type(kinds),
            reraise=True,
        )

    def submit_retrying(self) -> Retrying:
        return self._retrying(SUBMIT_RETRYABLE, self.retries)

    def poll_retrying(self) -> Retrying:
        return self._retrying(POLL_RETRYABLE, self.retries)

    def download_retrying(self, kinds: tuple[type[BaseException], ...]) -> Retrying:
        return self._retrying(kinds, self.download_retries)


FAST = Policy(
    first_poll=0.3,
    poll_interval=0.3,
    jitter=0.1,
    max_wait=120.0,
    # the planner's timings at 1/100 of the real ones (tasks of the fast profile end before
    # the first poll at 0.3 s, as they did with the fixed cadence)
    poll_min_interval=0.05,
    poll_slack=0.12,
    poll_max_gap=1.8,
    gen_prior=(0.3, 3.0),
    queue_allowance=0.15,
    retry_initial=0.05,
    retry_max=0.3,
    lookup_grace=1.0,
    max_retry_after=2.0,
    max_throttled_s=5.0,
    cap_calm=1.0,
)
"""Timings for the embedded simulator, whose generations take about a second."""


async def retried(rules: Callable[[], Retrying], call: Callable[[], Awaitable[T]]) -> T:
    """``await call()`` under the rules ``rules()`` builds: tenacity decides which failures are
    tried again, how often and after how long.

    Nearly every call succeeds at once, so the first attempt runs outside tenacity (its
    bookkeeping cost about 25 µs a call, three calls a job) and the rules are built only on a
    failure, which becomes attempt 1 of tenacity's own iteration, as if tenacity had made it.
    """
    try:
        return await call()
    except Exception:
        retrying = rules()
        state = RetryCallState(retrying, fn=None, args=(), kwargs={})
        state.set_exception(sys.exc_info())  # type: ignore[arg-type]
    retrying.begin()
    while True:
        do = retrying.iter(state)
        if isinstance(do, DoAttempt):
            try:
                result = await call()
            except Exception:
                state.set_exception(sys.exc_info())  # type: ignore[arg-type]
            else:
                state.set_result(result)
        elif isinstance(do, DoSleep):
            state.prepare_for_next_attempt()
            await asyncio.sleep(do)
        else:
            return do


# The range of every numeric run flag, written once: RunOptions checks its fields against it and
# the CLI's click types are made from it. (lowest, whether the lowest itself is refused)
RANGES: dict[str, tuple[float, bool]] = {
    "submit_rate": (0, True),
    "query_rate": (0, True),
    "rate": (0, True),
    "max_in_flight": (1, False),
    "poll_interval": (0, True),
    "max_wait": (0, True),
    "lookup_grace": (0, False),
    "max_video_mb": (0, True),
    "limit": (0, False),
    "max_jobs": (1, False),
    "dead_after": (0, True),
}


def range_problem(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the run option ``name`` (None when it can, or is unset)."""
    if value is None or name not in RANGES:
        return None
    low, open_ = RANGES[name]
    whole = name in ("max_in_flight", "limit", "max_jobs")
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        return f"{name}: {value!r} is not {'a whole number' if whole else 'a number'}"
    if value < low or (open_ and value == low) or value != value:  # NaN: never in range
        return f"{name}: {value!r} must be {'above' if open_ else 'at least'} {low:g}"
    return None


@dataclass
class RunOptions:
    """How to run; one field per `omni-batch run` flag (``--poll-interval`` → ``poll_interval``),
    and every field has a sensible default for the real API.

    The CLI's own flags (``--yes``, ``--no-progress``, ``--json``) are about the terminal and
    have no field; ``--no-preflight`` is ``preflight=False``, ``--no-verify`` ``verify=False``.
    """

    out: Path | str | None = None  # default: outputs/<manifest name>/
    # where the videos and posters go: ``s3://BUCKET/PREFIX`` (endpoint and credentials from
    # the AWS_* environment only); default: the one an earlier run in the folder used, else
    # the output folder's videos/ and posters/ (the journal and reports stay in the folder)
    store: str | None = None
    # a simulator profile: run against the embedded simulator (``--simulate``)
    simulate: str | None = None
    # simulator knobs: ``{"gen_max": 200}`` or ``["gen_max=200"]`` (``--sim-set``)
    sim_set: Mapping[str, Any] | Sequence[str] = ()
    base_url: str | None = None  # default: $TOAPIS_BASE_URL, else https://toapis.com
    # several accounts (issue #14 item 8): a keys file with one KEY or ACCOUNT=KEY a line
    keys_file: str | Path | None = None
    # Rate budgets of the account, requests per second (issue #14): by default the published
    # limits of `tier` (submit 5/s, status calls 50/s on the default tier), corrected by the
    # API's own X-RateLimit-* headers. `rate`: one budget shared by every call (a gateway with
    # a single limit); it replaces the tier's unless submit_rate / query_rate are given too.
    tier: str = DEFAULT_TIER
    submit_rate: float | None = None
    query_rate: float | None = None
    rate: float | None = None
    max_in_flight: int = MAX_IN_FLIGHT
    # timings; None: the policy's (the documented ones, or the simulator profile's)
    poll_interval: float | None = None  # a fixed cadence instead of polls planned from progress
    max_wait: float | None = None  # give up on a task (its id kept) after this many seconds
    lookup_grace: float | None = None
    max_video_mb: float | None = None  # default: Policy.max_download_bytes (2048 MB)
    retry_failed: bool = False
    reconcile: bool | None = None  # look ambiguous submits up by client_business_id
    catalog: Catalog | str | Path | None = None
    verify: bool = True  # decode every video and check it (and make its gallery poster)
    # a slice of the manifest (the rest stays pending for a later run in the same folder):
    limit: int | None = None  # at most this many new submits this run (resumed jobs not counted)
    # NAME → values (a template variable, a tag, aspect_ratio or duration): only the jobs that
    # match every NAME (any of its values), e.g. {"product": ["shoe", "bag"]}, or the CLI's
    # ["product=shoe", "product=bag"]
    only: Mapping[str, Sequence[str] | str] | Sequence[str] | None = None
    # money (issue #15): a short balance runs what it pays for instead of refusing
    allow_partial: bool = False
    # before the first submit, check the balance and the model list (an API without those
    # endpoints skips them with a note); skipped with --simulate unless its balance_credits
    # knob is set (``--no-preflight``: False)
    preflight: bool = True
    max_jobs: int | None = None  # refuse a manifest of more jobs [default: budget.max_jobs]
    # several runners on several machines (issue #18): the run's journal in PostgreSQL
    # (``postgresql://USER@HOST:PORT/DB``, ``--journal``) shared by every runner started with
    # it and the same ``run_name`` (``--run``, default: the manifest's name); the videos then go
    # to an object store (``store``). ``runner``: this process's id (default host-pid);
    # ``dead_after``: seconds of silence after which a runner's work is taken up by the others
    journal: str | None = None
    run_name: str | None = None
    runner: str | None = None
    dead_after: float = 15.0
    # library only (no flag):
    api_key: str | None = None  # default: $TOAPIS_API_KEYS, else $TOAPIS_API_KEY
    # KEY or ACCOUNT=KEY items, comma-separated (the TOAPIS_API_KEYS syntax); wins over api_key
    api_keys: str | None = None
    policy: Policy | None = None  # the base the timing fields above change
    report_every: float = 30.0  # seconds between report refreshes during a run
    # the old name of sim_set (a mapping), still accepted
    simulator_settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, **fields: Any) -> RunOptions:
        """RunOptions from keyword arguments, a misspelt name refused in one line (with the
        closest field) instead of Python's TypeError."""
        from dataclasses import fields as declared

        from omni_batch.planning.problems import suggest

        names = [f.name for f in declared(cls)]
        for name in fields:
            if name not in names:
                raise UsageError(f"RunOptions has no field {name!r}{suggest(name, names)}")
        return cls(**fields)

    def __post_init__(self) -> None:
        for name in RANGES:
            if problem := range_problem(name, getattr(self, name)):
                raise UsageError(problem)

    @property
    def sliced(self) -> bool:
        return self.limit is not None or bool(self.only)

    def timed(self, base: Policy) -> Policy:
        """``base`` with the timing fields given here (--poll-interval, --max-wait,
        --lookup-grace, --max-video-mb) applied."""
        policy = base
        if self.poll_interval is not None:
            policy = policy.scaled(
                poll_interval=self.poll_interval,
                first_poll=min(policy.first_poll, self.poll_interval),
                plan_polls=False,
            )
        if self.max_wait is not None:
            policy = policy.scaled(max_wait=self.max_wait)
        if self.lookup_grace is not None:
            policy = policy.scaled(lookup_grace=self.lookup_grace)
        if self.max_video_mb is not None:
            policy = policy.scaled(max_download_bytes=int(self.max_video_mb * MB))
        return policy
