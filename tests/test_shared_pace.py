"""A rate shared by several runners of one account through PostgreSQL (issue #18): slots 1/R
apart whoever takes them, no second holding more than R, the rate used in full; one runner's
pause holds the others; two accounts apart; a bad URL one line without its password; a Budget
takes its slots at the rate its own pacer has come to."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from omni_batch.errors import StateError
from omni_batch.running.budgets import SHARED_MARGIN, SUBMIT, Account, RateHeaders, Rates
from omni_batch.running.shared_pace import SharedSlots
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
RATE = 10.0
EXACT = 1e-6  # slots come back as floats of epoch seconds: exact to a microsecond


@pytest.fixture
def db(postgres: Any) -> str:
    return str(postgres.create_database("pace"))


async def taker(slots: SharedSlots, n: int, rate: float = RATE) -> list[tuple[float, float]]:
    """(slot, wall time when the caller went) of ``n`` takes, one after the other."""
    went = []
    for _ in range(n):
        slot = await slots.take(rate)
        went.append((slot, time.time()))
    return went


def most_in_a_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + 1.0 - EXACT) for i, t in enumerate(times))


def assert_paced(slots: list[float], went: list[float], rate: float) -> None:
    slots = sorted(slots)
    gaps = [b - a for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 1 / rate - EXACT, min(gaps)  # exactly 1/R apart, whoever took them
    assert most_in_a_second(slots) <= rate
    # when the callers actually went: the slot plus a wake-up's jitter
    assert most_in_a_second(went) <= rate + 1
    assert (len(slots) - 1) / (slots[-1] - slots[0]) >= 0.9 * rate
    assert (len(went) - 1) / (max(went) - min(went)) >= 0.9 * rate


def test_three_runners_share_one_rate(db: str) -> None:
    """Three pacers (three connections) of one key at 10/s, starting together on a fresh
    database (the table made once, under the lock): 45 slots between them, paced as one."""

    async def main() -> list[list[tuple[float, float]]]:
        runners = [SharedSlots(db, "acct-1:submit") for _ in range(3)]
        try:
            # connected together (the table made once, under the lock), then timed: one
            # connection slower than the others (CI under load) is no pacing fault
            await asyncio.gather(*(r.pause(0) for r in runners))
            return await asyncio.gather(*(taker(r, 15) for r in runners))
        finally:
            for r in runners:
                await r.close()

    each = asyncio.run(main())
    assert all(len(e) == 15 for e in each)
    # every runner got its share: none waited for the others to finish
    starts = sorted(e[0][0] for e in each)
    assert starts[-1] - starts[0] < 0.5
    flat = [x for e in each for x in e]
    assert_paced([s for s, _ in flat], [w for _, w in flat], RATE)


def test_separate_processes_share_one_rate(db: str) -> None:
    """Three runner processes released together: 36 slots at 10/s between them."""
    script = textwrap.dedent(
        """
        import asyncio, json, sys, time
        from omni_batch.running.shared_pace import SharedSlots

        url, start, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])

        async def main():
            slots = SharedSlots(url, "acct-1:submit")
            await slots.pause(0)  # connected (and the table made) before the start
            await asyncio.sleep(max(0.0, start - time.time()))
            went = []
            for _ in range(n):
                went.append((await slots.take(10.0), time.time()))
            await slots.close()
            return went

        print(json.dumps(asyncio.run(main())))
        """
    )
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db, str(start), "12"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=30) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    each = [json.loads(out) for out, _ in outs]
    assert all(len(e) == 12 for e in each)
    flat = [x for e in each for x in e]
    assert_paced([s for s, _ in flat], [w for _, w in flat], RATE)
    assert len({round(s, 6) for s, _ in flat}) == 36  # no slot given twice


def test_a_pause_by_one_runner_holds_the_others(db: str) -> None:
    async def main() -> tuple[float, float, float]:
        one, other = SharedSlots(db, "acct-1:submit"), SharedSlots(db, "acct-1:submit")
        try:
            await taker(other, 2)
            paused_at = time.time()
            await one.pause(1.0)  # one runner's 429 said Retry-After: 1
            slot, went = (await taker(other, 1))[0]
            return paused_at, slot, went
        finally:
            await one.close()
            await other.close()

    paused_at, slot, went = asyncio.run(main())
    assert slot >= paused_at + 1.0 - 0.01  # the database clock, on this machine
    assert went >= paused_at + 1.0 - 0.01


def test_a_pause_voids_the_slots_this_runner_holds(db: str) -> None:
    """Callers of one runner already waiting for slots do not go during its own pause."""

    async def main() -> tuple[float, list[float]]:
        slots = SharedSlots(db, "acct-1:submit")
        try:
            await taker(slots, 1)
            waiting = [asyncio.create_task(taker(slots, 1)) for _ in range(3)]
            await asyncio.sleep(0.02)  # they hold slots 0.1 s apart (or wait to take one)
            paused_at = time.time()
            slots.pause_soon(0.8)  # sync, as Budget._pause calls it
            went = [w for task in waiting for _, w in await task]
            return paused_at, sorted(went)
        finally:
            await slots.close()

    paused_at, went = asyncio.run(main())
    assert len(went) == 3 and min(went) >= paused_at + 0.8 - 0.01, (paused_at, went)


def test_two_keys_do_not_interfere(db: str) -> None:
    async def main() -> tuple[float, list[tuple[float, float]], list[tuple[float, float]]]:
        a, b = SharedSlots(db, "acct-a:submit"), SharedSlots(db, "acct-b:submit")
        try:
            await a.pause(5.0)  # account a is held; b is not
            t0 = time.monotonic()
            got_b = await taker(b, 10)
            took_b = time.monotonic() - t0
            c = SharedSlots(db, "acct-c:query")
            both = await asyncio.gather(taker(c, 10), taker(SharedSlots(db, "acct-d:query"), 10))
            await c.close()
            return took_b, got_b, both[0] + both[1]
        finally:
            await a.close()
            await b.close()

    took_b, got_b, both = asyncio.run(main())
    assert took_b < 1.5  # 10 slots at 10/s: not held by a's pause
    assert_paced([s for s, _ in got_b], [w for _, w in got_b], RATE)
    # two keys at 10/s at once: 20 slots in about a second, two per tenth
    slots = sorted(s for s, _ in both)
    assert slots[-1] - slots[0] < 1.3
    assert most_in_a_second(slots) > RATE


def test_an_unreachable_database_is_one_line_without_its_password(postgres: Any) -> None:
    secret = "pw-Zq8-never-shown"
    closed = f"postgresql://omni:{secret}@127.0.0.1:{free_port()}/nowhere"
    missing = f"postgresql://postgres:{secret}@127.0.0.1:{postgres.port}/no_such_db"
    for url in (closed, missing):
        slots = SharedSlots(url, "acct-1:submit")
        assert secret not in repr(slots)
        with pytest.raises(StateError) as caught:
            asyncio.run(slots.take(RATE))
        message = str(caught.value)
        assert "\n" not in message and secret not in message, message
        assert "cannot connect to the shared pace's database" in message
        assert "127.0.0.1" in message


class Recording(SharedSlots):
    """The real slots, remembering each (slot, rate) asked for."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(url, key)
        self.taken: list[tuple[float, float]] = []

    async def take(self, rate: float) -> float:
        slot = await super().take(rate)
        self.taken.append((slot, rate))
        return slot


def test_budgets_take_shared_slots_at_their_effective_rate(db: str) -> None:
    """Two runners' accounts (submit 10/s, paced SHARED_MARGIN under) share the row: slots
    1 / (10 x (1 - SHARED_MARGIN)) s apart;
    when the API publishes 300/min, the rate each budget passes follows it."""

    def runner() -> tuple[Account, Recording]:
        account = Account("main", Rates(submit=RATE))
        account.share(db, "acct-1")
        assert account.submit.slots is not None and account.submit.slots.key == "acct-1:submit"
        assert account.query.slots is not None and account.query.slots.key == "acct-1:query"
        recording = Recording(db, "acct-1:submit")
        account.submit.slots = recording
        return account, recording

    async def main() -> tuple[list[Recording], float]:
        (a, ra), (b, rb) = runner(), runner()
        try:

            async def calls(account: Account, n: int) -> None:
                for _ in range(n):
                    await account.acquire(SUBMIT)

            await asyncio.gather(calls(a, 10), calls(b, 10))
            # the API says 300/min (5/s): both budgets slow down and pass their new rate on
            for account in (a, b):
                account.observe(SUBMIT, RateHeaders(limit_per_min=300), max_pause=30)
            assert a.submit.pacer is not None
            paced = a.submit.pacer.rate
            await asyncio.gather(calls(a, 4), calls(b, 4))
            return [ra, rb], paced
        finally:
            await a.aclose()
            await b.aclose()

    recordings, paced = asyncio.run(main())
    assert paced == pytest.approx(5.0 * (1 - SHARED_MARGIN))
    taken = sorted(x for r in recordings for x in r.taken)
    first = [(s, r) for s, r in taken if r > 9]
    after = [(s, r) for s, r in taken if r < 9]
    assert len(first) == 20 and len(after) == 8
    assert all(r == pytest.approx(RATE * (1 - SHARED_MARGIN)) for _, r in first)
    assert all(r == pytest.approx(paced) for _, r in after)
    first_slots = [s for s, _ in first]
    gaps = [y - x for x, y in itertools.pairwise(first_slots)]
    assert min(gaps) >= 1 / (RATE * (1 - SHARED_MARGIN)) - EXACT
    assert (len(first_slots) - 1) / (first_slots[-1] - first_slots[0]) >= 0.9 * RATE * (
        1 - SHARED_MARGIN
    )
    later = [s for s, _ in after]
    assert min(y - x for x, y in itertools.pairwise(later)) >= 1 / paced - EXACT


def test_a_429_on_one_runner_pauses_the_others_budget(db: str) -> None:
    async def main() -> tuple[float, float]:
        a, b = Account("main", Rates(submit=RATE)), Account("main", Rates(submit=RATE))
        a.share(db, "acct-1")
        b.share(db, "acct-1")
        try:
            await a.acquire(SUBMIT)
            await b.acquire(SUBMIT)
            t0 = time.monotonic()
            a.throttled(SUBMIT, 1.0, RateHeaders(), max_pause=30)  # a 429, Retry-After: 1
            await asyncio.sleep(0.05)  # the row is pushed by a task a keeps
            await b.acquire(SUBMIT)
            waited = time.monotonic() - t0
            assert a.submit.slots is not None and not a.submit.slots._tasks
            return waited, t0
        finally:
            await a.aclose()
            await b.aclose()

    waited, _ = asyncio.run(main())
    assert waited >= 0.99


def test_one_machine_never_imports_psycopg() -> None:
    code = textwrap.dedent(
        """
        import asyncio, sys
        import omni_batch
        from omni_batch.running.budgets import SUBMIT, Account, Rates, RateHeaders
        account = Account("main", Rates(submit=50.0))
        asyncio.run(account.acquire(SUBMIT))
        account.throttled(SUBMIT, 0.01, RateHeaders(), 1)
        asyncio.run(account.aclose())
        assert account.submit.slots is None
        assert "psycopg" not in sys.modules, "psycopg imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
