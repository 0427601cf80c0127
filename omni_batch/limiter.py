"""Request pressure for one API key: a shared rate (aiolimiter), poll priority, the in-flight cap,
and adaptation to 429s (honour Retry-After, back off, lower the rate, recover gradually).

One object per key, so a budget shared by several runners can later stand in its place.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from aiolimiter import AsyncLimiter

MIN_FACTOR = 0.05  # never slow below 5% of the configured rate
DECREASE = 0.7  # multiply the rate by this on a 429 (gently: random 429s are common)
INCREASE = 1.5  # and by this after each calm period without one
MAX_BACKOFF = 30.0


class Pressure:
    def __init__(
        self,
        rate: float | None,
        max_in_flight: int,
        *,
        burst: int = 1,
        calm_after: float = 3.0,
        on_change: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
    ):
        self.rate = rate  # configured requests per second; None: no limit until a 429 teaches one
        self.burst = max(1, burst)
        self.factor = 1.0
        self._learned_rate: float | None = None
        self.calm_after = calm_after
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self._limiter = self._make_limiter()
        self._polls_waiting = 0
        self._submit_turn = asyncio.Lock()  # at most one submit queues inside the limiter
        self._no_polls = asyncio.Event()
        self._no_polls.set()
        self._paused_until = 0.0
        self._streak = 0  # consecutive 429s, for the exponential back-off
        self._last_429 = 0.0
        self._last_raise = 0.0
        self._on_change = on_change or (lambda message: None)
        self._rng = rng or random.Random()

    @property
    def effective_rate(self) -> float | None:
        base = self.rate if self.rate is not None else self._learned_rate
        return None if base is None else base * self.factor

    def _make_limiter(self) -> AsyncLimiter | None:
        rate = self.effective_rate
        if rate is None:
            return None
        # `burst` tokens refill over burst/rate seconds: smooth pacing, no start-up spike
        return AsyncLimiter(self.burst, self.burst / rate)

    async def _wait_pause(self) -> None:
        # a loop, not an Event: another 429 may push the end of the pause further out
        while (delay := self._paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)

    async def _acquire(self) -> None:
        await self._wait_pause()
        if self._limiter is not None:
            await self._limiter.acquire()

    async def poll_permit(self) -> None:
        """Wait for the right to make a status call; polls go before submissions."""
        self._polls_waiting += 1
        self._no_polls.clear()
        try:
            await self._acquire()
        finally:
            self._polls_waiting -= 1
            if not self._polls_waiting:
                self._no_polls.set()

    async def submit_permit(self) -> None:
        """Wait for the right to make a submit call, after every waiting poll."""
        async with self._submit_turn:
            while self._polls_waiting:
                await self._no_polls.wait()
            await self._acquire()

    def submit_ready(self) -> bool:
        """Would a submit permit be granted without waiting? (no pause, no poll or submit
        ahead of it, a token in the bucket)"""
        return (
            not self._polls_waiting
            and not self._submit_turn.locked()
            and self._paused_until <= time.monotonic()
            and (self._limiter is None or self._limiter.has_capacity())
        )

    def throttled(self, retry_after: float | None) -> float:
        """Record a 429: pause every caller, lower the rate. Returns the pause in seconds."""
        now = time.monotonic()
        if now < self._paused_until:
            # sent before the pause began (concurrent callers hit the same storm): the pause
            # already answers it, so neither escalate the back-off nor cut the rate again
            return self._paused_until - now
        self._streak += 1
        backoff = min(MAX_BACKOFF, 2 ** (self._streak - 1)) * (0.5 + self._rng.random() / 2)
        pause = max(retry_after or 0.0, backoff)
        self._paused_until = max(self._paused_until, now + pause)
        if now - self._last_429 > 0.5 or self._streak == 1:  # one cut per burst of 429s
            if self.rate is None and self._learned_rate is None:
                self._learned_rate = 10.0
            old = self.effective_rate
            self.factor = max(MIN_FACTOR, self.factor * DECREASE)
            self._limiter = self._make_limiter()
            self._on_change(
                f"429 from the API: pausing {pause:.1f} s, request rate {old:.2f} -> "
                f"{self.effective_rate:.2f}/s"
            )
        self._last_429 = now
        self._last_raise = now
        return pause

    def succeeded(self) -> None:
        """Record a non-429 answer: after a calm period, raise the rate again, step by step."""
        self._streak = 0
        if self.factor >= 1.0:
            return
        now = time.monotonic()
        if now - self._last_429 < self.calm_after or now - self._last_raise < self.calm_after:
            return
        old = self.effective_rate
        self.factor = min(1.0, self.factor * INCREASE)
        self._last_raise = now
        self._limiter = self._make_limiter()
        self._on_change(
            f"no 429 for {self.calm_after:g} s: "
            f"request rate {old:.2f} -> {self.effective_rate:.2f}/s"
        )
