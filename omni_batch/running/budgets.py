"""Rate budgets of one API account: a submit budget and a query budget (the two categories
ToAPIs counts apart), or one shared budget for gateways with a single limit.

Each budget is one leaky bucket (aiolimiter) whose rate changes in place, so callers already
waiting see a new rate or a pause at once; waiters are served first come, first served, and
submits and status calls never wait on each other. The rate comes from the tier or the user,
and is corrected from the server's own `X-RateLimit-*` headers when it sends them; without
headers, 429s lower it and calm raises it back.

Several runners on one account share its rates through ``Account.share`` (issue #18): each
budget then also takes a slot of a row in PostgreSQL (running/shared_pace.py) after its own
pacer, at the rate its pacer has come to, and a pause of one runner's budget holds them all.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiolimiter import AsyncLimiter

if TYPE_CHECKING:
    from omni_batch.running.shared_pace import SharedSlots

SUBMIT = "async_submit"
QUERY = "async_query"
CATEGORIES = (SUBMIT, QUERY)

# Published per-account limits (toapis-contract.md, revision of 2026-08): requests per second.
TIERS: Mapping[str, tuple[float, float]] = {
    "default": (300 / 60, 3000 / 60),
    "vip": (1000 / 60, 10_000 / 60),
    "svip": (2000 / 60, 30_000 / 60),
}
DEFAULT_TIER = "default"
# Tasks submitted and not yet finished, at most. No concurrency limit is published, and at the
# default tier's 5 submits/s with 1-5 min generations up to 1,500 tasks are in flight at full
# speed; a key that may run fewer says so with a 429, and the cap comes down by itself.
MAX_IN_FLIGHT = 2000

MIN_PUBLISHED = 1 / 60  # requests/s: one a minute (a Limit header of 0.001/min is not believed)
MIN_FACTOR = 0.05  # never slow below 5% of the rate
DECREASE = 0.7  # multiply the rate by this on a 429 without headers (once per storm)
INCREASE = 1.5  # and by this after each calm period without one
MAX_BACKOFF = 30.0
# Pace a little under the rate: a server with no burst allowance refuses a request that
# arrives a millisecond early, and arrival gaps jitter by a few milliseconds.
MARGIN = 0.03
MARGIN_STEP = 0.03  # a lone 429 at the rate: the arrival jitter is larger; widen the margin
MAX_MARGIN = 0.15
SHARED_MARGIN = 0.08  # the margin of a budget several runners share (Account.share)
MARGIN_CALM = 60.0  # seconds without a 429 before the margin narrows a step again


class Pacer(AsyncLimiter):
    """aiolimiter's leaky bucket (FIFO waiters, capacity ``burst``), plus two things it lacks:
    a rate changed in place and a pause, both seen at once by every caller already waiting
    (a waiter re-checks capacity whenever it is woken, and the wake-up timer is re-armed).

    Uses aiolimiter's internals (``_leak``, ``_level``, ``_rate_per_sec``, ``_wake_next``),
    stable since 1.2; pyproject pins the range and tests/test_budgets.py checks them."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        super().__init__(burst, burst / rate)
        self._paused_until = 0.0  # monotonic

    @property
    def rate(self) -> float:
        return self._rate_per_sec

    def _settle(self) -> bool:
        """Drain what leaked out until now; False outside an event loop (nothing to drain:
        the bucket has not been used yet)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._leak()
        return True

    def set_rate(self, rate: float) -> None:
        in_loop = self._settle()  # drained at the old rate until now; the new one from now
        # a pause is a time, not a number of tokens: it keeps its end whatever the new rate;
        # the spacing of the last acquisition follows the new rate
        left = self._paused_until - time.monotonic()
        self.time_period = self.max_rate / rate
        self._rate_per_sec = rate
        if left > 0:  # paused: the pause's end alone decides the next acquisition
            self._level = self.max_rate - 1 + left * rate
        else:
            self._level = min(self._level, float(self.max_rate))
        if in_loop:
            self._wake_next()

    def pause(self, seconds: float) -> None:
        """No acquisition for ``seconds`` from now (or longer, if the bucket says so)."""
        in_loop = self._settle()
        if not in_loop:
            self._last_check = time.monotonic()  # asyncio's clock is time.monotonic
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        self._level = max(self._level, self.max_rate - 1 + seconds * self._rate_per_sec)
        if in_loop:
            self._wake_next()

    def free_in(self) -> float:
        """Seconds until one acquisition would pass (0: now, nobody ahead)."""
        if not self._settle():
            return max(0.0, self._level + 1 - self.max_rate) / self._rate_per_sec
        if any(not fut.done() for *_, fut in self._waiters):
            return math.inf
        return max(0.0, (self._level + 1 - self.max_rate) / self._rate_per_sec)

    def backlog_in(self, ahead: int) -> float:
        """Seconds until ``ahead`` more acquisitions would all have passed (waiters already
        queued here are the caller's to count in ``ahead``): how busy the bucket is."""
        self._settle()
        return max(0.0, (self._level + ahead - self.max_rate) / self._rate_per_sec)


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """What an answer's `X-RateLimit-*` headers said (each None when absent or unreadable)."""

    limit_per_min: float | None = None
    remaining: float | None = None
    reset_in: float | None = None  # seconds from when the answer arrived
    category: str | None = None

    @property
    def any(self) -> bool:
        return self.limit_per_min is not None or self.remaining is not None


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) and number >= 0 else None


def parse_rate_headers(headers: Any, now: float | None = None) -> RateHeaders:
    """`X-RateLimit-Limit` (per minute), `-Remaining`, `-Reset` (unix seconds; a small number
    is read as seconds from now, as some gateways send) and `-Category`."""
    get = headers.get
    reset = _number(get("X-RateLimit-Reset"))
    if reset is not None and reset > 1e9:  # a unix time
        reset = max(0.0, reset - (time.time() if now is None else now))
    category = get("X-RateLimit-Category")
    category = category.strip().lower() if isinstance(category, str) else None
    return RateHeaders(
        limit_per_min=_number(get("X-RateLimit-Limit")),
        remaining=_number(get("X-RateLimit-Remaining")),
        reset_in=reset,
        category=category if category in CATEGORIES else None,
    )


class Budget:
    """One rate budget: ``rate`` requests per second (None: no limit until a 429 teaches one),
    paced without a burst. ``explicit``: the user chose the rate, so a server's published
    limit may lower it but never raise it."""

    def __init__(
        self,
        name: str,
        rate: float | None,
        *,
        explicit: bool = False,
        calm_after: float = 3.0,
        margin: float = MARGIN,
        on_change: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ):
        self.name = name
        self.rate = rate
        self.explicit = explicit
        self.floor = MIN_PUBLISHED  # a published limit is never believed below this
        self.factor = 1.0
        self.calm_after = calm_after
        self.margin = margin
        self.pacer: Pacer | None = None
        # several runners: the account's slots in PostgreSQL, taken after the pacer
        self.slots: SharedSlots | None = None
        self._told = False  # the server has published this budget's limit
        self._streak = 0
        self._paused_until = 0.0
        self._last_429 = -math.inf
        self._last_raise = -math.inf
        self._on_change = on_change or (lambda message: None)
        self._rng = rng or random.Random()
        self._retune()

    @property
    def effective_rate(self) -> float | None:
        return None if self.rate is None else self.rate * self.factor

    def _retune(self) -> None:
        rate = self.effective_rate
        if rate is None:
            return
        paced = rate * (1 - self.margin)
        if self.pacer is None:
            self.pacer = Pacer(paced)
        else:
            self.pacer.set_rate(paced)

    async def acquire(self) -> None:
        if self.pacer is not None:
            await self.pacer.acquire()
            if self.slots is not None:  # the rate this runner has learnt, over every runner
                await self.slots.take(self.pacer.rate)

    def ready(self) -> bool:
        """Would an acquisition pass now, with nobody waiting ahead?"""
        return self.pacer is None or self.pacer.free_in() == 0.0

    def _pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        if self.pacer is None:  # no rate known yet: a pause needs a bucket to live in
            self.rate = self.rate or 10.0
            self._retune()
        assert self.pacer is not None
        self.pacer.pause(seconds)
        if self.slots is not None:
            self.slots.pause_soon(seconds)  # every runner of the account holds too

    def observe(self, seen: RateHeaders, max_pause: float) -> None:
        """An answer (any status) carried this budget's headers: adopt the published rate,
        and when nothing remains, wait for the reset."""
        if seen.limit_per_min is not None and seen.limit_per_min > 0:
            # never below a floor: a Limit of 0.001/min would mean one request a day
            published = max(seen.limit_per_min / 60, self.floor)
            rate = min(self.rate or published, published) if self.explicit else published
            if not self._told or rate != self.rate:
                old = self.effective_rate
                self.rate, self._told, self.factor = rate, True, 1.0
                self._retune()
                if old is None or abs(old - rate) > 1e-9:
                    was = "no limit" if old is None else f"{old:.2f}/s"
                    self._on_change(
                        f"{self.name} budget: the API publishes {seen.limit_per_min:g}/min; "
                        f"rate {was} -> {rate:.2f}/s"
                    )
        if seen.remaining is not None and seen.remaining < 1 and seen.reset_in:
            # nothing left: the next token comes in one interval (a token bucket, whose Reset
            # says when it is full again) or at the reset (a fixed window, whose 429 then
            # says so): wait the shorter, and let a 429's Retry-After tell the rest
            interval = 1 / self.rate if self.rate else seen.reset_in
            self._pause(min(seen.reset_in, interval, max_pause))

    def throttled(self, retry_after: float | None, seen: RateHeaders, max_pause: float) -> float:
        """A 429 for this budget: pause every caller (Retry-After, else the Reset, else a
        back-off). A lone one widens the pacing margin; another soon after the last pause,
        without a published limit, lowers the rate. Returns the pause in seconds."""
        now = time.monotonic()
        if now < self._paused_until:
            # sent before the pause began: the pause already answers it
            return self._paused_until - now
        self._streak += 1
        backoff = min(MAX_BACKOFF, 2 ** (self._streak - 1)) * (0.5 + self._rng.random() / 2)
        told = retry_after if retry_after is not None else seen.reset_in
        pause = min(max_pause, told) if told is not None else backoff
        if self.rate is None:  # no limit known until now: start from 10/s
            self.rate = 10.0
            self._retune()
        if seen.limit_per_min is not None:
            self.observe(seen, max_pause)  # the published rate: no cut, only the margin below
        if seen.limit_per_min is not None or now - self._last_429 >= self.calm_after:
            if self.margin < MAX_MARGIN:
                # a lone 429 while pacing at the rate: the server saw two requests closer than
                # we sent them (jitter on the way, our loop held up): pace a little further under
                old = self.margin
                self.margin = min(MAX_MARGIN, self.margin + MARGIN_STEP)
                self._retune()
                self._on_change(
                    f"429 from the API: pausing {pause:.1f} s, pacing {self.name} "
                    f"{100 * self.margin:.0f}% under {self.effective_rate or 0:.2f}/s "
                    f"(was {100 * old:.0f}%)"
                )
        else:  # 429s again soon after the last pause: the limit is lower than this rate
            old_rate = self.effective_rate
            self.factor = max(MIN_FACTOR, self.factor * DECREASE)
            self._retune()
            self._on_change(
                f"429 from the API: pausing {pause:.1f} s, rate {old_rate:.2f} -> "
                f"{self.effective_rate:.2f}/s"
            )
        self._pause(pause)
        self._last_429 = self._last_raise = now
        return pause

    def succeeded(self) -> None:
        """A non-429 answer: after a calm period, raise a lowered rate again, step by step."""
        self._streak = 0
        now = time.monotonic()
        if (
            self.margin > MARGIN
            and now - self._last_429 >= MARGIN_CALM
            and (now - self._last_raise >= MARGIN_CALM)
        ):  # a long calm: pace closer to the rate again, one step at a time
            self.margin = max(MARGIN, self.margin - MARGIN_STEP)
            self._last_raise = now
            self._retune()
        if self.factor >= 1.0:
            return
        if now - self._last_429 < self.calm_after or now - self._last_raise < self.calm_after:
            return
        old = self.effective_rate
        self.factor = min(1.0, self.factor * INCREASE)
        self._last_raise = now
        self._retune()
        self._on_change(
            f"no 429 for {self.calm_after:g} s ({self.name}): rate {old:.2f} -> "
            f"{self.effective_rate:.2f}/s"
        )


@dataclass(frozen=True, slots=True)
class Rates:
    """The rates a run asks for, in requests per second. ``shared`` (the `--rate` flag): one
    budget for every call, for gateways with a single limit; the category budgets then apply
    only where given explicitly."""

    submit: float | None = None
    query: float | None = None
    shared: float | None = None
    tier: str = DEFAULT_TIER

    def resolved(self) -> tuple[tuple[float | None, bool], tuple[float | None, bool]]:
        """((submit rate, explicit), (query rate, explicit)): a category budget comes from its
        own flag, else from the tier unless `--rate` took over."""
        if self.tier not in TIERS:
            raise ValueError(f"unknown tier {self.tier!r} (one of: {', '.join(TIERS)})")
        submit, query = TIERS[self.tier]
        tiered = self.shared is None
        return (
            (self.submit, True) if self.submit is not None else (submit if tiered else None, False),
            (self.query, True) if self.query is not None else (query if tiered else None, False),
        )


class Account:
    """The budgets of one account (one or more keys): submit, query and optionally shared."""

    def __init__(
        self,
        name: str,
        rates: Rates,
        *,
        calm_after: float = 3.0,
        on_change: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ):
        self.name = name
        said = on_change or (lambda message: None)
        kw: dict[str, Any] = {"calm_after": calm_after, "on_change": said, "rng": rng}
        (submit, s_explicit), (query, q_explicit) = rates.resolved()
        # math.inf: no client-side limit (benchmarks; a 429 still teaches one)
        submit, query = (None if r == math.inf else r for r in (submit, query))
        shared = None if rates.shared == math.inf else rates.shared
        self.submit = Budget("submit", submit, explicit=s_explicit, **kw)
        self.query = Budget("query", query, explicit=q_explicit, **kw)
        self.shared = Budget("shared", shared, explicit=True, **kw) if shared else None

    def share(self, url: str, fingerprint: str) -> None:
        """Pace this account over every runner that shares it: each budget takes its slots
        from the row ``FINGERPRINT:NAME`` in the PostgreSQL database at ``url`` (created when
        missing). ``fingerprint`` names the account the same way in every runner and every run
        on it (a fingerprint of its keys, never a key); psycopg is imported only here."""
        from omni_batch.running.shared_pace import SharedSlots

        for budget in (self.submit, self.query, self.shared):
            if budget is not None:
                budget.slots = SharedSlots(url, f"{fingerprint}:{budget.name}")
                # requests of several processes (machines) arrive with more jitter than one
                # process's: a wider margin under the rate keeps a server without burst calm
                budget.margin = max(budget.margin, SHARED_MARGIN)
                budget._retune()

    async def aclose(self) -> None:
        """Close the shared slots (pauses still being written first); nothing to do when the
        account is not shared."""
        for budget in (self.submit, self.query, self.shared):
            if budget is not None and budget.slots is not None:
                await budget.slots.close()

    def budgets(self, category: str) -> list[Budget]:
        own = self.submit if category == SUBMIT else self.query
        return [own] if self.shared is None else [own, self.shared]

    def budget_for(self, category: str) -> Budget:
        """The budget a 429 of ``category`` slows down: its own when it has a rate (or no
        shared budget exists), else the shared one."""
        own = self.submit if category == SUBMIT else self.query
        return own if self.shared is None or own.rate is not None else self.shared

    async def acquire(self, category: str) -> None:
        for budget in self.budgets(category):
            await budget.acquire()

    def ready(self, category: str) -> bool:
        return all(b.ready() for b in self.budgets(category))

    def observe(self, category: str, seen: RateHeaders, max_pause: float) -> None:
        if seen.any:
            self.budget_for(seen.category or category).observe(seen, max_pause)

    def throttled(
        self, category: str, retry_after: float | None, seen: RateHeaders, max_pause: float
    ) -> float:
        return self.budget_for(seen.category or category).throttled(retry_after, seen, max_pause)

    def succeeded(self, category: str) -> None:
        for budget in self.budgets(category):
            budget.succeeded()

    def rate_line(self) -> str:
        """For the progress display: `submit 5.0/s · query 50.0/s`."""
        parts = []
        for budget in (self.submit, self.query, self.shared):
            if budget is not None and (rate := budget.effective_rate) is not None:
                parts.append(f"{budget.name} {rate:.1f}/s")
        return " · ".join(parts)
