"""Poll economy (issue #14 item 6): the planner's pure logic, its properties, and one run
through the CLI against the simulator that must stay under a status-call bound the fixed
cadence exceeds."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import statistics
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_batch.batch import RunOptions, run_async
from omni_batch.cli.main import main
from omni_batch.running.engine import POLL_SHARE
from omni_batch.running.options import FAST, Policy
from omni_batch.running.polling import INFO_FRACTION, PollPacer, PollPlanner

KEY = ("gemini_omni", 6, "720P")
REAL = Policy()


def simulate(
    policy: Policy,
    tasks: int = 300,
    *,
    seed: int = 1,
    noise: float = 0.0,
    progress: bool = True,
    gen: tuple[float, float] = (30.0, 300.0),
) -> tuple[list[int], list[float], list[float]]:
    """Tasks queued U(5, 10) s then generating U(gen) s, their progress a floored linear
    percentage (the simulator's, plus ``noise``), one after the other through one planner:
    (status calls per task, detection delays, gaps between two polls of a task)."""
    planner = PollPlanner(policy)
    rng = random.Random(seed)
    calls, delays, gaps = [], [], []
    for _ in range(tasks):
        queue, span = rng.uniform(5, 10), rng.uniform(*gen)
        done = queue + span
        track = planner.track(KEY, 0.0)
        t = planner.first(track, 0.0, policy.max_wait).delay
        n = 0
        while True:
            n += 1
            if t >= done:
                planner.observe(track, t, "completed", 100)
                delays.append(t - done)
                break
            if t < queue:
                planner.observe(track, t, "queued", 0)
            else:
                value = 100 * (t - queue) / span + (rng.gauss(0, noise) if noise else 0.0)
                planner.observe(track, t, "in_progress", min(99, max(1, int(value))))
                if not progress:
                    track.first = track.last = None  # as if the answers carried none
            gap = planner.next(track, t, policy.max_wait).delay
            gaps.append(gap)
            t += gap
        calls.append(n)
    return calls, delays, gaps


def p90(values: list[float]) -> float:
    return sorted(values)[int(0.9 * len(values))]


def test_documented_timings_cost_about_three_calls_and_completion_is_seen_within_10_s():
    calls, delays, gaps = simulate(REAL)
    assert statistics.fmean(calls) <= 3.0
    assert p90(delays) <= 10.0 and statistics.median(delays) <= 5.0
    assert min(gaps) >= REAL.poll_min_interval  # never more often than every 5 s per task
    # the fixed cadence (main before the planner) costs several times as many
    fixed, _, _ = simulate(REAL.scaled(plan_polls=False, jitter=0.0))
    assert statistics.fmean(fixed) > 3 * statistics.fmean(calls)


def test_noisy_progress_costs_calls_not_much_delay():
    calls, delays, gaps = simulate(REAL, noise=1.5, seed=3)
    assert statistics.fmean(calls) <= 3.5
    assert p90(delays) <= 12.0
    assert min(gaps) >= REAL.poll_min_interval


def test_without_progress_it_waits_for_the_quickest_seen_then_keeps_the_cadence():
    _, delays, gaps = simulate(REAL, progress=False, tasks=100)
    assert p90(delays) <= REAL.poll_interval
    assert min(gaps) >= REAL.poll_min_interval
    # nothing learned yet: the first poll waits for 80% of the prior's quickest completion
    fresh = PollPlanner(REAL)
    track = fresh.track(KEY, 100.0)
    assert fresh.first(track, 100.0).delay == INFO_FRACTION * REAL.gen_prior[0]
    # learned: 80% of (about) the quickest completion of that kind; other kinds keep the prior
    for total in range(100, 130):
        fresh.learn(KEY, float(total))
    assert fresh.first(fresh.track(KEY, 0.0), 0.0).delay == INFO_FRACTION * 101
    other = ("gemini_omni", 10, "720P")
    assert fresh.first(fresh.track(other, 0.0), 0.0).delay == INFO_FRACTION * REAL.gen_prior[0]


def test_a_queued_task_is_asked_again_at_the_queued_cadence():
    planner = PollPlanner(REAL)
    track = planner.track(KEY, 0.0)
    planner.observe(track, 30.0, "queued", 0)
    assert planner.next(track, 30.0, 900.0).delay == REAL.poll_interval * REAL.queued_factor


def test_one_late_reading_is_enough_to_poll_once_at_the_completion():
    planner = PollPlanner(REAL)
    track = planner.track(KEY, 0.0)
    planner.observe(track, 5.0, "queued", 0)
    planner.observe(track, 100.0, "in_progress", 90)  # started 5-15 s: done by about 110 s
    plan = planner.next(track, 100.0, 900.0)
    assert plan.exact and 105.0 <= 100.0 + plan.delay <= 112.0


def test_the_deadline_bounds_every_poll():
    planner = PollPlanner(REAL)
    track = planner.track(KEY, 0.0)
    assert planner.first(track, 0.0, deadline=3.0).delay == 3.0
    planner.observe(track, 10.0, "in_progress", 2)  # finishes in minutes
    assert planner.next(track, 10.0, deadline=900.0).delay == REAL.gen_prior[0] - 10.0
    plan = planner.next(track, 10.0, deadline=20.0)
    assert plan.delay == 10.0 and not plan.exact


def test_a_poll_aimed_at_the_completion_that_finds_it_running_widens_the_error():
    planner = PollPlanner(REAL)
    track = planner.track(KEY, 0.0)
    planner.observe(track, 50.0, "in_progress", 50)
    planner.observe(track, 90.0, "in_progress", 90)
    aimed = planner.next(track, 90.0, 900.0)
    assert aimed.exact
    planner.observe(track, 90.0 + aimed.delay, "in_progress", 97)  # slower than it said
    assert track.misses == 1
    planner.next(track, 90.0 + aimed.delay, 900.0)
    planner.unanswered(track)  # a failed status call is no miss
    planner.observe(track, 200.0, "in_progress", 99)
    assert track.misses == 1
    window = planner.bracket(track)
    assert window is not None and window[1] > 90.0 + aimed.delay
    assert planner.next(track, 90.0 + aimed.delay, 900.0).delay >= REAL.poll_min_interval


def test_fixed_cadence_when_asked():
    fixed = REAL.scaled(plan_polls=False, poll_interval=7.0, first_poll=2.0)
    planner = PollPlanner(fixed)
    track = planner.track(KEY, 0.0)
    assert planner.first(track, 0.0).delay == 2.0
    planner.observe(track, 2.0, "in_progress", 50)
    assert planner.next(track, 2.0, 900.0).delay == 7.0


ANSWERS = st.tuples(
    st.floats(0.0, 400.0),  # seconds since the previous answer
    st.sampled_from(["queued", "submitted", "in_progress", "processing", "completed", "failed"]),
    st.one_of(
        st.none(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-5, 150).map(float),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    answers=st.lists(ANSWERS, max_size=12),
    learned=st.lists(st.floats(0.0, 2000.0), max_size=15),
    deadline=st.floats(1.0, 3000.0),
    fast=st.booleans(),
)
def test_any_answers_give_a_bounded_deterministic_plan(answers, learned, deadline, fast):
    policy = FAST if fast else REAL

    def replay() -> list[tuple[float, bool]]:
        planner = PollPlanner(policy)
        for total in learned:
            planner.learn(KEY, total)
        track = planner.track(KEY, 0.0)
        first = planner.first(track, 0.0, deadline)
        assert 0.0 <= first.delay <= deadline
        plans, now = [], 0.0
        for step, status, progress in answers:
            now += step
            planner.observe(track, now, status, progress)
            plan = planner.next(track, now, deadline)
            assert math.isfinite(plan.delay) and plan.delay >= 0
            if now + policy.poll_min_interval <= deadline:
                assert plan.delay >= policy.poll_min_interval - 1e-9  # never too often
                assert now + plan.delay <= deadline + 1e-9  # never past the deadline
            assert plan.delay <= max(policy.poll_max_gap, policy.poll_min_interval) + 1e-9
            plans.append((plan.delay, plan.exact))
        return plans

    assert replay() == replay()  # a pure function of its inputs


def test_the_pacer_never_plans_more_polls_than_the_budget_serves():
    pacer = PollPacer(rate=40.0)  # polls per second
    now = 1000.0
    placed = [pacer.place(now + 5.0, now) for _ in range(5000)]  # thousands due at once
    assert min(placed) == now + 5.0
    per_second: dict[int, int] = {}
    for when in placed:
        per_second[int(when)] = per_second.get(int(when), 0) + 1
    assert max(per_second.values()) <= 40
    assert max(placed) <= now + 5.0 + 5000 / 40 + 1  # spread, not pushed further than needed
    assert pacer.place(now + 1.0, now) == now + 1.0  # an empty slot: on time
    pacer.place(now + 2000.0, now + 1500.0)  # slots in the past are forgotten
    assert len(pacer) == 1
    assert PollPacer(None).place(now, now) == now  # no budget known: nothing moved
    slow = PollPacer(rate=0.5)  # slower than one per slot
    times = [slow.place(now, now) for _ in range(4)]
    assert all(b - a >= 2.0 - 1e-9 for a, b in itertools.pairwise(times))


# -- end to end: the CLI against the simulator --------------------------------------------

MANIFEST = """
name: poll-economy
vars:
  n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
prompts:
  - id: shot-{n}
    prompt: "shot number {n}"
"""


def _run(tmp_path: Path, name: str, *extra: str) -> pd.DataFrame:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    out = tmp_path / name
    knobs = ["gen_min=0.3", "gen_max=3.0", "queue_min=0.05", "queue_max=0.1", "seed=5"]
    args = ["run", str(manifest), "--simulate", "fast", "--out", str(out), "--yes", "--no-verify"]
    args += ["--rate", "100"]
    for knob in knobs:
        args += ["--sim-set", knob]
    result = CliRunner().invoke(main, [*args, *extra])
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "report.csv")
    assert len(rows) == 12 and set(rows.status) == {"completed"}
    return rows


def test_a_run_polls_each_task_a_few_times_where_the_fixed_cadence_polls_many(tmp_path):
    planned = _run(tmp_path, "planned")
    fixed = _run(tmp_path, "fixed", "--poll-interval", str(FAST.poll_interval))
    bound = 4.0
    assert planned.polls.mean() <= bound, list(planned.polls)
    assert fixed.polls.mean() > bound, list(fixed.polls)  # the old cadence: ~1 call per 0.3 s


def test_the_pacer_takes_a_new_rate_and_starts_its_slots_anew_when_their_width_changes():
    now = 1000.0
    pacer = PollPacer(rate=40.0)
    assert [pacer.place(now + 1.0, now) for _ in range(10)][-1] == now + 1.0  # 10 fit a slot
    pacer.set_rate(40.0)  # unchanged: the slots stay
    assert len(pacer) == 10
    pacer.set_rate(2.0)  # a 429 cut: slots of 0.5 s, one poll each
    assert pacer.width == 0.5 and pacer.per_slot == 1 and len(pacer) == 0
    times = [pacer.place(now + 1.0, now) for _ in range(4)]
    assert times == [now + 1.0, now + 1.5, now + 2.0, now + 2.5]
    pacer.set_rate(None)  # no budget known: nothing is moved
    assert pacer.place(now + 1.0, now) == now + 1.0


def test_published_query_limits_reach_the_poll_pacer(tmp_path):
    """The pacer is built at the default tier's query rate; the API publishes 10/s on its
    first answers: polls are then spread at 80% of that (POLL_SHARE), not at the tier's."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST, encoding="utf-8")
    seen = []
    options = RunOptions(
        out=tmp_path / "out",
        simulate="fast",
        verify=False,
        simulator_settings={"rate_headers": "all", "query_rate": 10.0},
    )
    report = asyncio.run(
        run_async(manifest, options, on_start=lambda stats, engine: seen.append(engine))
    )
    assert set(report.status) == {"completed"}
    engine = seen[0]
    assert engine.accounts[0].budgets.query.effective_rate == pytest.approx(10.0)
    assert engine.pacer.rate == pytest.approx(10.0 * POLL_SHARE)
