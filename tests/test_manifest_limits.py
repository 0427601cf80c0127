"""Job limits: counted before expansion, exact, and refused in one line (issue #13 item 12)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_batch import ManifestError
from omni_batch.cli.main import main
from omni_batch.planning import manifest as manifest_module
from omni_batch.planning.manifest import DEFAULT_MAX_JOBS, load_manifest

VAR_NAMES = ["product", "setting", "mood"]
values = st.lists(
    st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=5), min_size=1, max_size=3
).map(lambda v: list(dict.fromkeys(v)))
axis = st.lists(st.sampled_from(["16:9", "9:16"]), min_size=1, max_size=2, unique=True)
seconds = st.lists(st.sampled_from([6, 10]), min_size=1, max_size=2, unique=True)


@st.composite
def manifests(draw) -> tuple[dict, int]:
    """A manifest over every axis that multiplies jobs, with its job count computed by hand."""
    names = draw(st.lists(st.sampled_from(VAR_NAMES), max_size=3, unique=True))
    vars_ = {n: draw(values) for n in names}
    defaults: dict = {}
    if draw(st.booleans()):
        defaults["aspect_ratio"] = draw(axis)
    if draw(st.booleans()):
        defaults["duration"] = draw(seconds)
    if draw(st.booleans()):
        defaults["repeats"] = draw(st.integers(1, 3))
    prompts: list = []
    used: set[str] = set()
    expected = 0
    if draw(st.booleans()):  # a bare string: every default applies
        prompts.append("a bare prompt")
        expected += (
            len(defaults.get("aspect_ratio", [1]))
            * len(defaults.get("duration", [1]))
            * defaults.get("repeats", 1)
        )
    for index in range(draw(st.integers(1, 4))):
        in_prompt = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        in_id = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        used.update(in_prompt, in_id)
        entry: dict = {"prompt": f"shot {index} " + " ".join("{" + u + "}" for u in in_prompt)}
        if in_id or draw(st.booleans()):
            entry["id"] = f"p{index}-" + "-".join("{" + u + "}" for u in in_id)
        ratios = defaults.get("aspect_ratio", ["16:9"])
        durations = defaults.get("duration", [6])
        repeats = defaults.get("repeats", 1)
        models = ["gemini_omni"]
        resolutions = 1
        if draw(st.booleans()):
            entry["aspect_ratio"] = ratios = draw(axis)
        if draw(st.booleans()):
            entry["duration"] = durations = draw(seconds)
        if draw(st.booleans()):
            entry["repeats"] = repeats = draw(st.integers(1, 3))
        if draw(st.booleans()):  # several models, each with its own resolutions
            entry["model"] = models = draw(
                st.lists(st.sampled_from(["gemini_omni", "viduq3-pro"]), min_size=1, unique=True)
            )
            if models == ["viduq3-pro"] and draw(st.booleans()):
                entry["resolution"] = draw(
                    st.lists(st.sampled_from(["720p", "1080p"]), min_size=1, unique=True)
                )
                resolutions = len(entry["resolution"])
        prompts.append(entry)
        combos = math.prod(len(vars_[u]) for u in dict.fromkeys(in_prompt + in_id))
        expected += combos * len(models) * len(ratios) * len(durations) * resolutions * repeats
    doc: dict = {"prompts": prompts}
    if defaults:
        doc["defaults"] = defaults
    if used:
        doc["vars"] = {n: v for n, v in vars_.items() if n in used}
    return doc, expected


def dump(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=manifests())
def test_fast_count_is_the_exact_expansion_and_a_budget_of_exactly_that_passes(tmp_path, case):
    doc, expected = case
    path = dump(tmp_path / "m.yaml", doc)
    manifest = load_manifest(path)
    assert manifest.summary().jobs == expected == sum(1 for _ in manifest.jobs())
    # the limit is the count itself: never refused; one below: refused, naming both numbers
    assert load_manifest(path, max_jobs=expected).summary().jobs == expected
    dump(path, {**doc, "budget": {"max_jobs": expected}})
    assert load_manifest(path).summary().jobs == expected
    if expected > 1:
        dump(path, {**doc, "budget": {"max_jobs": expected - 1}})
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        [line] = info.value.lines()
        assert "budget.max_jobs" in line and f"{expected:,} jobs" in line
        dump(path, doc)
        with pytest.raises(ManifestError) as info:
            load_manifest(path, max_jobs=expected - 1)
        [line] = info.value.lines()
        assert f"--max-jobs: the manifest expands to {expected:,} jobs" in line


def explosive(path: Path, budget: int | None = None) -> Path:
    """100 x 100 x 250 variable values x 2 ratios x 2 durations = 10,000,000 jobs."""
    doc: dict = {
        "defaults": {"aspect_ratio": ["16:9", "9:16"], "duration": [6, 10]},
        "vars": {
            "a": [f"a{i}" for i in range(100)],
            "b": [f"b{i}" for i in range(100)],
            "c": [f"c{i}" for i in range(250)],
        },
        "prompts": [{"prompt": "a {a} with a {b} in {c}"}],
    }
    if budget is not None:
        doc["budget"] = {"max_jobs": budget}
    return dump(path, doc)


MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
                  "wall": wall, "rss_mb": rss}))
"""


def measured(*args: str) -> dict:
    """Run the CLI in a process of its own; its wall time and peak RSS (this child's only)."""
    wrapper = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "omni_batch", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(wrapper.stdout)


@pytest.mark.parametrize(("command", "budget"), [("plan", 1000), ("plan", None), ("run", 1000)])
def test_ten_million_job_manifest_is_refused_at_once_in_one_line(tmp_path, command, budget):
    path = explosive(tmp_path / "big.yaml", budget)
    out = tmp_path / "out"
    extra = ["--simulate", "fast", "--out", str(out)] if command == "run" else []
    result = measured(command, str(path), *extra)
    assert result["rc"] == 2
    assert result["stdout"] == ""
    if budget is None:
        assert result["stderr"] == (
            f"{path}: --max-jobs: the manifest expands to 10,000,000 jobs, over the limit of "
            f"{DEFAULT_MAX_JOBS:,} (the default); raise it with --max-jobs N or budget.max_jobs\n"
        )
    else:
        line = path.read_text().splitlines().index("  max_jobs: 1000") + 1
        assert result["stderr"] == (
            f"{path}:{line}: budget.max_jobs: the manifest expands to 10,000,000 jobs, "
            "over the budget of 1,000\n"
        )
    assert not out.exists()
    # measured ~0.2-0.3 s and ~23 MB; expanding first took ~3 min and 1.2 GB
    assert result["wall"] < 10 and result["rss_mb"] < 300, result


def test_run_refuses_before_touching_anything(tmp_path):
    path = explosive(tmp_path / "big.yaml")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", str(path), "--simulate", "fast", "--out", str(out), "--max-jobs", "500"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"{path}: --max-jobs: the manifest expands to 10,000,000 jobs, over the limit of 500; "
        "raise it with --max-jobs N or budget.max_jobs"
    ]
    assert "Traceback" not in result.output
    assert not out.exists()


def small(tmp_path: Path, budget: int | None = None, repeats: int = 12) -> Path:
    doc: dict = {"prompts": [{"prompt": "a cat", "repeats": repeats}]}
    if budget is not None:
        doc["budget"] = {"max_jobs": budget}
    return dump(tmp_path / "s.yaml", doc)


def test_a_budget_replaces_the_default_ceiling_and_max_jobs_applies_beside_it(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(manifest_module, "DEFAULT_MAX_JOBS", 10)
    with pytest.raises(ManifestError) as info:
        load_manifest(small(tmp_path))
    assert info.value.lines() == [
        f"{tmp_path / 's.yaml'}: --max-jobs: the manifest expands to 12 jobs, over the limit of "
        "10 (the default); raise it with --max-jobs N or budget.max_jobs"
    ]
    assert load_manifest(small(tmp_path), max_jobs=12).summary().jobs == 12
    assert load_manifest(small(tmp_path, budget=20)).summary().jobs == 12
    with pytest.raises(ManifestError) as info:
        load_manifest(small(tmp_path, budget=20), max_jobs=11)
    assert [line.split(": ")[1] for line in info.value.lines()] == ["--max-jobs"]


def test_over_budget_with_other_problems_says_at_least(tmp_path):
    path = dump(
        tmp_path / "p.yaml",
        {
            "prompts": [{"prompt": "a cat", "repeats": 5}, {"prompt": "a dog", "duration": 7}],
            "budget": {"max_jobs": 3},
        },
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    lines = info.value.lines()
    assert any("duration: 7 is not allowed" in line for line in lines)
    assert (
        f"{path}:7: budget.max_jobs: the manifest expands to at least 5 jobs, "
        "over the budget of 3" in lines
    )


def test_max_jobs_option_is_documented_with_its_default():
    for command in ("plan", "run"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert "--max-jobs N" in result.output
        assert f"{DEFAULT_MAX_JOBS:,}" in " ".join(result.output.split())


def test_max_jobs_option_must_be_positive(tmp_path):
    result = CliRunner().invoke(main, ["plan", str(small(tmp_path)), "--max-jobs", "0"])
    assert result.exit_code == 2
    assert "--max-jobs" in result.stderr
