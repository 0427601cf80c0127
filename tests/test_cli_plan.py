"""`omni-batch plan` through the real command line."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from omni_batch.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "manifests" / "demo.yaml")


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_plan_table_summarises_counts_and_budget():
    result = run("plan", DEMO)
    assert result.exit_code == 0, result.output
    assert "8 from 3 prompt entries" in result.output
    assert "16:9: 5, 9:16: 3" in result.output
    assert "within budget" in result.output
    assert "coffee-pour-16x9-6s-r1" in result.output


def test_plan_json_lists_every_job_with_its_exact_body():
    result = run("plan", DEMO, "--format", "json")
    assert result.exit_code == 0
    jobs = json.loads(result.output)
    assert len(jobs) == 8
    assert set(jobs[0]) >= {"job_id", "prompt_id", "body", "repeat", "tags", "vars"}
    assert jobs[2]["body"] == {
        "model": "gemini_omni",
        "prompt": "Slow-motion pour of cold brew over ice, morning light, product commercial",
        "aspect_ratio": "16:9",
        "duration": 6,
        "resolution": "720P",
    }


def test_plan_csv_is_flat_with_var_and_tag_columns():
    result = run("plan", str(ROOT / "manifests" / "ab_matrix.yaml"), "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 56
    assert {"var_product", "var_setting", "var_hook", "tag_campaign", "tag_stage"} <= set(rows[0])
    assert rows[0]["tag_campaign"] == "spring-2027"


def test_invalid_manifest_exits_2_with_one_line_per_problem_on_stderr(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("defaults:\n  duration: 7\nprompts: ['']\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:2: defaults.duration: 7 is not allowed for gemini_omni (allowed: 6, 10)",
        f"{path}:3: prompts[0]: empty prompt",
    ]
    assert "Traceback" not in result.output


def test_bad_catalog_file_exits_2(tmp_path):
    catalog = tmp_path / "c.yaml"
    catalog.write_text("models: [oops]\n", encoding="utf-8")
    result = run("plan", DEMO, "--catalog", str(catalog))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{catalog}:1: models:")


def test_console_script_runs_as_a_real_process():
    proc = subprocess.run(
        [sys.executable, "-m", "omni_batch", "plan", DEMO, "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 8


def test_many_duplicate_job_ids_end_in_one_line_per_problem_not_a_traceback(tmp_path):
    # 25 entries with one id: 24 duplicates, more than the 20 listed one by one
    entries = "".join(f"  - id: same\n    prompt: a cat {n}\n" for n in range(1, 26))
    manifest = tmp_path / "dup.yaml"
    manifest.write_text("name: dup\nprompts:\n" + entries)
    result = run("plan", str(manifest))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, AttributeError)
    lines = result.output.strip().splitlines()
    assert len(lines) == 21
    assert lines[0] == f"{manifest}:5: id: job id 'same-16x9-6s-r1' is produced at {manifest}:3 too"
    # the rest in one line, naming the file, the line of the last duplicate and the field
    assert (
        lines[-1] == f"{manifest}:51: id: ... and 4 more duplicate job ids, the last of them here"
    )
