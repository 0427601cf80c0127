"""Hostile manifests, fuzzed and by hand: the CLI answers with a valid plan or exit 2 and
one-line messages — never a traceback — and no job id can name a path outside its folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_batch.cli.main import main

SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
FUZZ = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def plan(path: Path, fmt: str = "json"):
    result = CliRunner().invoke(main, ["plan", str(path), "--format", fmt])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert lines and all(line.startswith(str(path)) for line in lines), lines
    return result


def ids_of(result) -> list[str]:
    return [job["job_id"] for job in json.loads(result.stdout)]


def assert_safe(ids: list[str]) -> None:
    for job_id in ids:
        assert SAFE_ID.match(job_id) and ".." not in job_id and len(job_id) < 160, job_id


@FUZZ
@given(text=st.text(max_size=400))
def test_any_text_as_yaml(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    result = plan(path)
    if result.exit_code == 0:
        assert_safe(ids_of(result))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 20), st.floats(allow_nan=False), st.text(max_size=20)
)
keys = st.sampled_from(
    [
        "name",
        "model",
        "defaults",
        "vars",
        "prompts",
        "budget",
        "aspect_ratio",
        "duration",
        "resolution",
        "repeats",
        "tags",
        "prompt",
        "id",
        "max_jobs",
        "x",
    ]
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


@FUZZ
@given(doc=st.dictionaries(keys, documents, max_size=6))
def test_any_structure_with_manifest_keys(tmp_path, doc):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    result = plan(path)
    if result.exit_code == 0:
        assert_safe(ids_of(result))


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_as_csv(tmp_path, data):
    path = tmp_path / "m.csv"
    path.write_bytes(b"prompt,aspect_ratio,duration\n" + data)
    plan(path)


def test_binary_junk_and_nul_bytes(tmp_path):
    for name, data in [
        ("a.yaml", bytes(range(256)) * 4),
        ("b.yaml", b'prompts: ["a\x00b"]\n'),
        ("c.csv", b"prompt\nx\x00y\n"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        assert plan(path).exit_code == 2


def test_deep_nesting(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("prompts: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert plan(path).exit_code == 2


def test_huge_cells_and_a_10_mb_prompt_plan_fine(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "prompt,notes\n" + "a" * 10_000_000 + "," + "n" * 1_000_000 + "\n", encoding="utf-8"
    )
    result = plan(path)
    assert result.exit_code == 0
    (job,) = json.loads(result.stdout)
    assert len(job["body"]["prompt"]) == 10_000_000 and len(job["job_id"]) < 80


def test_rtl_emoji_and_path_like_ids_stay_inside_the_folder(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "vars:\n  v: ['../../x', '/etc/passwd', 'CON', 'nul.txt', '..', 'مرحبا', '😀🎬', 'a\\\\b']\n"
        "prompts:\n  - {id: '{v}', prompt: 'shot of {v} ‏עברית‎'}\n",
        encoding="utf-8",
    )
    result = plan(path)
    assert result.exit_code == 0
    ids = ids_of(result)
    assert len(set(ids)) == 8
    assert_safe(ids)
    root = (tmp_path / "videos").resolve()
    assert all((root / f"{i}.mp4").resolve().parent == root for i in ids)


def test_explicit_path_like_ids_are_made_safe(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "prompts:\n  - {id: '../../etc/passwd', prompt: a}\n  - {id: '/abs/path', prompt: b}\n",
        encoding="utf-8",
    )
    result = plan(path)
    assert result.exit_code == 0
    assert ids_of(result) == ["etc-passwd-16x9-6s-r1", "abs-path-16x9-6s-r1"]


@pytest.mark.parametrize("breaker", ["\x1e", "\x1c", "\x85", "\u2028", "\r"])
def test_a_value_holding_a_line_breaking_character_is_still_one_error_line(
    tmp_path: Path, breaker: str
) -> None:
    """Found by test_any_structure_with_manifest_keys: a quoted value holding a character
    `str.splitlines` breaks on (not only newlines) split the one-line error in two."""
    path = tmp_path / "m.yaml"
    doc = {"prompts": [{"prompt": "p", "aspect_ratio": f"0{breaker}0"}]}
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    result = plan(path)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
