"""CSV manifests separated by `,`, `;` (Excel in much of Europe) or tabs (issue #19 item 5)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from omni_batch import ManifestError
from omni_batch.cli.main import main
from omni_batch.planning.manifest import load_manifest
from omni_batch.planning.sources import sniff_delimiter

TRICKY = "a cat, running; fast\tthen slow"  # every delimiter inside one quoted cell


def excel_csv(path: Path, rows: list[list[str]], delimiter: str) -> Path:
    """What a spreadsheet saves: a UTF-8 BOM, CRLF line ends, cells quoted only when needed."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    path.write_bytes(buffer.getvalue().encode("utf-8-sig"))
    return path


@pytest.mark.parametrize("delimiter", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_each_delimiter_with_bom_and_crlf_reads_every_cell(tmp_path, delimiter):
    rows = [
        ["id", "Prompt", "aspect_ratio", "duration", "campaign"],
        ["hero", TRICKY, "16:9|9:16", "6", "spring, 2027; eu"],
        ["close", "a dog", "9:16", "10", "x"],
    ]
    path = excel_csv(tmp_path / "sweep.csv", rows, delimiter)
    assert path.read_bytes().startswith(b"\xef\xbb\xbfid") and b"\r\n" in path.read_bytes()
    manifest = load_manifest(path)
    assert manifest.notes == ()
    jobs = list(manifest.jobs())
    assert [(j.job_id, j.prompt, j.aspect_ratio, j.duration) for j in jobs] == [
        ("hero-16x9-6s-r1", TRICKY, "16:9", 6),
        ("hero-9x16-6s-r1", TRICKY, "9:16", 6),
        ("close-9x16-10s-r1", "a dog", "9:16", 10),
    ]
    assert jobs[0].tags == {"campaign": "spring, 2027; eu"}


@pytest.mark.parametrize("delimiter", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_a_prompts_file_is_sniffed_too(tmp_path, delimiter):
    excel_csv(tmp_path / "more.csv", [["prompt", "duration"], [TRICKY, "10"]], delimiter)
    path = tmp_path / "m.yaml"
    path.write_text("prompts_file: more.csv\n", encoding="utf-8")
    [job] = load_manifest(path).jobs()
    assert (job.prompt, job.duration) == (TRICKY, 10)


def test_a_semicolon_header_without_prompt_names_its_real_columns(tmp_path):
    path = excel_csv(tmp_path / "x.csv", [["id", "promt", "duration"], ["a", "b", "6"]], ";")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.lines() == [
        f"{path}:row 1: prompt: the header has no `prompt` column; did you mean prompt?"
    ]


def test_one_column_file_from_a_semicolon_excel_keeps_its_commas_and_says_so(tmp_path):
    # Excel set to `;` quotes a cell holding `;` but not one holding `,`
    rows = [["prompt"], ["a cat, running"], ["a dog; sitting"]]
    path = excel_csv(tmp_path / "one.csv", rows, ";")
    manifest = load_manifest(path)
    assert [j.prompt for j in manifest.jobs()] == ["a cat, running", "a dog; sitting"]
    [note] = manifest.notes
    assert str(note) == (
        f"{path}:row 1: note: the header has a single column, so the delimiter is a guess: "
        "assumed none; each row is one cell, its commas kept"
    )


def test_one_column_file_with_no_delimiter_anywhere_has_no_note(tmp_path):
    path = excel_csv(tmp_path / "one.csv", [["prompt"], ["a cat"], ["a dog"]], ",")
    manifest = load_manifest(path)
    assert manifest.notes == ()
    assert len(list(manifest.jobs())) == 2


def test_one_column_header_whose_rows_split_every_way_names_the_assumption():
    text = "prompt\r\na,b\r\nc;d\r\ne\tf\r\n"
    assert sniff_delimiter(text) == (
        ",",
        "the header has a single column, so the delimiter is a guess: assumed "
        "comma-separated (',')",
    )


def test_a_header_that_splits_two_ways_lets_the_rows_decide_and_says_so(tmp_path):
    # `,` reads columns [prompt, "x;prompt"] and `;` reads ["prompt,x", prompt]: both have a
    # prompt column; the rows have two cells only when read with `;`
    path = tmp_path / "two.csv"
    path.write_text("prompt,x;prompt\na cat;one\na dog;two\n", encoding="utf-8")
    manifest = load_manifest(path)
    assert [j.prompt for j in manifest.jobs()] == ["one", "two"]
    assert [n.message for n in manifest.notes] == [
        "the header splits on ',' too; assumed semicolon-separated (';')"
    ]


def test_a_guess_is_shown_beside_the_problems_it_may_explain(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text("prompt,x;prompt\na cat;one\nb;c;d\n", encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.lines() == [
        f"{path}:row 1: note: the header splits on ',' too; assumed semicolon-separated (';')",
        f"{path}:row 3: has 3 cells but the header has 2 columns",
    ]


def test_plan_prints_the_note_on_stderr_beside_json_and_in_the_table(tmp_path):
    path = excel_csv(tmp_path / "one.csv", [["prompt"], ["a cat, running"]], ";")
    result = CliRunner().invoke(main, ["plan", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [j["body"]["prompt"] for j in json.loads(result.stdout)] == ["a cat, running"]
    assert result.stderr.startswith(f"{path}:row 1: note: the header has a single column")
    table = CliRunner().invoke(main, ["plan", str(path)])
    assert table.exit_code == 0
    assert "the delimiter is a guess" in " ".join(table.stdout.split())


def test_a_file_larger_than_the_sniffed_sample_is_read_whole(tmp_path):
    long = "a slow pan over a city at dusk, lights coming on; " * 6
    rows = [["prompt", "duration"]] + [[f"{i} {long}", "6"] for i in range(2000)]
    path = excel_csv(tmp_path / "big.csv", rows, ";")
    assert path.stat().st_size > 2 * (256 << 10)
    manifest = load_manifest(path)
    assert manifest.notes == ()
    assert manifest.summary().jobs == 2000
