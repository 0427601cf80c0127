"""The simulator's rate model (issue #14 item 10): per-account submit and query buckets next to
the shared rate/burst one, 429s that take no token, X-RateLimit-* headers, the concurrency
cap with and without its message, the lognormal generation-time spread, progress noise, the
published profiles, and the per-account windows /_sim/stats reports. All over real HTTP."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import pytest
from click.testing import CliRunner

from omni_batch.cli.main import main
from omni_batch.errors import UsageError
from omni_batch.simulator import PROFILES, SimConfig, parse_settings
from omni_batch.simulator.state import SlidingMax, outcome

LONG = {"queue_min": 0, "queue_max": 0, "gen_min": 30.0, "gen_max": 30.0}  # tasks stay active
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _rate_headers(reply) -> dict[str, str]:
    return {k: v for k, v in reply.headers.items() if k.lower().startswith("x-ratelimit")}


def test_keys_of_one_account_share_its_budget_and_see_its_tasks(sim_run):
    async def scenario(api):
        first = await api.submit(key="k1")
        assert first.status == 200
        assert (await api.submit(key="k2")).status == 200  # the account's second token
        for key in ("k1", "k2"):  # both keys of account a are out
            assert (await api.submit(key=key)).status == 429
        assert (await api.submit(key="k3")).status == 200  # account b has its own
        assert (await api.submit()).status == 200  # an unlisted key is an account of its own
        assert (await api.poll(first.body["id"], key="k2")).status == 200  # same account
        assert (await api.poll(first.body["id"], key="k3")).status == 404  # another one
        accounts = api.sim.stats()["accounts"]
        assert set(accounts) == {"a", "b", "key1"}  # key1: sk-sim-local, never the key itself
        assert accounts["a"]["keys"] == 2
        submits = accounts["a"]["async_submit"]
        assert (submits["accepted"], submits["limited"]) == (2, {"rate": 2})
        assert accounts["b"]["async_submit"]["accepted"] == 1

    settings = parse_settings(["accounts=a=k1,a=k2,b=k3"])
    sim_run(scenario, submit_rate=0.01, submit_burst=2, **settings)


def test_the_submit_budget_and_the_query_budget_are_independent(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        assert (await api.submit()).status == 429  # submit budget spent...
        for _ in range(3):
            assert (await api.poll(task_id)).status == 200  # ...queries go on
        assert (await api.poll(task_id)).status == 429  # until the query budget is spent
        limited = api.sim.stats()["accounts"]["key1"]
        assert limited["async_submit"]["accepted"] == 1
        assert limited["async_query"]["accepted"] == 3

    sim_run(scenario, submit_rate=0.01, submit_burst=1, query_rate=0.01, query_burst=3)


def test_a_call_must_pass_the_shared_budget_and_its_category_budget(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        assert (await api.poll(task_id)).status == 200
        shared = await api.poll(task_id)  # the query bucket has 9 left; the shared one none
        assert shared.status == 429
        assert "rate limit of 0.01 requests/s" in shared.body["error"]["message"]
        assert shared.headers["X-RateLimit-Limit"] == "0.6"  # it speaks for the shared bucket
        assert "X-RateLimit-Category" not in shared.headers
        account = api.sim.stats()["accounts"]["key1"]
        assert account["async_query"]["limited"] == {"shared_rate": 1}

    sim_run(scenario, rate=0.01, burst=2, query_rate=0.01, query_burst=10, rate_headers="all")


def test_refused_calls_take_no_token_and_business_refusals_do(sim_run):
    async def scenario(api):
        assert (await api.submit(key="k1")).status == 200  # 2 of 3 submit tokens left
        for _ in range(4):  # max_active 1: concurrency 429s, which take no token
            capped = await api.submit(key="k1")
            assert capped.status == 429
            assert "too many tasks in progress" in capped.body["error"]["message"]
            assert capped.headers["X-RateLimit-Remaining"] == "2"
        bad = await api.submit({"prompt": "no model"}, key="k1")  # a 400 takes one
        assert bad.status == 400
        assert bad.headers["X-RateLimit-Remaining"] == "1"
        assert (await api.submit(key="k2")).headers["X-RateLimit-Remaining"] == "2"  # b's own
        stats = api.sim.stats()
        a = stats["accounts"]["a"]["async_submit"]
        assert (a["accepted"], a["limited"]) == (2, {"concurrency": 4})

    sim_run(
        scenario,
        accounts=("a=k1", "b=k2"),
        submit_rate=0.01,
        submit_burst=3,
        max_active=1,
        rate_headers="all",
        **LONG,
    )


def test_limiter_down_takes_no_token(sim_run):
    async def scenario(api):
        for _ in range(3):
            down = await api.submit()
            assert down.status == 503
            assert down.body["error"]["type"] == "rate_limit_unavailable"
            assert down.headers["X-RateLimit-Remaining"] == "1"
        stats = api.sim.stats()
        assert (stats["accounts"]["key1"]["async_submit"]["accepted"], stats["submits"]) == (0, 0)
        # the burst of 1 was never spent: with the limiter back, a submit would pass
        assert api.sim.state.keys[api.sim.key].account.buckets["async_submit"].tokens == 1.0

    sim_run(scenario, submit_rate=0.01, submit_burst=1, p_limiter_down=1.0, rate_headers="all")


def test_an_injected_429_takes_no_token(sim_run):
    async def scenario(api):
        for _ in range(3):
            assert (await api.submit()).status == 429
        account = api.sim.stats()["accounts"]["key1"]["async_submit"]
        assert (account["accepted"], account["limited"]) == (0, {"storm": 3})
        assert api.sim.state.keys[api.sim.key].account.buckets["async_submit"].tokens == 2.0

    sim_run(scenario, submit_rate=0.01, submit_burst=2, p_429=1.0)


def test_rate_headers_on_every_answer_say_limit_remaining_reset_and_category(sim_run):
    async def scenario(api):
        before = time.time()
        first = await api.submit()
        assert _rate_headers(first) == {
            "X-RateLimit-Limit": "120",  # per minute
            "X-RateLimit-Remaining": "3",
            "X-RateLimit-Reset": first.headers["X-RateLimit-Reset"],
            "X-RateLimit-Category": "async_submit",
        }
        for _ in range(3):
            await api.submit()
        after = time.time()
        limited = await api.submit()
        assert limited.status == 429
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert limited.headers["X-RateLimit-Category"] == "async_submit"
        assert limited.headers["Retry-After"] == "1"
        assert limited.body["error"]["code"] == 429
        assert limited.body["error"]["type"] == "rate_limit_exceeded"
        assert "async_submit allows 120 requests per minute" in limited.body["error"]["message"]
        # Reset: whole unix seconds, the ceiling of when the bucket is full again (4 tokens
        # at 2/s: 2 s after it was emptied), never earlier than that
        reset = int(limited.headers["X-RateLimit-Reset"])
        assert math.ceil(before + 2.0) <= reset <= math.ceil(time.time() + 2.0)
        assert reset >= after + 1.9
        poll = await api.poll(first.body["id"])
        assert poll.headers["X-RateLimit-Category"] == "async_query"
        assert poll.headers["X-RateLimit-Limit"] == "3000"
        assert poll.headers["X-RateLimit-Remaining"] == "49"

    sim_run(
        scenario, submit_rate=2.0, submit_burst=4, query_rate=50, query_burst=50, rate_headers="all"
    )


@pytest.mark.parametrize("mode", ["limited", "none"])
def test_rate_headers_only_on_429s_or_never(sim_run, mode):
    async def scenario(api):
        ok = await api.submit()
        assert ok.status == 200 and not _rate_headers(ok)
        limited = await api.submit()
        assert limited.status == 429 and limited.headers["Retry-After"]
        if mode == "limited":
            assert set(_rate_headers(limited)) == {*RATE_HEADERS, "X-RateLimit-Category"}
        else:
            assert not _rate_headers(limited)

    sim_run(scenario, submit_rate=0.01, submit_burst=1, rate_headers=mode)


def test_a_rate_header_limit_that_is_not_whole_per_minute_keeps_its_fraction(sim_run):
    async def scenario(api):
        assert (await api.submit()).headers["X-RateLimit-Limit"] == "20.5"

    sim_run(scenario, submit_rate=20.5 / 60, submit_burst=2, rate_headers="all")


@pytest.mark.parametrize("says", [True, False])
def test_the_concurrency_429_with_and_without_its_message(sim_run, says):
    async def scenario(api):
        task = await api.submit(key="k1")  # account a: 1 running task, its cap
        capped = await api.submit(key="k1")
        assert capped.status == 429
        assert (await api.poll(task.body["id"], key="k1")).status == 200  # queries succeed
        # account b: a real submit-bucket 429 (two 400s spent its tokens)
        for _ in range(2):
            assert (await api.submit({"prompt": "no model"}, key="k2")).status == 400
        rate = await api.submit(key="k2")
        assert rate.status == 429
        assert "requests per minute" in rate.body["error"]["message"]
        look = ("Retry-After", *RATE_HEADERS[:2], "X-RateLimit-Category")
        same_headers = [capped.headers.get(h) for h in look] == [rate.headers.get(h) for h in look]
        if says:
            assert "too many tasks in progress (limit 1)" in capped.body["error"]["message"]
            assert capped.headers["X-RateLimit-Remaining"] == "1"  # the bucket did not refuse
            assert capped.headers["Retry-After"] == "30"  # when a running task finishes
            assert not same_headers
        else:  # nothing tells it from a rate 429: a client infers it from queries passing
            assert capped.body["error"] == rate.body["error"]
            assert same_headers
        stats = api.sim.stats()
        assert stats["accounts"]["a"]["async_submit"]["limited"] == {"concurrency": 1}
        assert stats["accounts"]["b"]["async_submit"]["limited"] == {"rate": 1}
        assert stats["accounts"]["a"]["peak_active"] == 1

    sim_run(
        scenario,
        accounts=("a=k1", "b=k2"),
        submit_rate=0.01,
        submit_burst=2,
        max_active=1,
        concurrency_says=says,
        rate_headers="all",
        **LONG,
    )


def test_max_active_is_per_account_and_stats_keep_each_accounts_peak(sim_run):
    async def scenario(api):
        assert (await api.submit(key="k1")).status == 200
        assert (await api.submit(key="k2")).status == 200
        assert (await api.submit(key="k1")).status == 429  # a's 2 tasks: its cap
        assert (await api.submit(key="k3")).status == 200
        stats = api.sim.stats()
        assert stats["accounts"]["a"]["peak_active"] == 2
        assert stats["accounts"]["b"]["peak_active"] == 1
        assert stats["peak_active"] == 3

    sim_run(scenario, accounts=("a=k1", "a=k2", "b=k3"), max_active=2, **LONG)


def test_stats_report_the_most_calls_accepted_in_any_1s_and_60s_window(sim_run):
    async def scenario(api):
        task_id = (await api.submit()).body["id"]
        replies = await asyncio.gather(*(api.poll(task_id) for _ in range(8)))
        assert sorted(r.status for r in replies) == [200] * 5 + [429] * 3
        await asyncio.sleep(1.1)  # one token back (query 1/s)
        assert (await api.poll(task_id)).status == 200
        query = api.sim.stats()["accounts"]["key1"]["async_query"]
        assert (query["accepted"], query["limited"]) == (6, {"rate": 3})
        assert (query["max_per_1s"], query["max_per_60s"]) == (5, 6)
        # without any limit the windows are measured all the same
        submit = api.sim.stats()["accounts"]["key1"]["async_submit"]
        assert (submit["max_per_1s"], submit["max_per_60s"]) == (1, 1)

    sim_run(scenario, query_rate=1.0, query_burst=5)


def test_the_sliding_window_counts_points_that_arrive_late():
    window = SlidingMax(1.0)
    for t in (0.0, 0.5, 2.0, 0.9, 1.4):  # 0.9 and 1.4 were let in earlier than 2.0 ended
        window.add(t)
    assert window.best == 3  # [0.5, 1.5] holds 0.5, 0.9, 1.4 (and [0, 1] 0, 0.5, 0.9)
    window.add(1.5)
    assert window.best == 4  # [0.5, 1.5]: 0.5, 0.9, 1.4, 1.5
    for n in range(500):  # far later: old points are pruned, the best is kept
        window.add(100.0 + n * 0.5)
    assert window.best == 4 and len(window.times) < 200


def test_lognormal_generation_times_scale_with_duration_and_stay_in_bounds():
    config = SimConfig.from_profile("published", seed=3)
    six = [outcome(config, n, 6).gen_s for n in range(400)]
    ten = [outcome(config, n, 10).gen_s for n in range(400)]
    assert six == [outcome(config, n, 6).gen_s for n in range(400)]  # deterministic
    assert six != [
        outcome(SimConfig.from_profile("published", seed=4), n, 6).gen_s for n in range(400)
    ]
    assert all(60.0 <= s <= 300.0 for s in six + ten)
    assert 1.5 <= statistics.median(ten) / statistics.median(six) <= 1.75
    assert 120 <= statistics.median(six) <= 150  # sqrt(60 * 300) = 134
    spread = statistics.quantiles(six, n=10)
    assert spread[-1] / spread[0] > 2  # a lognormal spread, not a constant
    # timings, failures and shapes are the uniform draws': only the generation time moves
    uniform = SimConfig.from_profile("published", seed=3, gen_spread="uniform")
    a, b = outcome(config, 7, 6), outcome(uniform, 7, 6)
    assert (a.queue_s, a.failed, a.task_id) == (b.queue_s, b.failed, b.task_id)
    assert outcome(uniform, 7, 6).gen_s == outcome(uniform, 7, 10).gen_s


def test_a_task_gets_its_lognormal_generation_time_from_its_requested_duration(sim_run):
    async def scenario(api):
        a = await api.submit(duration=6)
        b = await api.submit(duration=10)
        tasks = api.sim.state.tasks
        spans = [tasks[r.body["id"]].done - tasks[r.body["id"]].started for r in (a, b)]
        config = api.sim.config
        expected = [outcome(config, 0, 6).gen_s, outcome(config, 1, 10).gen_s]
        assert spans == pytest.approx(expected, abs=1e-6)

    sim_run(scenario, gen_spread="lognormal", gen_min=1.0, gen_max=100.0)


def test_progress_noise_moves_progress_but_never_back_nor_to_100_before_done(sim_run):
    async def scenario(api):
        slow = (await api.submit()).body["id"]  # a 10 s generation, polled at its start
        early = [(await api.poll(slow)).body["progress"] for _ in range(10)]
        assert max(early) >= 10  # the truth is ~0%: noise of 0.5 shows more
        assert early == sorted(early)

    async def finishing(api):
        task_id = (await api.submit()).body["id"]
        seen = []
        while True:
            body = (await api.poll(task_id)).body
            seen.append(body["progress"])
            if body["status"] in ("completed", "failed"):
                break
            assert body["progress"] < 100
            await asyncio.sleep(0.01)
        assert seen == sorted(seen) and seen[-1] == 100

    sim_run(scenario, progress_noise=0.5, queue_min=0, queue_max=0, gen_min=10.0, gen_max=10.0)
    sim_run(finishing, progress_noise=1.0, queue_min=0, queue_max=0, gen_min=0.3, gen_max=0.3)


def test_the_published_profiles_carry_the_published_limits():
    for name in ("published", "published-fast"):
        c = PROFILES[name]
        assert (c.submit_rate, c.submit_burst, c.query_rate, c.query_burst) == (5.0, 50, 50.0, 50)
        assert (c.rate, c.max_active, c.rate_headers, c.latency) == (None, None, "all", 0.15)
    published, fast = PROFILES["published"], PROFILES["published-fast"]
    assert (published.queue_min, published.queue_max) == (5.0, 10.0)
    assert (published.gen_min, published.gen_max, published.gen_spread) == (60, 300, "lognormal")
    assert (fast.queue_min, fast.queue_max, fast.gen_min, fast.gen_max) == (1, 3, 20, 40)


def test_simulate_show_lists_the_published_profiles_and_the_rate_knobs():
    result = CliRunner().invoke(
        main,
        ["simulate", "--show", "--profile", "published", "--set", "accounts=a=k1,a=k2,b=k3"],
    )
    assert result.exit_code == 0, result.output
    assert "# profile published: the default tier's published limits" in result.output
    for line in ("accounts = a=k1,a=k2,b=k3", "submit_rate = 5.0", "query_burst = 50"):
        assert line in result.output
    assert "rate_headers = all" in result.output
    fast = CliRunner().invoke(main, ["simulate", "--show", "--profile", "published-fast"])
    assert fast.exit_code == 0 and "gen_max = 40.0" in fast.output


@pytest.mark.parametrize(
    ("knobs", "words"),
    [
        ({"accounts": ("nokey",)}, "each entry is ACCOUNT=KEY"),
        ({"accounts": ("a=k1", "b=k1")}, "a key belongs to one account"),
        ({"submit_rate": 0.0}, "submit_rate must be positive"),
        ({"query_burst": 0}, "query_burst must be >= 1"),
        ({"progress_noise": 1.5}, "progress_noise must be between 0 and 1"),
        ({"rate_headers": "some"}, "rate_headers must be one of none, limited, all"),
        ({"gen_spread": "lognormal", "gen_min": 0.0}, "needs gen_min > 0"),
    ],
)
def test_bad_rate_knobs_are_one_line_errors(knobs, words):
    with pytest.raises(UsageError, match=words):
        SimConfig(**knobs)
