"""The library a notebook user imports: `omni_batch.__all__`, RunOptions named like the run
flags with the CLI's defaults taken from it, `run()` with and without a running event loop,
and `status` / `write_reports` over an output folder."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

import omni_batch
from omni_batch import errors
from omni_batch.cli.main import main
from omni_batch.running.options import FAST, MB, Policy, RunOptions
from tests.conftest import shots_manifest

# flags of `omni-batch run` about the terminal, not the run: no RunOptions field
TERMINAL_ONLY = {"yes", "no_progress", "json_out"}
# flags whose field reads the other way round or under the library's name
RENAMED = {"no_preflight": "preflight", "simulate_profile": "simulate"}


def run_flags() -> dict[str, click.Parameter]:
    command = main.commands["run"]
    return {p.name: p for p in command.params if isinstance(p, click.Option)}  # type: ignore[misc]


def test_all_names_the_whole_public_api_and_each_resolves():
    wanted = {"plan", "run", "run_async", "RunOptions", "Policy", "status", "write_reports"}
    wanted |= {"write_gallery"}
    tree = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert wanted | tree <= set(omni_batch.__all__)
    for name in omni_batch.__all__:
        assert getattr(omni_batch, name) is not None
    assert omni_batch.RunOptions is RunOptions and omni_batch.Policy is Policy


def test_importing_the_package_and_planning_stays_light():
    # bare, the package is its version and its errors: `python -m omni_batch` takes Ctrl-C as
    # one line within its first tenth of a second
    code = (
        "import sys, omni_batch;"
        "loaded = {'yaml', 'omni_batch.planning', 'click'} & set(sys.modules);"
        "assert not loaded, loaded;"
        "omni_batch.plan('manifests/demo.yaml');"
        "heavy = {'aiohttp', 'pandas', 'tenacity'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_run_flag_is_a_run_options_field_of_the_same_name():
    fields = {f.name for f in dataclasses.fields(RunOptions)}
    for name in run_flags():
        if name in TERMINAL_ONLY:
            continue
        assert RENAMED.get(name, name) in fields, f"--{name.replace('_', '-')} has no field"


def test_the_cli_run_defaults_are_the_library_defaults():
    parsed = main.commands["run"].make_context("run", ["m.yaml"]).params
    defaults = RunOptions()
    for name, value in parsed.items():
        if name in TERMINAL_ONLY or name in RENAMED or name == "manifest":
            continue
        if name == "max_video_mb":  # the policy's default, shown as a figure
            assert value * MB == Policy().max_download_bytes
        elif name in ("only", "sim_set"):  # repeatable flags: () for none
            assert value == () and not getattr(defaults, name)
        else:
            assert value == getattr(defaults, name), name
    flags = run_flags()
    for name in ("poll_interval", "max_wait", "lookup_grace"):  # None: the policy's
        assert f"{getattr(Policy(), name):g}; {getattr(FAST, name):g} with" in flags[name].help


def test_timing_fields_change_the_policy_as_the_flags_do():
    policy = RunOptions(poll_interval=2.0, max_wait=30, lookup_grace=0, max_video_mb=1).timed(
        Policy()
    )
    assert (policy.poll_interval, policy.first_poll, policy.plan_polls) == (2.0, 2.0, False)
    assert (policy.max_wait, policy.lookup_grace, policy.max_download_bytes) == (30, 0, MB)
    assert RunOptions().timed(FAST) == FAST  # nothing given: the policy as it was


def test_only_takes_the_flags_name_value_items_or_a_mapping(tmp_path):
    from omni_batch.preparing import only_of

    given = RunOptions(only=["n=1", "n=2"])
    assert only_of(given) == only_of(RunOptions(only={"n": ["1", "2"]})) == {"n": ["1", "2"]}
    with pytest.raises(errors.UsageError, match="expected NAME=VALUE"):
        only_of(RunOptions(only=["n"]))


def test_sim_set_without_simulate_is_one_usage_error(tmp_path):
    path = shots_manifest(tmp_path, 1)
    with pytest.raises(errors.UsageError, match="--sim-set works with --simulate only"):
        omni_batch.run(path, RunOptions(sim_set=["gen_max=1"], out=tmp_path / "out"))


def test_run_without_a_loop_returns_the_report_and_status_reads_the_folder(tmp_path):
    out = tmp_path / "out"
    frame = omni_batch.run(
        shots_manifest(tmp_path, 3),
        RunOptions(simulate="fast", sim_set=["seed=3"], out=out, verify=False),
    )
    assert sorted(frame["job_id"]) == [
        "shot-0-16x9-6s-r1",
        "shot-1-16x9-6s-r1",
        "shot-2-16x9-6s-r1",
    ]
    assert set(frame["status"]) == {"completed"}
    found = omni_batch.status(out)
    assert list(found) == [
        "pending",
        "submitting",
        "running",
        "downloading",
        "completed",
        "failed",
        "retired",
    ]
    assert found["completed"] == 3 and sum(found.values()) == 3
    (out / "report.csv").unlink()
    (out / "gallery.html").unlink()
    digest = omni_batch.write_reports(out)
    assert (out / "report.csv").is_file() and (out / "gallery.html").is_file()
    assert digest.rows == 3 and digest.states.get("completed") == 3


def test_run_inside_a_running_loop_works_as_in_a_notebook(tmp_path):
    out = tmp_path / "out"
    path = shots_manifest(tmp_path, 2)

    async def cell():  # a Jupyter cell: a loop is running, and the user calls run()
        return omni_batch.run(path, RunOptions(simulate="fast", out=out, verify=False))

    frame = asyncio.run(cell())
    assert sorted(frame["job_id"]) == ["shot-0-16x9-6s-r1", "shot-1-16x9-6s-r1"]
    assert set(frame["status"]) == {"completed"}


def test_the_status_command_prints_what_status_returns(tmp_path):
    out = tmp_path / "out"
    omni_batch.run(shots_manifest(tmp_path, 2), simulate="fast", out=out, verify=False)
    result = CliRunner().invoke(main, ["status", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[4].split() == ["completed", "2"]
    assert lines[-1].split() == ["total", "2"]
    assert [line.split()[0] for line in lines[:-1]] == list(omni_batch.status(out))


def test_the_version_is_the_one_pyproject_declares():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert omni_batch.__version__ == project["project"]["version"]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("rate", -1, "rate: -1 must be above 0"),
        ("submit_rate", 0, "submit_rate: 0 must be above 0"),
        ("max_in_flight", 0, "max_in_flight: 0 must be at least 1"),
        ("max_in_flight", 2.5, "max_in_flight: 2.5 is not a whole number"),
        ("poll_interval", -1, "poll_interval: -1 must be above 0"),
        ("max_video_mb", -1, "max_video_mb: -1 must be above 0"),
        ("lookup_grace", float("nan"), "lookup_grace: nan must be at least 0"),
        ("limit", "3", "limit: '3' is not a whole number"),
    ],
)
def test_run_options_out_of_range_say_so_in_one_line_as_the_cli_does(field, value, says):
    with pytest.raises(omni_batch.UsageError) as refused:
        omni_batch.RunOptions(**{field: value})
    assert str(refused.value) == says


def test_the_cli_flags_take_their_ranges_from_run_options():
    from omni_batch.cli.main import main as cli_group
    from omni_batch.running.options import RANGES

    run = cli_group.commands["run"]
    for name, (low, open_) in RANGES.items():
        option = next(p for p in run.params if p.name == name)
        assert (option.type.min, option.type.min_open) == (low, open_), name


def test_sim_set_as_a_mapping_is_checked_like_the_flag():
    from omni_batch.preparing import sim_settings

    good = omni_batch.RunOptions(simulate="fast", sim_set={"gen_max": 200, "rate": None})
    assert sim_settings(good) == {"gen_max": 200.0, "rate": None}
    with pytest.raises(
        omni_batch.UsageError, match="simulator knob gen_max: 'abc' is not a number"
    ):
        sim_settings(omni_batch.RunOptions(simulate="fast", sim_set={"gen_max": "abc"}))


def test_a_misspelt_run_option_is_one_line_with_the_closest_field(tmp_path):
    with pytest.raises(omni_batch.UsageError) as refused:
        omni_batch.run("manifests/demo.yaml", poll_intervall=3)
    assert str(refused.value) == (
        "RunOptions has no field 'poll_intervall'; did you mean poll_interval?"
    )
