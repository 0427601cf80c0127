"""Simulator knobs and profiles: defaults, overrides, --set text, clear one-line errors, the
seeded per-task outcomes, and the memory a task costs."""

from __future__ import annotations

import tracemalloc

import pytest

from omni_batch.errors import UsageError
from omni_batch.simulator import DEFAULT_KEY, KNOBS, PROFILES, SimConfig, parse_settings
from omni_batch.simulator.state import SimState, outcome


def test_the_profiles_exist_and_only_default_is_the_bare_config():
    assert {"default", "fast", "chaos", "realistic"} <= set(PROFILES)
    assert PROFILES["default"] == SimConfig()
    assert SimConfig().keys == (DEFAULT_KEY,) == ("sk-sim-local",)
    assert PROFILES["fast"].gen_max <= 0.2
    assert (PROFILES["realistic"].gen_min, PROFILES["realistic"].gen_max) == (60.0, 300.0)
    chaos = PROFILES["chaos"]
    assert all(getattr(chaos, k) > 0 for k in ("p_5xx", "p_429", "p_drop", "p_ambiguous"))
    assert chaos.submit_shape == chaos.result_shape == "mixed"


def test_default_has_every_fault_off():
    config = SimConfig()
    assert all(getattr(config, k) == 0.0 for k in KNOBS if k.startswith("p_"))
    assert (config.rate, config.max_active, config.quota_after) == (None, None, None)
    assert config.link_ttl == 86_400


def test_from_profile_lays_overrides_over_the_profile():
    config = SimConfig.from_profile("chaos", seed=5, p_drop=0.0, keys="sk-x")
    assert (config.seed, config.p_drop, config.keys) == (5, 0.0, ("sk-x",))
    assert config.p_5xx == PROFILES["chaos"].p_5xx


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: SimConfig.from_profile("chaoss"), "did you mean chaos"),
        (lambda: SimConfig.from_profile("fast", p_5xxx=1), "unknown simulator knob 'p_5xxx'"),
        (lambda: SimConfig(p_drop=2.0), "p_drop must be between 0 and 1"),
        (lambda: SimConfig(result_shape="xml"), "result_shape must be one of"),
        (lambda: SimConfig(gen_min=3, gen_max=1), "gen_min <= gen_max"),
        (lambda: SimConfig(keys=()), "keys"),
        (lambda: SimConfig(rate=0), "rate must be positive"),
        (lambda: parse_settings(["p_5xx"]), "KNOB=VALUE"),
        (lambda: parse_settings(["rate=fast"]), "rate: 'fast' is not a number or none"),
        (lambda: parse_settings(["refresh_links=maybe"]), "refresh_links"),
    ],
)
def test_bad_knobs_raise_a_one_line_usage_error(call, words):
    with pytest.raises(UsageError) as caught:
        call()
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_settings_text_converts_to_each_knobs_type():
    parsed = parse_settings(
        [
            "rate=none",
            "burst=5",
            "p_5xx=0.25",
            "keys=sk-a, sk-b",
            "refresh_links=false",
            "submit_shape=legacy",
            "quota_after=10",
        ]
    )
    assert parsed == {
        "rate": None,
        "burst": 5,
        "p_5xx": 0.25,
        "keys": ("sk-a", "sk-b"),
        "refresh_links": False,
        "submit_shape": "legacy",
        "quota_after": 10,
    }
    assert SimConfig.from_profile("fast", **parsed).keys == ("sk-a", "sk-b")


def test_task_outcomes_depend_only_on_seed_and_task_number():
    config = SimConfig.from_profile("chaos", seed=11)
    assert outcome(config, 42) == outcome(config, 42)
    assert outcome(config, 42) != outcome(config, 43)
    assert outcome(config, 42) != outcome(SimConfig.from_profile("chaos", seed=12), 42)
    # Changing a shape knob does not move the drawn timings or failures.
    legacy = SimConfig.from_profile("chaos", seed=11, submit_shape="legacy")
    a, b = outcome(config, 42), outcome(legacy, 42)
    assert (a.queue_s, a.gen_s, a.failed) == (b.queue_s, b.gen_s, b.failed)
    times = [outcome(config, n).gen_s for n in range(200)]
    assert config.gen_min <= min(times) < max(times) <= config.gen_max
    fails = sum(outcome(config, n).failed for n in range(1000))
    assert 60 < fails < 140  # p_fail 0.1


def test_twenty_thousand_tasks_stay_small():
    state = SimState(SimConfig())
    fields = {"model": "gemini_omni", "aspect_ratio": "16:9", "duration": 6, "resolution": "720P"}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(20_000):
        body = {"model": "gemini_omni", "prompt": f"prompt number {n}"}
        state.create(DEFAULT_KEY, body, {**fields, "client_business_id": f"job-{n}"}, 0.0)
    per_task = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    tracemalloc.stop()
    assert per_task < 1_000, f"{per_task:.0f} bytes per task"
    stats = state.stats()
    assert (stats["submits"], stats["duplicate_bodies"]) == (20_000, 0)


def test_every_knob_has_a_line_of_help():
    # A knob added to SimConfig without a line in KNOB_HELP fails here: add one.
    from omni_batch.simulator.config import KNOB_HELP, knob_help

    missing = [name for name in KNOBS if not KNOB_HELP.get(name, "").strip()]
    assert not missing, f"add these knobs to KNOB_HELP in simulator/config.py: {missing}"
    assert not set(KNOB_HELP) - set(KNOBS), "KNOB_HELP names knobs SimConfig does not have"
    assert all("\n" not in knob_help(name) for name in KNOBS)
    assert "(one of: int, string, mixed)" not in knob_help("error_code")  # its help names them


def test_every_profile_says_what_it_is_for_and_which_timings_fit_it():
    from omni_batch.simulator.config import PROFILE_ABOUT, PROFILE_TIMINGS

    assert set(PROFILE_ABOUT) == set(PROFILES) == set(PROFILE_TIMINGS)
