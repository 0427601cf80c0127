"""`omni-batch promote`: the winners of a reviewed run as the next round's manifest.

Each winner (picked, or scored at least N) becomes a prompt entry holding its rendered prompt,
model, aspect ratio, duration and resolution (after ``--set`` overrides); its template variable
values and tags ride along as tags, so the next run's report can be pivoted by them again.
Where it came from is said twice: in comments (the source folder, each entry's job ids, pick,
score and note) and in the tags ``promoted_from`` and ``source_jobs``. The file is planned
before it is put in place: a manifest that would not plan is never written.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from omni_batch.outputs import PROMOTE_REPEATS
from omni_batch.errors import ManifestError, UsageError

OVERRIDABLE = ("model", "aspect_ratio", "duration", "resolution")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


@dataclass(frozen=True, slots=True)
class Promoted:
    """What promote wrote: the file, the winners' job ids, the entries and jobs it plans to."""

    path: Path
    winners: list[str]
    entries: int
    jobs: int


@dataclass(slots=True)
class _Entry:
    prompt_id: str
    prompt: str
    model: str
    aspect_ratio: str
    duration: int
    resolution: str
    tags: dict[str, str]
    sources: list[dict[str, Any]] = field(default_factory=list)


def parse_overrides(settings: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` items → {name: value}; a usage error names the bad one."""
    out: dict[str, Any] = {}
    for item in settings:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise UsageError(f"--set {item!r}: write NAME=VALUE, e.g. --set duration=10")
        if name not in OVERRIDABLE:
            raise UsageError(
                f"--set {name}: not a field promote sets (one of {', '.join(OVERRIDABLE)})"
            )
        if name == "duration":
            if not value.isdigit():
                raise UsageError(f"--set duration={value}: a whole number of seconds, e.g. 10")
            out[name] = int(value)
        else:
            out[name] = value
    return out


def _text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return str(value)


def _q(value: Any) -> str:
    """A YAML double-quoted scalar (PyYAML's own escaping: any text is safe)."""
    dumped = yaml.safe_dump(str(value), default_style='"', allow_unicode=True, width=1 << 30)
    return dumped.strip().removesuffix("...").strip()


def _braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")  # literal braces, not template variables


def _comment(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


def winners(frame: pd.DataFrame, picked: bool, min_score: int | None) -> pd.DataFrame:
    if picked == (min_score is not None):
        raise UsageError("say which jobs win: --picked or --min-score N (one of them)")
    pick = frame["pick"].astype("string").fillna("")
    if picked:
        return frame[pick == "picked"]
    score = pd.to_numeric(frame["score"], errors="coerce")
    return frame[(score >= min_score) & (pick != "rejected")]


def _entries(chosen: pd.DataFrame, overrides: dict[str, Any], folder_name: str) -> list[_Entry]:
    var_cols = [c for c in chosen.columns if c.startswith("var_")]
    tag_cols = [c for c in chosen.columns if c.startswith("tag_")]
    entries: dict[tuple, _Entry] = {}
    for row in chosen.to_dict("records"):
        tags = {c[4:]: _text(row[c]) for c in tag_cols if _text(row[c])}
        for c in var_cols:  # variable values ride as tags (a var is one value per entry here)
            name, value = c[4:], _text(row[c])
            if not value:
                continue
            tags[name if tags.get(name, value) == value else f"var_{name}"] = value
        tags.pop("source_jobs", None)  # an earlier round's provenance gives way to this one's
        tags["promoted_from"] = folder_name
        fields = {
            "model": _text(row["model"]),
            "aspect_ratio": _text(row["aspect_ratio"]),
            "duration": int(row["duration"]),
            "resolution": _text(row["resolution"]),
            **overrides,
        }
        key = (
            _text(row["prompt_id"]), _text(row["prompt"]), *fields.values(),
            tuple(sorted(tags.items())),
        )  # fmt: skip
        entry = entries.get(key)
        if entry is None:
            entry = entries[key] = _Entry(
                _text(row["prompt_id"]), _text(row["prompt"]), tags=tags, **fields
            )
        entry.sources.append(row)
    return list(entries.values())


def _unique_ids(entries: list[_Entry]) -> None:
    """Entries that would give the same job ids (a prompt id reused by a retired version of
    its prompt) get -2, -3, ... on their id."""
    seen: Counter[tuple] = Counter()
    for entry in entries:
        key = (entry.prompt_id, entry.model, entry.aspect_ratio, entry.duration, entry.resolution)
        seen[key] += 1
        if seen[key] > 1:
            entry.prompt_id = f"{entry.prompt_id}-{seen[key]}"


def render(
    entries: list[_Entry], folder: Path, how: str, repeats: int, total: int, winners_n: int
) -> str:
    model = Counter(e.model for e in entries).most_common(1)[0][0]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"# Promoted by `omni-batch promote` on {stamp}",
        f"# from the run in {_comment(str(folder.resolve()))}",
        f"# winners: {winners_n} of its {total} jobs ({how}), as {len(entries)} entries",
        "# provenance: each entry's comment names its source jobs; its tags promoted_from and",
        "# source_jobs say the same in the next report. Template variable values are tags here.",
        f"model: {_q(model)}",
        "defaults:",
        f"  repeats: {repeats}",
        "prompts:",
    ]
    for entry in entries:
        ids = " ".join(_text(s["job_id"]) for s in entry.sources)
        for source in entry.sources:
            score = source.get("score")
            verdict = ", ".join(
                x
                for x in (
                    _text(source.get("pick")),
                    f"score {int(score)}" if score is not None and not pd.isna(score) else "",
                )
                if x
            )
            note = _comment(_text(source.get("note")))
            lines.append(
                f"  # from {_text(source['job_id'])}"
                + (f" ({verdict})" if verdict else "")
                + (f": {note[:300]}" if note else "")
            )
        tags = {**entry.tags, "source_jobs": ids}
        lines += [
            f"  - id: {_q(_braces(entry.prompt_id))}",
            f"    prompt: {_q(_braces(entry.prompt))}",
        ]
        if entry.model != model:
            lines.append(f"    model: {_q(entry.model)}")
        lines += [
            f"    aspect_ratio: {_q(entry.aspect_ratio)}",
            f"    duration: {entry.duration}",
            f"    resolution: {_q(entry.resolution)}",
            "    tags:",
            *(f"      {_q(k)}: {_q(v)}" for k, v in tags.items()),
        ]
    return "\n".join(lines) + "\n"


def promote(
    folder: str | Path,
    out: str | Path,
    *,
    picked: bool = False,
    min_score: int | None = None,
    overrides: dict[str, Any] | None = None,
    repeats: int = PROMOTE_REPEATS,
) -> Promoted:
    """Write the manifest of ``folder``'s winners to ``out`` (planned first; see the module)."""
    from omni_batch.planning.plan import plan
    from omni_batch.outputs.report import build_report
    from omni_batch.outputs.review import check_folder

    folder = check_folder(folder)
    out = Path(out)
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: at least 1")
    frame = build_report(folder)
    chosen = winners(frame, picked, min_score)
    how = "--picked" if picked else f"--min-score {min_score}"
    if chosen.empty:
        raise UsageError(
            f"{folder}: no job is {'picked' if picked else f'scored {min_score} or more'}; "
            "review the run first (omni-batch review, or omni-batch pick)"
        )
    entries = _entries(chosen, overrides or {}, folder.resolve().name)
    _unique_ids(entries)
    text = render(entries, folder, how, repeats, len(frame), len(chosen))
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise UsageError(f"-o {out}: the promoted manifest is YAML; name it .yaml")
    temp = out.with_name(f".{out.stem}.promote-tmp{out.suffix}")
    try:
        temp.write_text(text, encoding="utf-8")
        try:
            planned = plan(temp)
        except ManifestError as exc:
            first = exc.problems[0] if exc.problems else None
            what = f"{first.field}: {first.message}" if first else str(exc)
            raise UsageError(f"{out}: the promoted manifest would not plan: {what}") from None
        os.replace(temp, out)
    except OSError as exc:
        raise UsageError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return Promoted(out, [_text(j) for j in chosen["job_id"]], len(entries), planned.summary.jobs)
