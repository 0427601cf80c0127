"""The simulator's bookkeeping with no HTTP in it: tasks, per-key limits, counters, and each
task's state computed lazily from its timestamps (no timer or coroutine per task).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from omni_batch.simulator.config import SimConfig
from omni_batch.simulator.saved import SavedTasks, key_digest

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CATEGORIES = ("async_submit", "async_query")
SPREAD_SIGMA = 0.35  # gen_spread lognormal: the factor's sigma
SPREAD_REF_DURATION = 6  # a video this long gets the median generation time
FAIL_MESSAGE = "The generation was blocked by the content policy"


class Clock:
    """Unix seconds that never jump: wall time at start plus monotonic time since."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def __call__(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What will happen to task number ``seq``; a pure function of (seed, seq, knobs)."""

    task_id: str
    queue_s: float
    gen_s: float
    failed: bool
    submit_shape: str
    result_shape: str
    queued_word: str


def spread_gen_s(config: SimConfig, seq: int, duration: float | None) -> float:
    """gen_spread lognormal: the geometric mean of gen_min..gen_max, times duration / 6 s,
    times a lognormal factor (sigma 0.35) from the task's own stream, clipped to the range."""
    z = random.Random(f"omni-sim-spread/{config.seed}/{seq}").gauss(0.0, 1.0)
    scale = (duration if isinstance(duration, int | float) and duration > 0 else 6) / 6
    median = math.sqrt(config.gen_min * config.gen_max) * scale
    return min(config.gen_max, max(config.gen_min, median * math.exp(SPREAD_SIGMA * z)))


def outcome(config: SimConfig, seq: int, duration: float | None = None) -> Outcome:
    """``duration`` (the requested seconds of video) matters only to gen_spread lognormal."""
    # A string seed goes through SHA-512, so the stream is stable across processes and runs.
    # Every draw happens whatever the knobs say, so changing one knob never shifts the others.
    rng = random.Random(f"omni-sim/{config.seed}/{seq}")
    queue_s = rng.uniform(config.queue_min, config.queue_max)
    gen_s = rng.uniform(config.gen_min, config.gen_max)
    if config.gen_spread == "lognormal":
        gen_s = spread_gen_s(config, seq, duration)
    failed = rng.random() < config.p_fail
    submit = rng.choice(("object", "legacy"))
    result = rng.choice(("result", "url", "video_url"))
    word = rng.choice(("queued", "submitted"))
    bits = rng.getrandbits(120)
    submit = submit if config.submit_shape == "mixed" else config.submit_shape
    ident = "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in range(24))
    return Outcome(
        task_id=("task_01" if submit == "legacy" else "video_01") + ident,
        queue_s=queue_s,
        gen_s=gen_s,
        failed=failed,
        submit_shape=submit,
        result_shape=result if config.result_shape == "mixed" else config.result_shape,
        queued_word=word if config.queued_word == "mixed" else config.queued_word,
    )


class Task:
    """One generation; ~16 small slots so 20,000+ tasks stay a few megabytes."""

    __slots__ = (
        "answers",
        "cbid",
        "created",
        "credits",
        "done",
        "duration",
        "expiry",
        "failed",
        "id",
        "key",
        "misses",
        "model",
        "polls",
        "queued_word",
        "ratio",
        "resolution",
        "result_shape",
        "shown",
        "started",
        "submit_shape",
        "terminal_seen",
    )

    def __init__(self, key: str, fields: dict[str, Any], plan: Outcome, now: float, ttl: float):
        self.id = plan.task_id
        self.key = key
        self.model: str = fields["model"]
        self.ratio: str = fields["aspect_ratio"]
        self.duration: int = fields["duration"]
        self.resolution: str = fields["resolution"]
        self.cbid: str | None = fields.get("client_business_id")
        self.created = now
        self.started = now + plan.queue_s
        self.done = self.started + plan.gen_s
        self.failed = plan.failed
        self.submit_shape = plan.submit_shape
        self.result_shape = plan.result_shape
        self.queued_word = plan.queued_word
        self.expiry = self.done + ttl  # the documented link lifetime runs from completion
        self.polls = 0
        self.terminal_seen = False
        self.misses = 0  # status calls answered 404 (SimConfig.unknown_polls)
        self.answers = 0  # completed answers given (no_url_answers, stale_link_answers)
        self.shown = 0  # the highest progress a status answer gave (progress_noise)
        self.credits = float(fields.get("credits") or 0.0)  # what it was charged (issue #15)

    _SAVED = (
        "id", "model", "ratio", "duration", "resolution", "cbid", "created", "started", "done",
        "failed", "submit_shape", "result_shape", "queued_word", "expiry",
    )  # fmt: skip

    def record(self) -> dict[str, Any]:
        """What a restarted simulator needs to know this task again (the key as a digest)."""
        out = {name: getattr(self, name) for name in self._SAVED}
        out["key"] = key_digest(self.key)
        out["credits"] = self.credits
        return out

    @classmethod
    def restore(cls, record: dict[str, Any], key: str) -> Task:
        task = cls.__new__(cls)
        for name in cls._SAVED:
            setattr(task, name, record[name])
        task.key = key
        task.polls = 0
        task.terminal_seen = False
        task.misses = task.answers = task.shown = 0  # per-process counters start again
        task.credits = float(record.get("credits") or 0.0)  # older lines: not charged
        return task

    def status(self, now: float) -> str:
        if now < self.started:
            return self.queued_word
        if now < self.done:
            return "in_progress"
        return "failed" if self.failed else "completed"

    def completed(self, now: float) -> bool:
        return now >= self.done and not self.failed


class Bucket:
    """A token bucket: ``rate`` tokens/s, at most ``burst`` saved; starts full."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.last = -math.inf

    def refill(self, now: float) -> None:
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = max(self.last, now)

    def wait(self, now: float) -> float:
        """0 when a token is there (not taken), else seconds until one is."""
        self.refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def remaining(self, now: float) -> int:
        """Whole tokens left (X-RateLimit-Remaining)."""
        self.refill(now)
        return max(0, math.floor(self.tokens + 1e-9))

    def full_at(self, now: float) -> float:
        """The instant the bucket is full again if nothing more is taken."""
        self.refill(now)
        return now + (self.burst - self.tokens) / self.rate


class SlidingMax:
    """The most points ever inside a closed window of ``width`` seconds; points may come a
    little out of order (they are recorded when a request ends, at the time it was let in)."""

    __slots__ = ("best", "times", "width")
    SLACK = 30.0  # a point this much older than the newest can still be counted exactly

    def __init__(self, width: float) -> None:
        self.width = width
        self.times: list[float] = []
        self.best = 0

    def add(self, t: float) -> None:
        times, width = self.times, self.width
        if not times or t >= times[-1]:
            times.append(t)
            self.best = max(self.best, len(times) - bisect.bisect_left(times, t - width))
        else:  # windows that hold t start at a point in [t - width, t]
            bisect.insort(times, t)
            lo, hi = bisect.bisect_left(times, t - width), bisect.bisect_right(times, t)
            end = lo
            for i in range(lo, hi):
                end = max(end, i)
                while end < len(times) and times[end] <= times[i] + width:
                    end += 1
                self.best = max(self.best, end - i)
        horizon = times[-1] - width - self.SLACK
        if times[0] < horizon - width:  # prune now and then, not on every call
            del times[: bisect.bisect_left(times, horizon)]


class AccountState:
    """The budgets, running tasks and counters of one account (one or more keys)."""

    def __init__(self, name: str, config: SimConfig) -> None:
        self.name = name
        self.shared = Bucket(config.rate, config.burst) if config.rate is not None else None
        self.buckets: dict[str, Bucket] = {}
        if config.submit_rate is not None:
            self.buckets["async_submit"] = Bucket(config.submit_rate, config.submit_burst)
        if config.query_rate is not None:
            self.buckets["async_query"] = Bucket(config.query_rate, config.query_burst)
        self.active: list[float] = []  # heap of finish times
        self.peak_active = 0
        self.cbids: dict[str, str] = {}  # client_business_id → task id
        self.accepted: Counter[str] = Counter()  # category → calls counted against it
        self.limited: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
        self.windows = {c: (SlidingMax(1.0), SlidingMax(60.0)) for c in CATEGORIES}
        self.keys = 0

    def take(self, category: str, now: float) -> tuple[str, float] | None:
        """Take one token from the shared bucket and the category's (those that exist), or
        none at all: then (which refused, "shared" or "rate", seconds until a token)."""
        pairs = (("shared", self.shared), ("rate", self.buckets.get(category)))
        present = [(which, bucket) for which, bucket in pairs if bucket is not None]
        for which, bucket in present:
            wait = bucket.wait(now)
            if wait:
                return which, wait
        for _, bucket in present:
            bucket.tokens -= 1.0
        return None

    def refund(self, category: str) -> None:
        """Give back what ``take`` took (a 429 or 503 rate_limit_unavailable answer after
        all): exactly as if it had never been taken, since a bucket caps at its burst."""
        for bucket in (self.shared, self.buckets.get(category)):
            if bucket is not None:
                bucket.tokens = min(float(bucket.burst), bucket.tokens + 1.0)

    def accept(self, category: str, at: float) -> None:
        self.accepted[category] += 1
        for window in self.windows[category]:
            window.add(at)

    def active_count(self, now: float) -> int:
        while self.active and self.active[0] <= now:
            heapq.heappop(self.active)
        return len(self.active)

    def stats(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"keys": self.keys}
        for category in CATEGORIES:
            one, sixty = self.windows[category]
            out[category] = {
                "accepted": self.accepted[category],
                "limited": dict(sorted(self.limited[category].items())),
                "max_per_1s": one.best,
                "max_per_60s": sixty.best,
            }
        out["active"] = self.active_count(now)
        out["peak_active"] = self.peak_active
        return out


@dataclass(slots=True)
class KeyState:
    """What is kept per API key; its limits are its account's."""

    account: AccountState
    storm_until: float = 0.0
    created: int = 0
    bodies: Counter[bytes] = field(default_factory=Counter)  # body digest → submits


def body_digest(body: dict[str, Any]) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def retry_after(seconds: float) -> int:
    """Whole seconds for a Retry-After header: rounded up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))


class SimState:
    """All tasks and counters of one simulator instance.

    With ``saved``, the tasks of earlier instances that used the same folder are loaded (they
    keep their timings, business ids, body counts and quota use) and every new task is written
    there before its submit is answered; the counters stay this instance's own.
    """

    def __init__(
        self, config: SimConfig, clock: Clock | None = None, saved: SavedTasks | None = None
    ):
        self.config = config
        self.clock = clock or Clock()
        self.tasks: dict[str, Task] = {}
        self.accounts: dict[str, AccountState] = {}
        self.keys: dict[str, KeyState] = {}
        for key, name in config.account_of().items():
            account = self.accounts.setdefault(name, AccountState(name, config))
            account.keys += 1
            self.keys[key] = KeyState(account)
        self.counts: Counter[str] = Counter()
        self.seq = 0
        self.peak_active = 0
        self.polls_max = 0
        self.max_body_submits = 0
        self.restored = 0  # tasks loaded from ``saved``
        # billing (issue #15): credits taken at create, given back when a generation fails
        self.credits_charged = 0.0
        self.credits_refunded = 0.0
        self.key_credits: dict[str, float] = {}  # key → credits used (net of refunds)
        self._refunds: list[tuple[float, int, str, float]] = []  # (when, n, key, credits)
        self.saved = saved
        if saved is not None:
            self._load(saved)

    def _load(self, saved: SavedTasks) -> None:
        known = {key_digest(k): k for k in self.keys}
        now = self.clock()
        for record in saved.records():
            try:
                if "task" in record:
                    fields = record["task"]
                    # a key this instance does not accept keeps its digest: the task is unseen
                    task = Task.restore(fields, known.get(fields["key"], fields["key"]))
                    self._add(task, bytes.fromhex(fields["body"]), now)
                    self.seq = max(self.seq, int(fields["seq"]) + 1)
                    self.restored += 1
                elif "expiry" in record and record["expiry"]["id"] in self.tasks:
                    self.tasks[record["expiry"]["id"]].expiry = float(record["expiry"]["at"])
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # a line this version cannot read: skipped, like a cut one

    def create(self, key: str, body: dict[str, Any], fields: dict[str, Any], now: float) -> Task:
        """Record a new task of ``key``; ``body`` as sent (for duplicate counting), ``fields``
        with the model's defaults filled in. With a saved folder the task is on disk before
        this returns (an OSError means no task was made)."""
        plan = outcome(self.config, self.seq, fields.get("duration"))
        task = Task(key, fields, plan, now, self.config.link_ttl)
        digest = body_digest(body)
        if self.saved is not None:
            self.saved.append({"task": {**task.record(), "seq": self.seq, "body": digest.hex()}})
        self.seq += 1
        self._add(task, digest, now)
        self.counts["submits"] += 1
        if self.keys[key].bodies[digest] > 1:
            self.counts["duplicate_bodies"] += 1
        return task

    def _add(self, task: Task, digest: bytes, now: float) -> None:
        self.tasks[task.id] = task
        ks = self.keys.get(task.key)
        if ks is None:  # restored under a key this instance does not accept
            return
        ks.created += 1
        account = ks.account
        if task.done > now:
            heapq.heappush(account.active, task.done)
        account.peak_active = max(account.peak_active, account.active_count(now))
        # peak over all accounts at once: what a client fleet held, not just its busiest one
        self.peak_active = max(
            self.peak_active, sum(a.active_count(now) for a in self.accounts.values())
        )
        if task.cbid is not None:
            account.cbids[task.cbid] = task.id
        ks.bodies[digest] += 1
        self.max_body_submits = max(self.max_body_submits, ks.bodies[digest])
        self._charge(task)

    def _charge(self, task: Task) -> None:
        if not task.credits:
            return
        self.credits_charged += task.credits
        self.key_credits[task.key] = self.key_credits.get(task.key, 0) + task.credits
        if task.failed:  # refunded when the generation fails (settle)
            heapq.heappush(self._refunds, (task.done, len(self._refunds), task.key, task.credits))

    def settle(self, now: float | None = None) -> None:
        """Give back the credits of generations that have failed by ``now``."""
        now = self.clock() if now is None else now
        while self._refunds and self._refunds[0][0] <= now:
            _, _, key, credits = heapq.heappop(self._refunds)
            self.credits_refunded += credits
            self.key_credits[key] = self.key_credits.get(key, 0) - credits

    def credits_used(self, key: str | None = None, now: float | None = None) -> float:
        """Credits spent (charged minus refunded) by ``key``, or by the whole account."""
        self.settle(now)
        if key is not None:
            return self.key_credits.get(key, 0)
        return self.credits_charged - self.credits_refunded

    def credits_left(self, now: float | None = None) -> float | None:
        """The account's balance in credits; None when it is unlimited."""
        if self.config.balance_credits is None:
            return None
        return self.config.balance_credits - self.credits_used(now=now)

    def new_link(self, task: Task, expiry: float) -> None:
        """A poll after expiry handed out a fresh link (kept, so a restart honours it)."""
        task.expiry = expiry
        self.counts["links_refreshed"] += 1
        if self.saved is not None:
            self.saved.append({"expiry": {"id": task.id, "at": expiry}})

    def same_account(self, key: str, other: str) -> bool:
        ks, ko = self.keys.get(key), self.keys.get(other)
        return ks is not None and ko is not None and ks.account is ko.account

    def find(self, key: str, ident: str) -> Task | None:
        """A task of ``key``'s account by task id or client_business_id (unless the config
        turns that lookup off, or makes it lag behind the create); other accounts' tasks
        are unseen."""
        task = self.tasks.get(ident)
        cbids = self.keys[key].account.cbids
        if task is None and self.config.cbid == "wrong_task" and ident in cbids:
            first = next((t for t in self.tasks.values() if self.same_account(key, t.key)), None)
            return first if first is not None and first.cbid != ident else None
        if task is None and self.config.cbid in ("on", "lookup_only"):
            task_id = cbids.get(ident)
            found = self.tasks.get(task_id) if task_id else None
            if found is not None and self.clock() - found.created >= self.config.cbid_lag:
                task = found
        return task if task is not None and self.same_account(key, task.key) else None

    def record_poll(self, task: Task, terminal: bool) -> None:
        self.counts["polls"] += 1
        task.polls += 1
        self.polls_max = max(self.polls_max, task.polls)
        if task.terminal_seen:
            self.counts["polls_after_terminal"] += 1
        task.terminal_seen = task.terminal_seen or terminal

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        c = self.counts
        finished = [t for t in self.tasks.values() if t.done <= now]
        failed = sum(t.failed for t in finished)
        out: dict[str, Any] = {
            "requests": c["requests"],
            "submit_requests": c["submit_requests"],
            "submits": c["submits"],
            "duplicate_bodies": c["duplicate_bodies"],
            "max_submits_per_body": self.max_body_submits,
            "duplicate_client_business_ids": c["duplicate_cbids"],
            "poll_requests": c["poll_requests"],
            "polls": c["polls"],
            "polls_unknown": c["polls_unknown"],
            "polls_per_task_max": self.polls_max,
            "polls_per_task_mean": round(c["polls"] / len(self.tasks), 3) if self.tasks else 0.0,
            "polls_after_terminal": c["polls_after_terminal"],
            "links_refreshed": c["links_refreshed"],
            "tasks_restored": self.restored,
            "tasks_completed": len(finished) - failed,
            "tasks_failed": failed,
            "active": sum(a.active_count(now) for a in self.accounts.values()),
            "peak_active": self.peak_active,
            "dropped": c["dropped"],
            "ambiguous_submits": c["ambiguous"],
            "5xx_after_create": c["5xx_after_create"],
            "unrecognised_submits": c["unrecognised"],
            "limiter_down": c["limiter_down"],
            "slow_responses": c["slow"],
            "limited_rate": c["limited_rate"],
            "limited_active": c["limited_active"],
            "limited_injected": c["limited_injected"],
            "downloads": c["downloads"],
            "downloads_ok": c["downloads_ok"],
            "downloads_expired": c["downloads_expired"],
            "downloads_with_auth": c["downloads_with_auth"],
            "downloads_truncated": c["downloads_truncated"],
            "downloads_redirected": c["downloads_redirected"],
            "limited_forced": c["limited_forced"],
            "early_after_429": c["early_after_429"],
            "download_bytes": c["download_bytes"],
            # billing (issue #15): net of refunds for failed generations
            "credits_used": round(self.credits_used(now=now), 6),
            "credits_charged": round(self.credits_charged, 6),
            "credits_refunded": round(self.credits_refunded, 6),
            "credits_left": self.credits_left(now),
            "credits_per_usd": self.config.credits_per_usd,
        }
        for status in (400, 401, 402, 404, 409, 429):
            out[f"status_{status}"] = c[f"status_{status}"]
        out["status_5xx"] = sum(n for k, n in c.items() if k.startswith("status_5"))
        out["statuses"] = {k[7:]: n for k, n in sorted(c.items()) if k.startswith("status_")}
        out["accounts"] = {name: a.stats(now) for name, a in sorted(self.accounts.items())}
        return out
