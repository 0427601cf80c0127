"""Tabs in YAML: a tab in indentation is one clear line, the same with and without libyaml
(issue #19 item 6); tabs YAML allows elsewhere are read the same by both parsers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_batch import ManifestError
from omni_batch.cli.main import main
from omni_batch.planning import _yaml
from omni_batch.planning.manifest import load_manifest

LOADERS = {
    "libyaml": _yaml.C_LOADER,
    "python": _yaml.PY_LOADER,
}
TAB = "invalid YAML: a tab character in indentation; YAML indents with spaces"


@pytest.fixture(params=list(LOADERS))
def loader(request, monkeypatch):
    if LOADERS[request.param] is None:
        pytest.skip("this PyYAML has no libyaml")
    monkeypatch.setattr(_yaml, "_Loader", LOADERS[request.param])
    return request.param


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


REFUSED = {
    # text -> the line of the first tab-indented line
    "a nested key": ("defaults:\n\tduration: 6\nprompts: [a cat]\n", 2),
    "a list item": ("prompts:\n\t- a cat\n", 2),
    "spaces then a tab": ("defaults:\n  \tduration: 6\nprompts: [a cat]\n", 2),
    "a key of a list item": ("prompts:\n  - prompt: a cat\n\t  repeats: 2\n", 3),
    # libyaml alone accepts this one (a plain scalar's next line): refused with both
    "a prompt's next line": ("prompts:\n  - a cat running\n    \tthrough rain\n", 3),
    "a prompt's next line at column 0": ("prompts:\n  - prompt: a cat\n\t  running\n", 3),
    "a line of only a tab": ("prompts:\n  - a cat\n\t\n  - a dog\n", 3),
    "a comment": ("prompts:\n\t# the cats\n  - a cat\n", 2),
    "the first line of a block scalar": ("prompts:\n  - |\n\ta cat\n", 3),
    "the first key": ("\tprompts: [a cat]\n", 1),
    "CRLF line ends": ("name: x\r\nprompts:\r\n\t- a cat\r\n", 3),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_tab_in_indentation_is_one_line_naming_it(tmp_path, loader, case):
    text, line = REFUSED[case]
    path = write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.lines() == [f"{path}:{line}: {TAB}"]


ACCEPTED = {
    "a tab after a colon": ("prompts:\t[a cat]\n", ["a cat"]),
    "a trailing tab": ("prompts: [a cat]\t\nname: x\t# note\n", ["a cat"]),
    "a tab inside a prompt": ("prompts:\n  - a cat\trunning\n", ["a cat\trunning"]),
    "tabs in a quoted prompt": ('prompts:\n  - "a cat\n\trunning"\n', ["a cat running"]),
    "tabs in a flow list": ("prompts: [a cat,\n\ta dog]\n", ["a cat", "a dog"]),
    "a tab after a block indicator": ("prompts:\n  - |\t# text\n    a cat\n", ["a cat\n"]),
    "tabs in a block scalar's text": (
        "prompts:\n  - |\n    a cat\n    \trunning\n",
        ["a cat\n\trunning\n"],
    ),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_tabs_yaml_allows_elsewhere_read_the_same_by_both_parsers(tmp_path, loader, case):
    text, prompts = ACCEPTED[case]
    jobs = list(load_manifest(write(tmp_path, text)).jobs())
    assert [j.prompt for j in jobs] == [p.strip() for p in prompts]


def test_tab_indented_json_manifest_loads(tmp_path, loader):
    doc = {"name": "tabbed", "defaults": {"duration": [6, 10]}, "prompts": ["a cat", "a dog"]}
    path = write(tmp_path, json.dumps(doc, indent="\t"), "m.json")
    assert "\n\t" in path.read_text()
    assert load_manifest(path).summary().jobs == 4


def test_plan_prints_the_tab_line_and_exits_2(tmp_path):
    path = write(
        tmp_path,
        textwrap.dedent(
            """\
            name: tabbed
            prompts:
              - prompt: a cat
            \trepeats: 2
            """
        ),
    )
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"{path}:4: {TAB}\n"


pieces = st.sampled_from(
    [
        *("a", "b:", " ", "\t", "\t", "- ", "\n", "[", "]", ",", "{", "}", '"', "|", "#"),
        *("x y", "\n  ", "\n\t", "\n    ", " #", "|-", "? ", ":"),
    ]
)


def outcome(text: str) -> tuple:
    try:
        return ("read", repr(_yaml.load_located(text)[0]))
    except _yaml.YamlSyntaxError as exc:
        return ("refused", exc.message if "tab" in exc.message else "")


@pytest.mark.skipif(_yaml.C_LOADER is None, reason="this PyYAML has no libyaml")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(pieces, max_size=16).map("".join))
def test_both_parsers_accept_and_refuse_the_same_tabbed_texts(text):
    def both(text: str) -> tuple[tuple, tuple]:
        results = []
        for name in ("libyaml", "python"):
            saved, _yaml._Loader = _yaml._Loader, LOADERS[name]
            try:
                results.append(outcome(text))
            finally:
                _yaml._Loader = saved
        return results[0], results[1]

    c, py = both(text)
    if c == py or "\t" not in text:
        return
    # the two parsers differ on some tab-free texts too (e.g. `|#x`); only tabs are ours here
    if any(a != b for a, b in (both(text.replace("\t", " ")), both(text.replace("\t", "")))):
        return
    assert c[0] == py[0] == "refused", (text, c, py)  # both refuse; which line first may differ
