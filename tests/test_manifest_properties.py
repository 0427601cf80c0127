"""Property tests of expansion: counts, id safety, uniqueness, stability, determinism."""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_batch import ManifestError
from omni_batch.planning.manifest import load_manifest

SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
VAR_NAMES = ["product", "setting", "mood", "city"]

var_values = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8),
    min_size=1,
    max_size=4,
    unique=True,
)


@st.composite
def manifests(draw):
    names = draw(st.lists(st.sampled_from(VAR_NAMES), max_size=3, unique=True))
    vars_ = {n: draw(var_values) for n in names}
    prompts = []
    expected = 0
    used: set[str] = set()
    for index in range(draw(st.integers(1, 4))):
        uses = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        used.update(uses)
        entry = {"prompt": f"shot {index} " + " ".join("{" + u + "}" for u in uses)}
        ratios = draw(st.lists(st.sampled_from(["16:9", "9:16"]), min_size=1, unique=True))
        durations = draw(st.lists(st.sampled_from([6, 10]), min_size=1, unique=True))
        repeats = draw(st.integers(1, 3))
        entry.update(aspect_ratio=ratios, duration=durations, repeats=repeats)
        if draw(st.booleans()):
            entry["id"] = f"p{index}-" + "-".join("{" + u + "}" for u in uses)
        prompts.append(entry)
        expected += math.prod(len(vars_[u]) for u in uses) * len(ratios) * len(durations) * repeats
    vars_ = {n: v for n, v in vars_.items() if n in used}  # unused vars are an error
    doc = {"prompts": prompts}
    if vars_:
        doc["vars"] = vars_
    return doc, expected


def dump(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=manifests())
def test_expansion_count_ids_and_determinism(tmp_path, case):
    doc, expected = case
    path = dump(tmp_path, doc)
    manifest = load_manifest(path)
    jobs = list(manifest.jobs())
    ids = [j.job_id for j in jobs]
    assert len(jobs) == expected == manifest.summary().jobs
    assert len(set(ids)) == len(ids)
    assert all(SAFE_ID.match(i) and ".." not in i for i in ids)
    again = [(j.job_id, j.body) for j in load_manifest(path).jobs()]
    assert again == [(j.job_id, j.body) for j in jobs]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5, unique=True))
def test_any_var_text_gives_safe_unique_ids_or_a_clear_error(tmp_path, values):
    doc = {"vars": {"v": values}, "prompts": [{"id": "x-{v}", "prompt": "a {v}"}]}
    path = dump(tmp_path, doc)
    try:
        ids = [j.job_id for j in load_manifest(path).jobs()]
    except ManifestError as exc:
        assert all(line.startswith(str(path)) for line in exc.lines())
        return
    assert len(set(ids)) == len(ids) == len(values)
    assert all(SAFE_ID.match(i) and ".." not in i and len(i) < 120 for i in ids)
