"""Money (issue #15), end to end through the CLI against the simulator over loopback: prices
in the plan, budget.max_cost, the preflight balance and model-list checks (and their absence),
--allow-partial, and a report whose cost_usd adds up to what the simulator billed."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from omni_batch.batch import RunOptions, run_async
from omni_batch.cli.main import main
from omni_batch.errors import BudgetReached
from omni_batch.planning.manifest import Budget, load_manifest
from tests.conftest import cli, sim, write_manifest

PRICE = 0.12  # gemini_omni in the shipped catalog (an estimate), USD per second
JOB_USD = PRICE * 6  # every job below is 6 s: $0.72, 144 credits
CREDITS_PER_USD = 200
JOBS = 6
SEED = 3  # the simulator seed these tests were written against

MANIFEST = """
name: money
defaults:
  aspect_ratio: ["16:9", "9:16"]
prompts:
  - id: alpha
    prompt: "alpha shot"
  - id: beta
    prompt: "beta shot"
  - id: gamma
    prompt: "gamma shot"
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "money.yaml", MANIFEST)


def plan(*args: str):
    return CliRunner().invoke(main, ["plan", *args])


# -- the plan -------------------------------------------------------------------------------


def test_plan_json_and_csv_carry_cost_usd_per_job(manifest):
    as_json = json.loads(plan(str(manifest), "--format", "json").stdout)
    assert [job["cost_usd"] for job in as_json] == [pytest.approx(JOB_USD)] * JOBS
    rows = list(csv.DictReader(io.StringIO(plan(str(manifest), "--format", "csv").stdout)))
    assert [float(row["cost_usd"]) for row in rows] == [pytest.approx(JOB_USD)] * JOBS


def test_plan_table_shows_the_estimate_and_its_source(manifest):
    table = plan(str(manifest)).stdout
    assert f"${JOB_USD * JOBS:.2f} estimated" in table
    assert "16:9 $2.16, 9:16 $2.16" in table
    assert "estimate as of 2026-08" in table


def test_a_model_without_a_price_is_price_unknown_never_zero(tmp_path):
    path = tmp_path / "veo.yaml"
    path.write_text("model: veo3.1-fast\nprompts: [a fox]\n", encoding="utf-8")
    table = plan(str(path)).stdout
    assert "price unknown" in table and "$0.00" not in table
    [job] = json.loads(plan(str(path), "--format", "json").stdout)
    assert job["cost_usd"] is None
    [row] = csv.DictReader(io.StringIO(plan(str(path), "--format", "csv").stdout))
    assert row["cost_usd"] == ""


def test_a_catalog_overlay_corrects_the_price(manifest, tmp_path):
    overlay = tmp_path / "prices.yaml"
    overlay.write_text("models:\n  gemini_omni:\n    usd_per_second: 0.05\n", encoding="utf-8")
    jobs = json.loads(plan(str(manifest), "--catalog", str(overlay), "--format", "json").stdout)
    assert [job["cost_usd"] for job in jobs] == [pytest.approx(0.30)] * JOBS
    table = plan(str(manifest), "--catalog", str(overlay)).stdout
    assert "$0.05/s" in table and "estimate as of" not in table  # the user's price, not ours


def test_max_cost_over_the_estimate_is_refused_in_one_line(manifest, tmp_path):
    path = tmp_path / "capped.yaml"
    path.write_text(MANIFEST + "budget:\n  max_cost: 4.00\n", encoding="utf-8")
    result = plan(str(path))
    assert result.exit_code == 2
    line = f"{path}:13: budget.max_cost: the manifest is estimated at $4.32"
    assert result.stderr.strip().splitlines() == [
        f"{line} (36 s of video at the catalog's prices), over the budget of $4.00"
    ]
    with sim(seed=SEED) as server:  # run refuses it the same way, before any call
        ran = cli(server, path, tmp_path / "out")
        assert server.stats()["requests"] == 0
    assert ran.exit_code == 2 and "budget.max_cost" in ran.stderr
    path.write_text(MANIFEST + "budget:\n  max_cost: 4.32\n", encoding="utf-8")
    assert plan(str(path)).exit_code == 0


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("    usd_per_second: -0.1\n", "gemini_omni.usd_per_second", "it must be 0 or more"),
        ("    usd_per_second: cheap\n", "gemini_omni.usd_per_second", "is not a number"),
        ("    eur_per_second: 0.1\n", "gemini_omni.eur_per_second", "unknown currency field"),
        ("    usd_per_second: {4k: 0.2}\n", "gemini_omni.usd_per_second.4k", "no resolution"),
    ],
)
def test_bad_prices_in_a_catalog_are_one_line_each(manifest, tmp_path, text, field, message):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("models:\n  gemini_omni:\n" + text, encoding="utf-8")
    result = plan(str(manifest), "--catalog", str(overlay))
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{overlay}:3: {field}: ") and message in line
    assert "Traceback" not in result.output


def test_max_cost_that_is_not_an_amount_is_one_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("prompts: [a cat]\nbudget:\n  max_cost: lots\n", encoding="utf-8")
    result = plan(str(path))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"{path}:3: budget.max_cost: 'lots' is not an amount: a positive number of US dollars "
        "(e.g. 25 or 12.50)"
    )


# -- preflight ------------------------------------------------------------------------------


def test_a_short_balance_is_refused_with_both_figures_and_nothing_sent(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(seed=SEED, balance_credits=3 * JOB_USD * CREDITS_PER_USD) as server:  # pays for 3 of 6
        result = cli(server, manifest, out)
        stats = server.stats()
    assert result.exit_code == 4, result.output
    assert stats["submit_requests"] == 0 and stats["submits"] == 0
    assert "the balance (key) is $2.16, the 6 jobs to submit are estimated at $4.32" in (
        result.stderr
    )
    assert "--allow-partial" in result.stderr and "Traceback" not in result.output
    assert set(pd.read_csv(out / "report.csv").status) == {"pending"}


def test_allow_partial_runs_what_the_balance_pays_for(manifest, tmp_path):
    out = tmp_path / "out"
    with sim(seed=SEED, balance_credits=3.5 * JOB_USD * CREDITS_PER_USD) as server:
        result = cli(server, manifest, out, "--allow-partial")
        stats = server.stats()
    assert result.exit_code == 1, result.output  # the rest is still to do
    assert stats["submits"] == 3 and stats["status_402"] == 0
    rows = pd.read_csv(out / "report.csv")
    assert (rows.status == "completed").sum() == 3 and (rows.status == "pending").sum() == 3
    assert "pays for 3 of the 6 jobs" in result.output
    assert "balance: $2.52 before, $0.36 after: $2.16 billed by the API" in result.output


def test_a_model_the_key_may_not_use_is_refused_before_any_submit(manifest, tmp_path):
    with sim(seed=SEED, blocked_models=("gemini_omni",)) as server:
        result = cli(server, manifest, tmp_path / "out")
        stats = server.stats()
    assert result.exit_code == 2, result.output
    assert stats["submit_requests"] == 0
    assert "model gemini_omni: not among the models this key may use" in result.stderr


def test_an_api_without_balance_or_model_list_skips_the_checks_with_a_note(manifest, tmp_path):
    with sim(seed=SEED, balance_endpoint=False, models_endpoint=False) as server:
        result = cli(server, manifest, tmp_path / "out")
        stats = server.stats()
    assert result.exit_code == 0, result.output
    assert stats["submits"] == JOBS and stats["status_404"] == 3  # models, key, account
    assert "the API has no GET /v1/models (404); models not checked" in result.output
    assert "the API has no GET /v1/balance or /v1/user/balance (404); not checked" in (
        result.output
    )


# -- what was billed ------------------------------------------------------------------------


def test_report_cost_adds_up_to_what_the_api_billed_with_failures_refunded(tmp_path):
    path = tmp_path / "many.yaml"
    values = ",".join(str(i) for i in range(24))
    path.write_text(
        f"vars: {{n: [{values}]}}\nprompts:\n  - {{id: 'shot-{{n}}', prompt: 'shot {{n}}'}}\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    with sim(seed=SEED, balance_credits=100_000, p_fail=0.3) as server:
        result = cli(server, path, out, "--json")
        stats = server.stats()
    rows = pd.read_csv(out / "report.csv")
    failed = rows[rows.error_type == "generation_failed"]
    assert len(failed) >= 3 and (failed.cost_usd == 0).all()  # refunded
    assert stats["credits_refunded"] > 0
    billed_usd = stats["credits_used"] / CREDITS_PER_USD
    assert rows.cost_usd.sum() == pytest.approx(billed_usd)
    assert (rows.usd_per_second == PRICE).all()
    summary = json.loads(result.stdout)
    assert summary["spend"]["cost_usd"] == pytest.approx(billed_usd)
    completed = rows[rows.status == "completed"]
    assert completed.cost_usd.sum() == pytest.approx(len(completed) * JOB_USD)


def test_submitting_stops_before_max_cost_would_be_crossed(manifest, tmp_path):
    """The plan refuses a manifest over budget.max_cost; a run checks it again as it goes
    (spend of earlier runs included), here with a limit below the manifest's estimate."""
    loaded = load_manifest(manifest)
    capped = dataclasses.replace(loaded, budget=Budget(max_cost=2.5 * JOB_USD))
    out = tmp_path / "out"
    options = RunOptions(out=out, simulate="fast", verify=False)
    with pytest.raises(BudgetReached, match=r"budget.max_cost \$1.80"):
        asyncio.run(run_async(capped, options))
    rows = pd.read_csv(out / "report.csv")
    assert (rows.status == "completed").sum() == 2 and (rows.status == "pending").sum() == 4
    assert rows.cost_usd.sum() == pytest.approx(2 * JOB_USD)


def test_the_progress_line_shows_spent_and_projected():
    from omni_batch.cli.progress import summary_line
    from omni_batch.running.engine import RunStats
    from omni_batch.running.money import Spend, estimate

    spend = Spend({"gemini_omni": PRICE}, max_cost=3.0)
    spend.to_submit = estimate([("gemini_omni", "720P", 6, 4)], spend.table)
    body = {"model": "gemini_omni", "resolution": "720P", "duration": 6}
    stats = RunStats(counts={"pending": 4}, spend=spend)
    assert summary_line(stats).endswith("| spent $0.00, projected $2.88 (max $3.00)")
    for job in ("a", "b"):
        assert spend.allows(job, body)
        spend.billed(job, body)
    spend.refunded("b")  # its generation failed
    assert summary_line(stats).endswith("| spent $0.72, projected $2.16 (max $3.00)")
    # $0.72 spent; c, d, e reserved: $2.88; f would make $3.60 > $3.00
    assert all(spend.allows(job, body) for job in "cde")
    assert not spend.allows("f", body)
    cheap = {**body, "duration": 1}
    assert not spend.allows("g", cheap)  # once stopped, nothing more is sent


def test_spend_holds_a_job_only_while_its_task_may_still_be_refunded(tmp_path):
    """Issue #14 item 9: nothing in the CLI path holds a row per job. After a run (refunds
    included) the spend holds no job; its total still matches what the API billed."""
    path = tmp_path / "many.yaml"
    values = ",".join(str(i) for i in range(16))
    path.write_text(
        f"vars: {{n: [{values}]}}\nprompts:\n  - {{id: 'shot-{{n}}', prompt: 'shot {{n}}'}}\n",
        encoding="utf-8",
    )
    seen = []
    options = RunOptions(
        out=tmp_path / "out",
        simulate="fast",
        verify=False,
        simulator_settings={"seed": 3, "p_fail": 0.3},
    )
    asyncio.run(run_async(path, options, on_start=lambda stats, engine: seen.append(engine)))
    spend = seen[0].spend
    rows = pd.read_csv(tmp_path / "out" / "report.csv")
    assert (rows.error_type == "generation_failed").sum() >= 2  # refunds happened
    assert spend.held == {} and spend.reserved == {}
    assert spend.spent_usd == pytest.approx(rows.cost_usd.sum())
    assert spend.spent_usd == pytest.approx((rows.status == "completed").sum() * JOB_USD)
