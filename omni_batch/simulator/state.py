"""The simulator's bookkeeping with no HTTP in it: tasks, per-key limits, counters, and each
task's state computed lazily from its timestamps (no timer or coroutine per task).
"""

from __future__ import annotations

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


def outcome(config: SimConfig, seq: int) -> Outcome:
    # A string seed goes through SHA-512, so the stream is stable across processes and runs.
    # Every draw happens whatever the knobs say, so changing one knob never shifts the others.
    rng = random.Random(f"omni-sim/{config.seed}/{seq}")
    queue_s = rng.uniform(config.queue_min, config.queue_max)
    gen_s = rng.uniform(config.gen_min, config.gen_max)
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
        task.misses = task.answers = 0  # per-process fault counters start again
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


@dataclass(slots=True)
class KeyState:
    """Limits and history of one API key."""

    tokens: float
    last: float
    storm_until: float = 0.0
    created: int = 0
    active: list[float] = field(default_factory=list)  # heap of finish times
    bodies: Counter[bytes] = field(default_factory=Counter)  # body digest → submits
    cbids: dict[str, str] = field(default_factory=dict)  # client_business_id → task id

    def take_token(self, now: float, rate: float | None, burst: int) -> float:
        """0 when the call may go ahead, else seconds until a token is due."""
        if rate is None:
            return 0.0
        self.tokens = min(float(burst), self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate

    def active_count(self, now: float) -> int:
        while self.active and self.active[0] <= now:
            heapq.heappop(self.active)
        return len(self.active)


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
        self.keys = {k: KeyState(tokens=float(config.burst), last=0.0) for k in config.keys}
        self.counts: Counter[str] = Counter()
        self.seq = 0
        self.peak_active = 0
        self.polls_max = 0
        self.max_body_submits = 0
        self.restored = 0  # tasks loaded from ``saved``
        # billing (issue #15): credits taken at create, given back when a generation fails
        self.credits_charged = 0.0
        self.credits_refunded = 0.0
        self.key_credits: Counter[str] = Counter()  # key → credits used (net of refunds)
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
        plan = outcome(self.config, self.seq)
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
        if task.done > now:
            heapq.heappush(ks.active, task.done)
        # peak over all keys at once: what a client fleet held, not just its busiest key
        self.peak_active = max(
            self.peak_active, sum(k.active_count(now) for k in self.keys.values())
        )
        if task.cbid is not None:
            ks.cbids[task.cbid] = task.id
        ks.bodies[digest] += 1
        self.max_body_submits = max(self.max_body_submits, ks.bodies[digest])
        self._charge(task)

    def _charge(self, task: Task) -> None:
        if not task.credits:
            return
        self.credits_charged += task.credits
        self.key_credits[task.key] += task.credits
        if task.failed:  # refunded when the generation fails (settle)
            heapq.heappush(self._refunds, (task.done, len(self._refunds), task.key, task.credits))

    def settle(self, now: float | None = None) -> None:
        """Give back the credits of generations that have failed by ``now``."""
        now = self.clock() if now is None else now
        while self._refunds and self._refunds[0][0] <= now:
            _, _, key, credits = heapq.heappop(self._refunds)
            self.credits_refunded += credits
            self.key_credits[key] -= credits

    def credits_used(self, key: str | None = None, now: float | None = None) -> float:
        """Credits spent (charged minus refunded) by ``key``, or by the whole account."""
        self.settle(now)
        if key is not None:
            return self.key_credits[key]
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

    def find(self, key: str, ident: str) -> Task | None:
        """A task of ``key`` by task id or client_business_id (unless the config turns that
        lookup off, or makes it lag behind the create); other keys' tasks are unseen."""
        task = self.tasks.get(ident)
        if task is None and self.config.cbid == "wrong_task" and ident in self.keys[key].cbids:
            first = next((t for t in self.tasks.values() if t.key == key), None)
            return first if first is not None and first.cbid != ident else None
        if task is None and self.config.cbid in ("on", "lookup_only"):
            task_id = self.keys[key].cbids.get(ident)
            found = self.tasks.get(task_id) if task_id else None
            if found is not None and self.clock() - found.created >= self.config.cbid_lag:
                task = found
        return task if task is not None and task.key == key else None

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
            "active": sum(ks.active_count(now) for ks in self.keys.values()),
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
        return out
