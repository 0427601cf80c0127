"""Rate budgets (omni_batch/running/budgets.py): pacing without a burst, a rate changed in place and
a pause that reach callers already waiting, the published headers, tiers and flags."""

from __future__ import annotations

import asyncio
import math
import random
import time

import pytest

from omni_batch.running.budgets import (
    QUERY,
    SUBMIT,
    TIERS,
    Account,
    Budget,
    Pacer,
    RateHeaders,
    Rates,
    parse_rate_headers,
)


async def _times(pacer: Pacer | Account, n: int, category: str = SUBMIT) -> list[float]:
    start = time.monotonic()
    out = []
    for _ in range(n):
        if isinstance(pacer, Account):
            await pacer.acquire(category)
        else:
            await pacer.acquire()
        out.append(time.monotonic() - start)
    return out


def test_no_burst_above_the_rate_at_any_time_scale():
    # 60 acquisitions at 40/s from 6 concurrent callers: in every window of w seconds, at
    # most rate*w + 1 of them (a burst would put several in the first instant)
    async def main() -> list[float]:
        pacer = Pacer(40.0)
        stamps: list[float] = []
        start = time.monotonic()

        async def caller() -> None:
            for _ in range(10):
                await pacer.acquire()
                stamps.append(time.monotonic() - start)

        await asyncio.gather(*(caller() for _ in range(6)))
        return sorted(stamps)

    stamps = asyncio.run(main())
    for w in (0.001, 0.05, 0.2, 1.0):
        most = max(sum(1 for t in stamps if s <= t < s + w) for s in stamps)
        assert most <= 40 * w + 1.5, (w, most)
    assert stamps[-1] >= 59 / 40 * 0.95  # and no slower than the rate either (~1.5 s)
    assert stamps[-1] <= 59 / 40 * 1.3


def test_a_rate_change_reaches_callers_already_waiting():
    async def main() -> float:
        pacer = Pacer(1.0)
        await pacer.acquire()  # the next one would be due in 1 s
        waiter = asyncio.create_task(pacer.acquire())
        await asyncio.sleep(0.05)
        start = time.monotonic()
        pacer.set_rate(50.0)  # in place: the same bucket, the waiter re-timed
        await waiter
        return time.monotonic() - start

    assert asyncio.run(main()) < 0.2  # not the 0.95 s the old rate would have made it wait


def test_a_pause_reaches_every_caller_already_waiting_and_lifts_after():
    async def main() -> list[float]:
        pacer = Pacer(100.0)
        start = time.monotonic()
        waiters = [asyncio.create_task(pacer.acquire()) for _ in range(5)]
        await asyncio.sleep(0)
        pacer.pause(0.3)
        done = []
        for waiter in asyncio.as_completed(waiters):
            await waiter
            done.append(time.monotonic() - start)
        return done

    done = asyncio.run(main())
    # the first may have passed before the pause; the rest wait it out, then go at the rate
    assert sum(1 for t in done if t < 0.29) <= 1
    assert max(done) < 0.8


def test_submits_and_status_calls_never_wait_on_each_other():
    async def main() -> tuple[float, float]:
        account = Account("a", Rates(submit=2.0, query=200.0))
        submits = asyncio.create_task(_times(account, 4, SUBMIT))  # ~1.5 s of submits
        await asyncio.sleep(0.01)
        polls = await _times(account, 40, QUERY)
        return polls[-1], (await submits)[-1]

    polls_done, submits_done = asyncio.run(main())
    assert polls_done < 0.5 and submits_done > 1.3


def test_shared_rate_serves_both_kinds_first_come_first_served():
    async def main() -> list[str]:
        account = Account("a", Rates(shared=20.0))
        order: list[str] = []

        async def call(kind: str, category: str) -> None:
            await account.acquire(category)
            order.append(kind)

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(call(f"s{i}", SUBMIT)))
            tasks.append(asyncio.create_task(call(f"q{i}", QUERY)))
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(main())
    assert order == [f"{k}{i}" for i in range(6) for k in "sq"]  # neither kind starves


def test_rates_from_tier_flags_and_the_shared_rate():
    assert Rates().resolved() == ((5.0, False), (50.0, False))
    assert Rates(tier="vip").resolved()[0][0] == pytest.approx(1000 / 60)
    assert Rates(tier="svip").resolved()[1][0] == pytest.approx(500.0)
    assert Rates(shared=8.0).resolved() == ((None, False), (None, False))  # --rate alone
    assert Rates(shared=8.0, submit=2.0).resolved() == ((2.0, True), (None, False))
    assert set(TIERS) == {"default", "vip", "svip"}
    with pytest.raises(ValueError, match="unknown tier 'gold'"):
        Rates(tier="gold").resolved()
    unlimited = Account("a", Rates(submit=math.inf, query=math.inf))
    assert unlimited.submit.pacer is None and unlimited.query.pacer is None


def test_rate_headers_are_read_leniently():
    now = 1_800_000_000.0
    seen = parse_rate_headers(
        {
            "X-RateLimit-Limit": "300",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(now + 12),
            "X-RateLimit-Category": " Async_Submit ",
        },
        now=now,
    )
    assert seen == RateHeaders(300.0, 0.0, 12.0, SUBMIT)
    assert parse_rate_headers({"X-RateLimit-Reset": "7"}).reset_in == 7.0  # seconds from now
    junk = {"X-RateLimit-Limit": "lots", "X-RateLimit-Remaining": "-3", "X-RateLimit-Category": "x"}
    assert parse_rate_headers(junk) == RateHeaders()
    assert not parse_rate_headers({}).any


def test_a_published_limit_replaces_the_tier_but_never_raises_an_explicit_rate():
    said: list[str] = []
    tiered = Budget("submit", 5.0, on_change=said.append)
    tiered.observe(RateHeaders(limit_per_min=1000), max_pause=60)
    assert tiered.rate == pytest.approx(1000 / 60)  # a vip account found by its headers
    assert "publishes 1000/min" in said[0]
    explicit = Budget("submit", 2.0, explicit=True)
    explicit.observe(RateHeaders(limit_per_min=1000), max_pause=60)
    assert explicit.rate == 2.0
    explicit.observe(RateHeaders(limit_per_min=60), max_pause=60)
    assert explicit.rate == 1.0  # lower than asked: the server's limit wins


def test_nothing_remaining_waits_one_interval_or_the_reset_whichever_is_sooner():
    async def main(limit: float, reset: float) -> float:
        budget = Budget("query", 100.0)
        await budget.acquire()
        budget.observe(RateHeaders(limit_per_min=limit, remaining=0, reset_in=reset), 60)
        start = time.monotonic()
        await budget.acquire()
        return time.monotonic() - start

    # a token bucket of 2/s, full again in 5 s: the next token is 0.5 s away, not 5 s
    assert 0.45 <= asyncio.run(main(120, 5.0)) < 0.7


def test_a_lone_429_widens_the_margin_and_repeated_429s_cut_the_rate_until_calm():
    async def main() -> tuple[float, list[float], float, list[str]]:
        said: list[str] = []
        budget = Budget("submit", 10.0, calm_after=0.5, on_change=said.append, rng=random.Random(1))
        pause = budget.throttled(0.2, RateHeaders(), max_pause=60)
        budget.throttled(None, RateHeaders(), max_pause=60)  # same storm: nothing more
        start = time.monotonic()
        await budget.acquire()
        waited = time.monotonic() - start  # Retry-After honoured by the next caller
        paced = [budget.pacer.rate]  # 6% under 10/s, the rate itself unchanged
        await asyncio.sleep(0.05)  # the pause is over
        budget.throttled(0.05, RateHeaders(), max_pause=60)  # again within calm_after: cut
        paced.append(budget.effective_rate)
        await asyncio.sleep(0.6)
        budget.succeeded()
        paced.append(budget.effective_rate)
        return pause, paced, waited, said

    pause, paced, waited, said = asyncio.run(main())
    assert pause == 0.2 and waited >= 0.19
    assert paced[0] == pytest.approx(9.4) and paced[1] == pytest.approx(7.0)
    assert paced[2] == pytest.approx(10.0)
    assert "6% under 10.00/s (was 3%)" in said[0]
    assert "10.00 -> 7.00/s" in said[1] and "7.00 -> 10.00/s" in said[2]


def test_a_429_with_a_published_limit_pauses_without_cutting():
    budget = Budget("submit", 5.0)
    seen = RateHeaders(limit_per_min=300, remaining=0, reset_in=2.0, category=SUBMIT)
    assert budget.throttled(None, seen, max_pause=60) == 2.0  # the reset, for want of Retry-After
    assert budget.effective_rate == 5.0
    assert budget.throttled(None, RateHeaders(reset_in=999), max_pause=60) <= 2.0  # same pause


def test_a_429_category_names_the_budget_that_slows_down():
    account = Account("a", Rates())
    seen = RateHeaders(category=QUERY)
    account.throttled(SUBMIT, None, seen, max_pause=60)  # a submit call, the query budget said
    assert account.query.margin > account.submit.margin
    assert account.query._paused_until > 0 and account.submit._paused_until == 0


def test_a_pause_keeps_its_end_when_the_rate_changes():
    async def main() -> float:
        budget = Budget("submit", 50.0)
        budget.throttled(0.4, RateHeaders(), max_pause=60)  # paused 0.4 s at 50/s
        budget.observe(RateHeaders(limit_per_min=60), max_pause=60)  # then 1/s is published
        start = time.monotonic()
        await budget.acquire()
        return time.monotonic() - start

    # the pause ends when it said (0.4 s), not 50x later as a bucket of tokens would
    assert 0.3 <= asyncio.run(main()) < 0.8


def test_a_published_limit_far_too_small_is_not_believed():
    budget = Budget("submit", 5.0)
    budget.observe(RateHeaders(limit_per_min=0.001), max_pause=60)
    assert budget.rate == pytest.approx(1 / 60)  # one a minute at the least, not one a day
