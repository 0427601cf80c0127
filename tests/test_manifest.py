"""Manifest loading, expansion and every class of validation error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from omni_batch import ManifestError
from omni_batch.planning.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path, catalog: Path | None = None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, catalog)
    return info.value.lines()


def one_problem(path: Path) -> str:
    lines = problems(path)
    assert len(lines) == 1, lines
    return lines[0]


# -- expansion ------------------------------------------------------------------------------


def test_spec_example_expands_in_documented_order_with_readable_ids(tmp_path):
    path = write(
        tmp_path,
        """
        name: spring-launch
        defaults:
          aspect_ratio: ["16:9", "9:16"]
          duration: [6, 10]
          resolution: 720P
          repeats: 2
        vars:
          product: [sneaker, backpack]
          setting: ["neon city street", "sunlit beach"]
        prompts:
          - id: hero-{product}-{setting}
            prompt: "A {product} spinning slowly on a {setting}, product commercial"
            aspect_ratio: "9:16"
            tags: {campaign: spring}
        """,
    )
    manifest = load_manifest(path)
    jobs = list(manifest.jobs())
    assert len(jobs) == 2 * 2 * 1 * 2 * 2  # product × setting × ratio × duration × repeats
    assert jobs[0].job_id == "hero-sneaker-neon-city-street-9x16-6s-r1"
    assert [j.job_id for j in jobs[:4]] == [
        "hero-sneaker-neon-city-street-9x16-6s-r1",
        "hero-sneaker-neon-city-street-9x16-6s-r2",
        "hero-sneaker-neon-city-street-9x16-10s-r1",
        "hero-sneaker-neon-city-street-9x16-10s-r2",
    ]
    assert jobs[4].vars == {"product": "sneaker", "setting": "sunlit beach"}
    assert jobs[0].body == {
        "model": "gemini_omni",
        "prompt": "A sneaker spinning slowly on a neon city street, product commercial",
        "aspect_ratio": "9:16",
        "duration": 6,
        "resolution": "720P",
    }
    assert jobs[0].tags == {"campaign": "spring"}
    assert manifest.name == "spring-launch"


def test_defaults_come_from_the_model_catalog_and_duration_is_an_integer(tmp_path):
    manifest = load_manifest(write(tmp_path, "prompts: [a quiet lake]\n"))
    (job,) = manifest.jobs()
    assert job.body == {
        "model": "gemini_omni",
        "prompt": "a quiet lake",
        "aspect_ratio": "16:9",
        "duration": 6,
        "resolution": "720P",
    }
    assert type(job.body["duration"]) is int
    assert manifest.name == "m"


def test_unquoted_aspect_ratios_stay_text_not_yaml11_sexagesimal(tmp_path):
    manifest = load_manifest(
        write(tmp_path, "defaults: {aspect_ratio: [16:9, 9:16]}\nprompts: [x]\n")
    )
    assert [j.aspect_ratio for j in manifest.jobs()] == ["16:9", "9:16"]


def test_a_prompt_expands_only_over_the_vars_it_uses(tmp_path):
    path = write(
        tmp_path,
        """
        vars: {a: [1, 2, 3], b: [x, y]}
        prompts:
          - "only {a}"
          - "both {a} and {b}"
        """,
    )
    jobs = list(load_manifest(path).jobs())
    assert len(jobs) == 3 + 6
    assert jobs[0].vars == {"a": "1"}


def test_auto_ids_follow_content_so_reordering_prompts_keeps_ids(tmp_path):
    first = load_manifest(write(tmp_path, "prompts: [alpha shot, beta shot]\n", "a.yaml"))
    second = load_manifest(write(tmp_path, "prompts: [beta shot, alpha shot]\n", "b.yaml"))
    assert sorted(j.job_id for j in first.jobs()) == sorted(j.job_id for j in second.jobs())


def test_ids_are_filesystem_safe_even_for_path_like_and_unicode_input(tmp_path):
    path = write(
        tmp_path,
        """
        vars: {v: ["../../x", "/etc/passwd", "CON", "Ünïcødé ✨", "日本"]}
        prompts:
          - id: "{v}"
            prompt: "shot of {v}"
        """,
    )
    ids = [j.job_id for j in load_manifest(path).jobs()]
    assert len(set(ids)) == 5
    for job_id in ids:
        assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in job_id), job_id
        assert ".." not in job_id and not job_id.startswith((".", "-"))


def test_explicit_id_without_every_var_still_tells_jobs_apart(tmp_path):
    path = write(
        tmp_path, "vars: {c: [red, blue]}\nprompts:\n  - {id: hero, prompt: 'a {c} car'}\n"
    )
    assert [j.job_id for j in load_manifest(path).jobs()] == [
        "hero-red-16x9-6s-r1",
        "hero-blue-16x9-6s-r1",
    ]


def test_other_models_mark_their_ids_and_use_their_own_defaults(tmp_path):
    path = write(tmp_path, "prompts:\n  - {prompt: x, model: veo3.1-fast}\n")
    (job,) = load_manifest(path).jobs()
    assert job.job_id.endswith("-veo3.1-fast-16x9-8s-r1")
    assert job.body["duration"] == 8 and job.body["resolution"] == "720p"


def test_non_default_resolution_is_part_of_the_id(tmp_path):
    path = write(
        tmp_path, "model: gemini_omni_flash\ndefaults: {resolution: [720p, 1080p]}\nprompts: [x]\n"
    )
    ids = [j.job_id for j in load_manifest(path).jobs()]
    assert ids[0].endswith("-16x9-6s-r1") and ids[1].endswith("-16x9-6s-1080p-r1")


def test_csv_manifest_expands_pipes_and_carries_other_columns_as_tags(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes(
        "\ufeffid,prompt,aspect_ratio,duration,repeats,theme\n"
        's1,"a storm, at night",16:9|9:16,6|10,2,weather\n'.encode()
    )
    manifest = load_manifest(path)
    jobs = list(manifest.jobs())
    assert len(jobs) == 2 * 2 * 2
    assert jobs[0].tags == {"theme": "weather"}
    assert jobs[0].prompt == "a storm, at night"
    assert jobs[0].source == f"{path}:row 2"
    assert manifest.tag_names == ("theme",)


def test_prompts_file_rows_join_the_yaml_prompts_and_use_its_vars(tmp_path):
    (tmp_path / "more.csv").write_text("prompt,owner\n{who} waves,ana\n", encoding="utf-8")
    path = write(tmp_path, "vars: {who: [cat, dog]}\nprompts: [first]\nprompts_file: more.csv\n")
    jobs = list(load_manifest(path).jobs())
    assert [j.prompt for j in jobs] == ["first", "cat waves", "dog waves"]
    assert jobs[1].tags == {"owner": "ana"}


def test_summary_counts_without_expanding(tmp_path):
    path = ROOT / "manifests" / "ab_matrix.yaml"
    manifest = load_manifest(path)
    summary = manifest.summary()
    jobs = list(manifest.jobs())
    assert summary.jobs == len(jobs)
    assert summary.video_seconds == sum(j.duration for j in jobs)
    assert summary.by_aspect_ratio == {
        r: sum(j.aspect_ratio == r for j in jobs) for r in summary.by_aspect_ratio
    }
    assert summary.within_budget


def test_demo_ids_are_stable_across_versions():
    # Resume depends on ids never changing for the same manifest: this list is a contract.
    ids = [j.job_id for j in load_manifest(ROOT / "manifests" / "demo.yaml").jobs()]
    assert ids == [
        "a-cinematic-shot-of-a-cat-8597ea-16x9-6s-r1",
        "a-cinematic-shot-of-a-cat-8597ea-9x16-6s-r1",
        "coffee-pour-16x9-6s-r1",
        "coffee-pour-16x9-10s-r1",
        "skate-tokyo-16x9-6s-r1",
        "skate-tokyo-9x16-6s-r1",
        "skate-lisbon-16x9-6s-r1",
        "skate-lisbon-9x16-6s-r1",
    ]


@pytest.mark.parametrize("name", ["demo.yaml", "ab_matrix.yaml", "overnight_sweep.csv"])
def test_shipped_examples_are_valid(name):
    assert load_manifest(ROOT / "manifests" / name).summary().jobs > 0


# -- validation: one test per class of mistake ------------------------------------------------


def test_unknown_keys_suggest_the_closest_valid_key(tmp_path):
    path = write(tmp_path, "defaults:\n  aspect_ration: '16:9'\nprompts: [x]\n")
    assert (
        one_problem(path)
        == f"{path}:2: defaults.aspect_ration: unknown key; did you mean aspect_ratio?"
    )


def test_unknown_prompt_and_top_level_keys_are_reported_with_lines(tmp_path):
    path = write(tmp_path, "promts: [x]\nprompts:\n  - prompt: y\n    durration: 6\n")
    lines = problems(path)
    assert f"{path}:1: promts: unknown key; did you mean prompts?" in lines
    assert f"{path}:4: prompts[0].durration: unknown key; did you mean duration?" in lines


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"6s"', "'6s' is not a whole number of seconds; write 6"),
        ("6.5", "6.5 is not a whole number of seconds"),
        ("7", "7 is not allowed for gemini_omni (allowed: 6, 10)"),
        ("true", "True is not a whole number of seconds"),
    ],
)
def test_wrong_durations_are_named(tmp_path, value, message):
    path = write(tmp_path, f"defaults:\n  duration: {value}\nprompts: [x]\n")
    assert one_problem(path) == f"{path}:2: defaults.duration: {message}"


def test_a_quoted_duration_is_accepted_and_sent_as_an_integer(tmp_path):
    (job,) = load_manifest(write(tmp_path, 'defaults: {duration: "10"}\nprompts: [x]\n')).jobs()
    assert job.body["duration"] == 10


def test_values_the_model_does_not_allow_name_the_model_and_suggest_case(tmp_path):
    path = write(tmp_path, "defaults:\n  resolution: 720p\n  aspect_ratio: '1:1'\nprompts: [x]\n")
    assert problems(path) == [
        f"{path}:2: defaults.resolution: 720p is not allowed for gemini_omni (allowed: 720P); did you mean 720P?",
        f"{path}:3: defaults.aspect_ratio: 1:1 is not allowed for gemini_omni (allowed: 16:9, 9:16)",
    ]


def test_combinations_a_model_refuses_are_errors(tmp_path):
    path = write(
        tmp_path,
        "model: gemini_omni_flash\nprompts:\n  - {prompt: x, aspect_ratio: '9:16', resolution: 1080p}\n",
    )
    assert "9:16 is not allowed with resolution 1080p (allowed: 16:9)" in one_problem(path)


def test_unknown_model_suggests_the_known_one(tmp_path):
    path = write(tmp_path, "model: gemini-omni\nprompts: [x]\n")
    assert one_problem(path).endswith("did you mean gemini_omni?")


def test_empty_prompts_are_errors(tmp_path):
    path = write(tmp_path, "prompts:\n  - '   '\n  - {id: b, prompt: ''}\n")
    assert problems(path) == [
        f"{path}:2: prompts[0]: empty prompt",
        f"{path}:3: prompts[1].prompt: empty prompt",
    ]


def test_undefined_and_unused_template_variables(tmp_path):
    path = write(tmp_path, "vars:\n  product: [a]\n  spare: [b]\nprompts:\n  - 'a {produkt}'\n")
    lines = problems(path)
    assert f"{path}:3: vars.spare: defined but no prompt uses {{spare}}" in lines
    assert any(
        line.startswith(f"{path}:5: prompts[0]: uses {{produkt}}")
        and "did you mean product?" in line
        for line in lines
    )


def test_unbalanced_braces_explain_how_to_write_a_literal_brace(tmp_path):
    path = write(tmp_path, "prompts: ['a {b']\n")
    assert "write {{ or }} for a literal brace" in one_problem(path)


def test_duplicate_job_ids_name_both_places(tmp_path):
    path = write(tmp_path, "prompts:\n  - {id: a, prompt: one}\n  - {id: a, prompt: two}\n")
    assert one_problem(path) == f"{path}:3: id: job id 'a-16x9-6s-r1' is produced at {path}:2 too"


def test_values_that_slug_alike_are_duplicate_ids(tmp_path):
    path = write(
        tmp_path, "vars: {c: [Red, red!]}\nprompts:\n  - {id: '{c}', prompt: 'a {c} car'}\n"
    )
    assert "is produced by this entry twice" in one_problem(path)


def test_budget_exceeded_names_the_budget_line(tmp_path):
    path = write(
        tmp_path,
        "defaults: {repeats: 3}\nprompts: [x]\nbudget:\n  max_jobs: 2\n  max_video_seconds: 100\n",
    )
    assert (
        one_problem(path)
        == f"{path}:4: budget.max_jobs: the manifest expands to 3 jobs, over the budget of 2"
    )


def test_empty_manifests(tmp_path):
    assert one_problem(write(tmp_path, "", "a.yaml")).endswith(
        "manifest is empty: add a `prompts:` list"
    )
    assert one_problem(write(tmp_path, "name: x\n", "b.yaml")).endswith(
        "no prompts: add a `prompts:` list or `prompts_file:`"
    )
    assert one_problem(write(tmp_path, "id,prompt\n", "c.csv")).endswith(
        "manifest is empty: it has no prompt rows"
    )


def test_missing_file(tmp_path):
    assert one_problem(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: file not found"


def test_invalid_yaml_names_its_line(tmp_path):
    path = write(tmp_path, "prompts:\n  - a\n  - [b\n")
    assert one_problem(path).startswith(f"{path}:4: invalid YAML")


def test_python_tags_are_refused_not_executed(tmp_path):
    path = write(tmp_path, "prompts: [a]\nname: !!python/object/apply:os.system ['touch pwned']\n")
    assert "unsupported tag" in one_problem(path)
    assert not Path("pwned").exists()


def test_alias_bombs_are_refused_quickly(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = write(tmp_path, "\n".join(lines) + "\nprompts: [x]\n")
    assert "too many values" in one_problem(path)


def test_undecodable_csv_names_the_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"prompt\n\xff\xfe bad\n")
    assert one_problem(path) == f"{path}:2: not UTF-8 text (byte 0xff); save the file as UTF-8"


def test_csv_errors_name_the_row(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("prompt,duration\nok,6\n,6\nfine,6s\n", encoding="utf-8")
    assert problems(path) == [
        f"{path}:row 3: prompt: empty prompt",
        f"{path}:row 4: duration: '6s' is not a whole number of seconds; write 6",
    ]


def test_csv_without_prompt_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("promt\nx\n", encoding="utf-8")
    assert (
        one_problem(path)
        == f"{path}:row 1: prompt: the header has no `prompt` column; did you mean prompt?"
    )


def test_every_error_is_collected_not_just_the_first(tmp_path):
    path = write(
        tmp_path,
        "defaults: {duration: 7, resolution: 1080P}\nprompts: ['', 'x {nope}']\nextra: 1\n",
    )
    assert len(problems(path)) == 5


def test_catalog_overlay_adds_models_and_changes_rules(tmp_path):
    catalog = write(
        tmp_path,
        """
        models:
          gemini_omni:
            durations: [6, 8, 10]
          tiny:
            aspect_ratios: ["1:1"]
            durations: [3]
            resolutions: [480p]
            defaults: {aspect_ratio: "1:1", duration: 3, resolution: 480p}
        """,
        "catalog.yaml",
    )
    path = write(tmp_path, "prompts:\n  - {prompt: a, duration: 8}\n  - {prompt: b, model: tiny}\n")
    jobs = list(load_manifest(path, catalog).jobs())
    assert [j.duration for j in jobs] == [8, 3]
    assert problems(path)  # without the overlay, 8 s and `tiny` are errors
