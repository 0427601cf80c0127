"""What a new user tripped over in the first hour (issue #19), each through the real CLI:
`--simulate` before the manifest, the realistic profile's timings, output piped to a file or
CI, `--json` for scripts, answering no, a busy folder, and the simulator's knobs explained.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_batch.cli.main import main
from omni_batch.journal import open_journal
from omni_batch.running.options import FAST, Policy
from omni_batch.simulator import SimConfig, serve_in_thread
from tests.conftest import write_manifest

MANIFEST = """
name: first-hour
prompts:
  - id: alpha
    prompt: "alpha shot"
  - id: beta
    prompt: "beta shot"
"""
JOBS = 2
# the default profile's tasks take up to 2.3 s; these keep the tests quick
QUICK = [
    "--sim-set",
    "queue_min=0",
    "--sim-set",
    "queue_max=0.05",
    "--sim-set",
    "gen_min=0.05",
    "--sim-set",
    "gen_max=0.1",
]


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "m.yaml", MANIFEST)


def env_without_terminal_hints() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TOAPIS_API_KEY")}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "omni_batch", *args]


# -- item 3: --simulate before or after the manifest ------------------------------------------


@pytest.mark.parametrize(
    ("order", "profile"),
    [
        (["--simulate", "{m}"], "default"),
        (["{m}", "--simulate"], "default"),
        (["--simulate", "fast", "{m}"], "fast"),
        (["{m}", "--simulate", "fast"], "fast"),
    ],
    ids=["simulate-m", "m-simulate", "simulate-fast-m", "m-simulate-fast"],
)
def test_simulate_takes_the_manifest_before_or_after_it(manifest, tmp_path, order, profile):
    args = [part.format(m=manifest) for part in order]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", *args, "--out", str(out), "--json", *QUICK])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["simulated"] == profile and summary["counts"]["completed"] == JOBS


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--simulate", "chaoss", "{m}"], "unknown simulator profile 'chaoss'"),
        (["{m}", "--simulate", "chaoss"], "did you mean chaos?"),
        (["--simulate", "{dir}/missing.yaml"], "missing.yaml: file not found"),
        (["--simulate"], "Missing argument 'MANIFEST'"),
        (["--simulate", "chaos"], "Missing argument 'MANIFEST'"),
        (["{m}", "--sim-set", "gen_min=1"], "--sim-set works with --simulate only"),
    ],
)
def test_a_wrong_profile_or_a_missing_manifest_is_a_one_line_error(manifest, tmp_path, args, words):
    args = [a.format(m=manifest, dir=tmp_path) for a in args]
    result = CliRunner().invoke(main, ["run", *args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert words in result.stderr and "Traceback" not in result.output
    assert result.stdout == ""  # no plan before the refusal
    assert not (tmp_path / "out").exists()


# -- item 2: each profile brings timings that fit its tasks ------------------------------------


def test_each_profile_waits_long_enough_for_its_tasks_and_help_says_so():
    from omni_batch.preparing import RunOptions, _default_policy
    from omni_batch.simulator import PROFILES

    for name, config in PROFILES.items():
        policy = _default_policy(RunOptions(simulate=name))
        longest = config.queue_max + config.gen_max + config.latency + config.slow_delay
        assert policy.max_wait >= 2 * longest, name
    assert _default_policy(RunOptions(simulate="realistic")) == Policy()  # documented timings
    assert _default_policy(RunOptions(simulate="chaos")) == FAST
    slow = _default_policy(RunOptions(simulate="fast", simulator_settings={"gen_max": 200.0}))
    assert slow.max_wait >= 400
    text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert (
        f"[default: {Policy().max_wait:g}; {FAST.max_wait:g} with --simulate default/fast/chaos"
        in text
    )
    assert f"[default: {Policy().poll_interval:g}; {FAST.poll_interval:g} with --simulate" in text


def test_a_realistic_rehearsal_polls_at_the_documented_timings(manifest, tmp_path):
    process = subprocess.Popen(
        command("run", str(manifest), "--simulate", "realistic", "--out", str(tmp_path / "o")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_without_terminal_hints(),
    )
    lines: list[str] = []
    polling = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("polling:"):
                polling.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        polling.wait(30)  # printed before the run starts (its tasks take minutes)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
    said = "".join(lines)
    assert "polling: planned from each task's progress" in said
    assert "at least 5 s apart (every 10 s for a task that reports no progress" in said
    assert "after 900 s is given up" in said


# -- item 4: output that is not a terminal keeps whole values ----------------------------------

LONG = """
name: long-ids
vars:
  place: ["a rooftop garden above a very busy harbour at dawn with fog", "a dune"]
prompts:
  - id: a-very-long-explicit-job-identifier-for-the-spring-campaign-{place}
    prompt: "A slow dolly shot across {place}, cinematic, warm light, shallow depth of field"
"""


def test_piped_output_keeps_whole_job_ids_and_summary_columns(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(LONG, encoding="utf-8")
    ran = subprocess.run(
        command("run", str(path), "--simulate", "fast", "--out", str(tmp_path / "out")),
        capture_output=True,
        text=True,
        env=env_without_terminal_hints(),
        timeout=60,
    )
    planned = subprocess.run(
        command("plan", str(path)),
        capture_output=True,
        text=True,
        env=env_without_terminal_hints(),
        timeout=60,
    )
    assert ran.returncode == 0 and planned.returncode == 0, ran.stderr + planned.stderr
    jobs = json.loads(
        subprocess.run(
            command("plan", str(path), "--format", "json"), capture_output=True, text=True
        ).stdout
    )[0]
    for output in (ran.stdout, planned.stdout):
        assert "…" not in output
        assert jobs["job_id"] in output and len(jobs["job_id"]) > 60
    for header in ("completed", "success", "retries", "verify failed"):
        assert header in ran.stdout
    assert "a rooftop garden above a very busy harbour at dawn with fog" in ran.stdout


# -- item 8: --json, answering no, a busy folder -----------------------------------------------


def test_json_prints_one_object_on_stdout_and_nothing_else(manifest, tmp_path):
    out = tmp_path / "out"
    ran = subprocess.run(
        command("run", str(manifest), "--simulate", "fast", "--out", str(out), "--json"),
        capture_output=True,
        text=True,
        env=env_without_terminal_hints(),
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout)  # the whole of stdout is one JSON object
    assert ran.stdout.count("\n") == 1
    assert (summary["exit_code"], summary["exit_reason"]) == (0, "completed")
    assert summary["jobs"] == JOBS and summary["counts"]["completed"] == JOBS
    assert summary["counts"]["failed"] == 0 and summary["failures"] == {}
    assert summary["folder"] == str(out)
    for name in ("report_csv", "report_parquet", "failures_csv", "gallery", "journal"):
        assert Path(summary["reports"][name]).exists()
    spend = summary["spend"]
    # gemini_omni at the shipped $0.12/s estimate (issue #15)
    assert spend["cost_usd"] == pytest.approx(0.12 * 6 * JOBS) and spend["tasks_created"] == JOBS
    assert spend["videos_completed"] == JOBS and spend["video_seconds_completed"] == 6 * JOBS
    assert "run summary" in ran.stderr and "first-hour" in ran.stderr  # the rest: stderr


def test_json_says_why_a_run_failed(manifest, tmp_path):
    out = tmp_path / "out"
    args = ["run", str(manifest), "--simulate", "fast", "--out", str(out), "--json"]
    result = CliRunner().invoke(main, [*args, "--sim-set", "p_fail=1"])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["exit_code"], summary["exit_reason"]) == (1, "failed_jobs")
    assert summary["failures"] == {"generation_failed": JOBS}
    assert summary["spend"]["tasks_created"] == JOBS
    assert summary["spend"]["video_seconds_completed"] == 0
    assert summary["spend"]["cost_usd"] == 0  # failed generations are refunded

    holder = open_journal(out)  # another run holds the folder
    try:
        busy = CliRunner().invoke(main, args)
    finally:
        holder.close()
    assert busy.exit_code == 2
    summary = json.loads(busy.stdout)
    assert (summary["exit_code"], summary["exit_reason"]) == (2, "state_error")
    assert "another omni-batch run is using this folder" in summary["message"]


def test_a_busy_folder_is_refused_before_the_plan_is_printed(manifest, tmp_path):
    out = tmp_path / "out"
    holder = open_journal(out)
    try:
        with serve_in_thread(SimConfig.from_profile("fast")) as server:
            result = CliRunner(env={"TOAPIS_API_KEY": server.key}).invoke(
                main, ["run", str(manifest), "--out", str(out), "--base-url", server.base_url]
            )
            stats = server.stats()
    finally:
        holder.close()
    assert result.exit_code == 2
    assert result.stdout == ""  # no plan table before the refusal
    assert result.stderr.strip().count("\n") == 0
    assert "another omni-batch run is using this folder" in result.stderr
    assert stats["requests"] == 0


def test_answering_no_submits_nothing_and_exits_0(manifest, tmp_path):
    out = tmp_path / "out"
    with serve_in_thread(SimConfig.from_profile("fast")) as server:
        env = {**env_without_terminal_hints(), "TOAPIS_API_KEY": server.key}
        master, slave = pty.openpty()  # stdin is a terminal: the run asks first
        try:
            process = subprocess.Popen(
                command("run", str(manifest), "--out", str(out), "--base-url", server.base_url),
                stdin=slave,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            os.write(master, b"n\n")
            stdout, stderr = process.communicate(timeout=60)
        finally:
            os.close(master)
            os.close(slave)
        stats = server.stats()
    assert process.returncode == 0, stderr
    assert "Submit 2 jobs" in stdout + stderr
    assert "nothing submitted" in stderr and "Aborted" not in stdout + stderr
    assert stats["requests"] == 0 and not (out / "journal.sqlite").exists()


# -- item 10: the simulator's knobs explained ----------------------------------------------------


def test_show_explains_every_knob_in_one_line():
    from omni_batch.simulator import KNOBS

    result = CliRunner().invoke(main, ["simulate", "--profile", "realistic", "--show"])
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if not line.startswith("#")]
    assert len(lines) == len(KNOBS)
    for name, line in zip(KNOBS, lines, strict=True):
        left, _, about = line.partition("  # ")
        assert left.startswith(f"{name} = ") and len(about) > 10, line
    assert "gen_max = 300.0" in result.output
    assert re.search(r"gives up on a task after 900 s", result.output)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("gen_min=abc", "simulator knob gen_min: 'abc' is not a number"),
        ("burst=1.5", "simulator knob burst: '1.5' is not a whole number"),
        ("rate=fast", "simulator knob rate: 'fast' is not a number or none"),
        (
            "refresh_links=maybe",
            "simulator knob refresh_links: 'maybe' is not true or false (or yes/no, on/off, 1/0)",
        ),
        (
            "submit_shape=legcy",
            "simulator knob submit_shape: 'legcy' is not one of object, legacy, mixed; "
            "did you mean legacy?",
        ),
    ],
)
def test_a_knob_of_the_wrong_type_says_what_it_wants(manifest, tmp_path, setting, message):
    for args in (
        ["simulate", "--set", setting, "--show"],
        ["run", str(manifest), "--simulate", "--sim-set", setting, "--out", str(tmp_path)],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert result.stderr.strip() == message
        assert "class" not in result.output
