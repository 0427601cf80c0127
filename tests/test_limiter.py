"""Request pressure: rate, poll priority, 429 back-off and recovery."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from omni_batch.limiter import Pressure


def test_rate_is_paced_without_a_burst():
    async def main() -> float:
        pressure = Pressure(50.0, 10)
        start = time.monotonic()
        for _ in range(11):
            await pressure.poll_permit()
        return time.monotonic() - start

    assert 0.18 <= asyncio.run(main()) <= 0.5  # 10 gaps of 20 ms


def test_waiting_polls_go_before_submissions():
    # at most one submit waits inside the rate limiter; every later submit lets all
    # waiting polls pass first, even polls that arrived after it
    async def main() -> list[str]:
        pressure = Pressure(20.0, 10)
        order: list[str] = []
        await pressure.poll_permit()  # the bucket is now full for 50 ms

        async def submit(n: int) -> None:
            await pressure.submit_permit()
            order.append(f"submit{n}")

        async def poll(n: int) -> None:
            await pressure.poll_permit()
            order.append(f"poll{n}")

        submits = [asyncio.create_task(submit(n)) for n in range(2)]
        await asyncio.sleep(0)
        polls = [asyncio.create_task(poll(n)) for n in range(3)]
        await asyncio.gather(*submits, *polls)
        return order

    order = asyncio.run(main())
    assert order[-1] == "submit1"
    assert all(order.index(f"poll{n}") < order.index("submit1") for n in range(3))


def test_a_429_pauses_halves_the_rate_and_calm_restores_it_step_by_step():
    async def main() -> tuple[float, float, float, list[str]]:
        log: list[str] = []
        pressure = Pressure(10.0, 10, calm_after=0.1, on_change=log.append, rng=random.Random(1))
        pause = pressure.throttled(retry_after=0.2)
        cut = pressure.effective_rate
        start = time.monotonic()
        await pressure.poll_permit()
        waited = time.monotonic() - start
        await asyncio.sleep(0.15)
        pressure.succeeded()
        return pause, cut, waited, log

    pause, cut, waited, log = asyncio.run(main())
    assert pause >= 0.2 and waited >= 0.19  # Retry-After honoured by every caller
    assert cut == 7.0
    assert "10.00 -> 7.00/s" in log[0] and "7.00 -> 10.00/s" in log[1]


def test_consecutive_429s_back_off_exponentially_but_a_storm_counts_once():
    pressure = Pressure(10.0, 10, rng=random.Random(3))
    first = pressure.throttled(None)
    # answers to requests sent before the pause began: no escalation, no second cut
    assert pressure.throttled(None) <= first and pressure.effective_rate == 7.0
    pressure._paused_until = 0.0  # the pause is over; the next 429 is a new one
    pressure._last_429 -= 1.0
    second = pressure.throttled(None)
    assert second > 0 and pressure.effective_rate == pytest.approx(4.9)
    pauses = []
    for _ in range(4):
        pressure._paused_until = 0.0
        pauses.append(pressure.throttled(None))
    assert pauses[-1] > first * 4  # 1, 2, 4, 8, 16 s (with jitter)
