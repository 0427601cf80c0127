"""When to ask about a task again: poll economy (issue #14 item 6). Pure logic, time passed in.

A status call costs query budget and tells little unless it lands near the task's completion.
The ``PollPlanner`` keeps, per task, a ``Track`` of what the answers said (when the task was
last seen not started, its first and latest progress readings) and, per (model, duration,
resolution), the submit-to-completion times of the tasks that finished this run. From these it
brackets the completion time ``[lo, hi]`` and chooses the next poll:

- nothing known yet (queued, or no ``progress`` in the answers): the first poll waits until
  shortly before the quickest completion seen for that key (before any: the prior, the
  documented 1-5 min widened down to 30 s); later ones follow the documented cadence;
- a progress reading: progress grows about linearly while a task is in progress, so one
  reading (with the start bracketed between the last "queued" answer and the reading) or two
  (a rate) bracket the completion; when the bracket is narrower than ``poll_slack`` the next poll
  goes to its end (one call, and the completion is noticed within the slack), otherwise to its
  start, where a late reading narrows it (the usual pattern is early reading, late reading,
  completed: three calls);
- a poll aimed at the completion that finds the task still running widens the progress error
  assumed for that task (noisy or non-linear progress costs calls, not detection delay).

Every next poll is at least ``poll_min_interval`` after the answer, at most ``poll_max_gap``
after it, and never past the task's deadline (``max_wait``). ``PollPacer`` spreads due times so
the polls scheduled never exceed what the query budget can serve.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omni_batch.running.options import Policy

Key = tuple[str, int, str]  # (model, duration, resolution)

PROGRESS_ERR = 1.0  # assumed error of one progress reading, in points (whole numbers)
INFO_FRACTION = 0.8  # a first poll at 80% of the quickest completion seen finds most tasks running
QUEUE_MARGIN = 0.1  # a learned queue time is trusted within 10% of the longest seen
TRUSTED = 10  # completion times of a kind needed before they replace the prior
MEMORY = 200  # completion times kept per key (the most recent)
QUEUED = frozenset({"queued", "submitted", "pending"})


@dataclass(frozen=True, slots=True)
class Plan:
    """The next poll: ``delay`` seconds from now; ``exact`` when its moment was chosen from
    what is known of the task (jitter would only add detection delay or blur the reading; the
    pacer spreads polls due together), not a cadence."""

    delay: float
    exact: bool = False


@dataclass(slots=True)
class Track:
    """What one task's answers said, as the planner needs it (monotonic seconds)."""

    key: Key
    submitted: float
    not_started: float  # the latest moment the task was known not to have started
    first: tuple[float, float] | None = None  # earliest usable (time, progress) reading
    last: tuple[float, float] | None = None  # latest one
    last_poll: float | None = None
    queued: bool = True  # the latest answer said queued (or none came yet)
    aimed: float | None = None  # predicted completion the pending poll was aimed at
    misses: int = 0  # polls aimed at the completion that found the task still running
    timed: bool = False  # its start was learned already


class PollPlanner:
    """Plans polls from progress and the completion times learned this run (see module doc)."""

    def __init__(self, policy: Policy, memory: int = MEMORY):
        self.policy = policy
        self.memory = memory
        self._totals: dict[Key, deque[float]] = {}
        self._starts: dict[Key, deque[float]] = {}
        self._window_cache: dict[Key, tuple[float, float]] = {}
        self._queue_cache: dict[Key, tuple[float, float] | None] = {}

    # -- what was learned ---------------------------------------------------------------------
    def track(self, key: Key, submitted: float) -> Track:
        return Track(key=key, submitted=submitted, not_started=submitted)

    def learn(self, key: Key, total: float) -> None:
        """A task of ``key`` completed ``total`` seconds after its submit."""
        if not math.isfinite(total) or total < 0:
            return
        self._totals.setdefault(key, deque(maxlen=self.memory)).append(total)
        self._window_cache.pop(key, None)

    def learn_start(self, key: Key, start: float) -> None:
        """A task of ``key`` started generating ``start`` seconds after its submit."""
        if math.isfinite(start) and start >= 0:
            self._starts.setdefault(key, deque(maxlen=self.memory)).append(start)
            self._queue_cache.pop(key, None)

    def window(self, key: Key) -> tuple[float, float]:
        """Submit-to-completion times expected for ``key``: (quick, slow), in seconds."""
        cached = self._window_cache.get(key)
        if cached is not None:
            return cached
        prior = self.policy.gen_prior
        seen = sorted(self._totals.get(key, ()))
        if len(seen) < TRUSTED:  # too few to trust alone: they only widen the prior
            lo = min([prior[0], *seen[:1]])
            hi = max([prior[1], *seen[-1:]])
        else:  # a low and a high quantile: one odd task does not move every first poll
            lo = seen[len(seen) // 20]
            hi = seen[-1 - len(seen) // 20]
        self._window_cache[key] = (lo, hi)
        return lo, hi

    def _queue_window(self, key: Key) -> tuple[float, float] | None:
        if key in self._queue_cache:
            return self._queue_cache[key]
        seen = sorted(self._starts.get(key, ()))
        found = (seen[len(seen) // 10], seen[-1 - len(seen) // 10]) if len(seen) >= 3 else None
        self._queue_cache[key] = found
        return found

    # -- one task -------------------------------------------------------------------------------
    def first(self, track: Track, now: float, deadline: float = math.inf) -> Plan:
        """The first poll after a submit."""
        p = self.policy
        if not p.plan_polls:
            return Plan(p.first_poll)
        quick = self.window(track.key)[0]
        at = track.submitted + max(p.first_poll, INFO_FRACTION * quick, p.poll_min_interval)
        return Plan(max(0.0, min(at, deadline) - now), exact=True)

    def observe(self, track: Track, now: float, status: str, progress: float | None) -> None:
        """Record one status answer (``progress`` as the API gave it, 0-100 or None)."""
        previous = track.last_poll if track.last_poll is not None else track.submitted
        aimed, track.aimed = track.aimed, None
        track.last_poll = now
        if status == "completed":
            done = (previous + now) / 2 if aimed is None else min(max(aimed, previous), now)
            self.learn(track.key, done - track.submitted)
            return
        if status == "failed":
            return
        if aimed is not None:
            track.misses += 1
        track.queued = status in QUEUED
        if track.queued:
            track.not_started = now
            return
        if progress is None or not math.isfinite(progress) or progress <= 0:
            return  # running, but nothing to measure it by
        reading = (now, min(float(progress), 99.9))
        if track.first is None or reading[1] < track.first[1]:
            track.first = reading  # progress went back: measure from the lower reading
        track.last = reading
        if not track.timed and (start := self._start(track)) is not None:
            # two readings tell when it started: how long its kind queues, learned at once
            # (the first tasks of a run benefit before any has finished)
            track.timed = True
            self.learn_start(track.key, start)

    def unanswered(self, track: Track) -> None:
        """The status call failed (after its retries): it said nothing about the completion."""
        track.aimed = None

    def _start(self, track: Track) -> float | None:
        """When the task started (seconds after its submit), from two readings; else None."""
        rate = _rate(track)
        if rate is None or track.first is None:
            return None
        t, progress = track.first
        return max(track.not_started, t - progress / rate) - track.submitted

    def bracket(self, track: Track) -> tuple[float, float] | None:
        """The completion time [lo, hi] (monotonic) the progress readings allow, or None."""
        if track.last is None:
            return None
        err = PROGRESS_ERR * 2 ** min(track.misses, 6)
        t, progress = track.last
        # one reading: the task started between the last "not started" moment and the reading
        s_lo = track.not_started
        queue = self._queue_window(track.key)  # learned: how long tasks of its kind queue
        margin = 0.0 if queue is None else QUEUE_MARGIN * queue[1] * 2 ** min(track.misses, 6)
        allowance = self.policy.queue_allowance if queue is None else queue[1] + margin
        s_hi = min(t, max(s_lo, track.submitted + allowance))
        if queue is not None:
            s_lo = min(s_hi, max(s_lo, track.submitted + queue[0] - margin))
        p_lo, p_hi = max(progress - err, 0.5), min(progress + err, 100.0)
        lo = s_hi + (t - s_hi) * 100.0 / p_hi
        hi = s_lo + (t - s_lo) * 100.0 / p_lo
        rate_lo, rate_hi = _rate_range(track, err)
        if rate_hi > 0:  # two readings: a rate
            two_lo = t + max(0.0, 100.0 - progress - err) / rate_hi
            two_hi = t + (100.0 - progress + err) / rate_lo if rate_lo > 0 else math.inf
            if max(lo, two_lo) <= min(hi, two_hi):
                lo, hi = max(lo, two_lo), min(hi, two_hi)
            else:  # they disagree (noise, a pause): the wider of the two stays honest
                lo, hi = min(lo, two_lo), max(hi, two_hi)
        # an early reading allows a start just before it (an absurd rate): no task of its kind
        # was seen quicker than the learned window's start
        lo = min(hi, max(lo, track.submitted + self.window(track.key)[0]))
        return lo, hi

    def next(self, track: Track, now: float, deadline: float) -> Plan:
        """The poll after an answer (or after a failed status call) at ``now``."""
        p = self.policy
        if not p.plan_polls:  # the fixed cadence the user asked for
            return Plan(p.poll_interval * (p.queued_factor if track.queued else 1.0))
        soonest = now + p.poll_min_interval
        exact = completion = False
        window = self.bracket(track)
        if window is None:  # no progress to go by: the learned window, then the cadence
            cadence = p.poll_interval * (p.queued_factor if track.queued else 1.0)
            quick = self.window(track.key)[0]
            at = max(now + cadence, track.submitted + INFO_FRACTION * quick)
        else:
            lo, hi = window
            exact = True
            if hi <= now:  # it should be done: the readings misled; ask again soon
                at = now + max(p.poll_slack, p.poll_min_interval)
            elif hi - max(lo, now) <= p.poll_slack:  # known closely enough: poll once, at the end
                at, completion = hi, True
            else:  # a late reading narrows it
                at = lo
        at = min(max(at, soonest), now + max(p.poll_max_gap, p.poll_min_interval))
        if at >= deadline:
            at, exact, completion = max(deadline, now), False, False
        track.aimed = at if completion else None
        return Plan(at - now, exact)


def _rate(track: Track) -> float | None:
    """Progress points per second between the first and the latest reading (None: no rate)."""
    if track.first is None or track.last is None:
        return None
    (t1, p1), (t2, p2) = track.first, track.last
    if t2 <= t1 or p2 <= p1:
        return None
    return (p2 - p1) / (t2 - t1)


def _rate_range(track: Track, err: float) -> tuple[float, float]:
    """The rate with ``err`` points of error on each reading: (low, high); (0, 0): none."""
    if track.first is None or track.last is None:
        return 0.0, 0.0
    (t1, p1), (t2, p2) = track.first, track.last
    if t2 <= t1 or p2 <= p1:
        return 0.0, 0.0
    span = t2 - t1
    return max(0.0, p2 - p1 - 2 * err) / span, (p2 - p1 + 2 * err) / span


class PollPacer:
    """Spreads poll due times so that no ``width``-second slot holds more polls than ``rate``
    per second can serve: a poll due in a full slot moves to the next slot with room.

    Only slots from now on are kept, so memory is bounded by the polls scheduled."""

    def __init__(self, rate: float | None, width: float = 0.25):
        self.base_width = width
        self._slots: dict[int, int] = {}
        self._keys: list[int] = []  # the slot numbers in use, sorted
        self.rate: float | None = None
        self.width = width
        self.per_slot = 0
        self.set_rate(rate)

    def set_rate(self, rate: float | None) -> None:
        """A new budget (a published limit, a 429 cut, a raise back): polls placed from now
        on are spread at it. Slot numbers depend on the width: when it changes, the slots
        start anew (polls already placed keep their times)."""
        rate = rate if rate and rate > 0 else None
        if rate == self.rate and self.per_slot:
            return
        self.rate = rate
        # at least one poll per slot: a slow budget gets wider slots
        width = self.base_width if rate is None else max(self.base_width, 1.0 / rate)
        if width != self.width:
            self._slots.clear()
            self._keys.clear()
        self.width = width
        # whole polls per slot (never 0, whatever the float rounding)
        self.per_slot = 0 if rate is None else max(1, int(rate * width + 1e-9))

    def place(self, when: float, now: float) -> float:
        """The time a poll wanted at ``when`` may be sent (``when`` itself, or a later slot)."""
        if self.rate is None:
            return when
        self._forget(now)
        slot = max(math.floor(when / self.width), math.floor(now / self.width))
        first = slot
        while self._slots.get(slot, 0) >= self.per_slot:
            slot += 1
        if slot not in self._slots:
            bisect.insort(self._keys, slot)
        self._slots[slot] = self._slots.get(slot, 0) + 1
        return when if slot == first else slot * self.width

    def _forget(self, now: float) -> None:
        current = math.floor(now / self.width)
        cut = bisect.bisect_left(self._keys, current)
        if cut:
            for slot in self._keys[:cut]:
                del self._slots[slot]
            del self._keys[:cut]

    def __len__(self) -> int:
        return sum(self._slots.values())
