"""Request pressure: rate, poll priority, 429 back-off and recovery."""

from __future__ import annotations

import asyncio
import random
import time

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
    assert cut == 5.0
    assert "10.00 -> 5.00/s" in log[0] and "5.00 -> 6.25/s" in log[1]


def test_consecutive_429s_back_off_exponentially():
    pressure = Pressure(10.0, 10, rng=random.Random(3))
    pauses = [pressure.throttled(None) for _ in range(5)]
    assert pauses[-1] > pauses[0] * 4
    assert pressure.effective_rate == 5.0  # one cut per burst of 429s, not one per answer
