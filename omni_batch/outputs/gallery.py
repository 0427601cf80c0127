"""The gallery: ``gallery.html``, one self-contained page laying a run's videos out as the
manifest's matrix (prompt rows × ratio·duration columns), with poster frames and filters.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import pandas as pd

from omni_batch.errors import OutputError, UsageError
from omni_batch.journal import is_shared
from omni_batch.outputs import gallery_template as tpl
from omni_batch.outputs.digest import STATUS_ORDER, ReportDigest
from omni_batch.outputs.summary import SHOWN_ROWS, formatted, informative, label, summary_tables
from omni_batch.running.verify import poster_stored, probe_stored
from omni_batch.store.base import VideoStore
from omni_batch.store.location import folder_store, shared_store

GALLERY = "gallery.html"
TILE_SIDE = 240  # px: the long side of a tile's picture
CAPTION_MIN = 170  # px: a portrait tile is widened so its error text stays readable
RECORDS_PER_SLICE = 1000
POSTERS_PER_SLICE = 256


def _text(value: object) -> str:
    """A cell as display text: '' for missing values (NaN, None, NA)."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return ""
    return str(value)


def _e(value: object) -> str:
    return escape(value if isinstance(value, str) else _text(value), quote=True)


def _cells(column: pd.Series) -> Iterator[Any]:
    """A column's values as Python objects, taken out a slice at a time (iterating a text
    column took each value out of Arrow alone, and a whole column at once costs memory)."""
    for start in range(0, len(column), RECORDS_PER_SLICE):
        yield from column.iloc[start : start + RECORDS_PER_SLICE].tolist()


def _ratio(aspect_ratio: str) -> float | None:
    a, _, b = aspect_ratio.partition(":")
    try:
        x, y = float(a), float(b)
    except ValueError:
        return None
    return x / y if x > 0 and y > 0 else None


def _box(aspect_ratio: str) -> tuple[int, int]:
    """A tile's picture size from the asked ratio, so the layout does not jump as videos load."""
    r = _ratio(aspect_ratio) or 16 / 9
    return (TILE_SIDE, round(TILE_SIDE / r)) if r >= 1 else (round(TILE_SIDE * r), TILE_SIDE)


def _column_key(key: tuple[str, int]) -> tuple[float, str, int]:
    ratio, duration = key
    return (-(_ratio(ratio) or 0.0), ratio, duration)  # landscape, square, then portrait


def _url(relative: str) -> str:
    """A relative path as a URL path, normalised as ``Path(relative).as_posix()`` does."""
    parts = relative.split("/")
    if "" in parts or "." in parts:  # only then does Path change it (~3 µs a Path, a tile)
        relative = Path(relative).as_posix()
    return quote(relative, safe="/")


def _href(link: str) -> str:
    """A store's link as the page's URL: a path relative to the page (the local store's, so
    the folder works from disk, a web server or a zip), or a whole URL as it is."""
    return link if "://" in link else _url(link)


def _csp(store: VideoStore | None) -> str:
    """The page's Content-Security-Policy: its own folder's files, and the store's origin
    when the store is elsewhere (an S3 bucket), for the videos and posters only."""
    if store is None:
        return tpl.CSP
    link = store.link("video")
    if "://" not in link:
        return tpl.CSP
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https") or not re.fullmatch(r"[A-Za-z0-9.:\[\]-]+", parts.netloc):
        return tpl.CSP  # not an origin a policy can name safely: the page shows no video
    origin = f"{parts.scheme}://{parts.netloc}"
    return tpl.CSP.replace("img-src 'self'", f"img-src 'self' {origin}").replace(
        "media-src 'self'", f"media-src 'self' {origin}"
    )


def _videos(store: VideoStore | None, frame: pd.DataFrame) -> dict[str, str]:
    """Job id → the video's link, for the completed jobs whose video is in the store (None:
    a shared run whose runners kept their videos: none to link)."""
    videos: dict[str, str] = {}
    if store is None:
        return videos
    # a retired job (no longer in the manifest) keeps its video: its state says completed
    states = frame["state"] if "state" in frame else frame["status"]
    for job, status, state, path in zip(
        _cells(frame["job_id"]),
        _cells(frame["status"]),
        _cells(states),
        _cells(frame["video_path"]),
        strict=True,
    ):
        done = status == "completed" or (status == "retired" and state == "completed")
        if done and _text(path) and store.size(name := _text(job)) is not None:
            videos[name] = store.link(name)
    return videos


def _poster_once(store: VideoStore, job: str, extract: bool) -> str | None:
    """The poster's link: one made by an earlier run or report (posters are made once), else
    extracted now unless not ``extract``."""
    link = store.poster_link(job)
    if link is None and extract and poster_stored(store, job):
        link = store.poster_link(job)
    return link


def _posters(
    store: VideoStore | None, videos: dict[str, str], extract: bool
) -> dict[str, str]:
    """Job id → poster link, for the videos with a poster (extracted now when missing, unless
    not ``extract``)."""
    if store is None:
        return {}
    jobs = list(videos)
    if not extract:  # only a look at what is there: no thread pool needed
        found = ((job, store.poster_link(job)) for job in jobs)
        return {job: link for job, link in found if link is not None}
    made: dict[str, str] = {}
    # PyAV decodes with the GIL released, so a couple of threads help on a big first gallery;
    # a slice at a time, since a future per video cost ~30 MB at 20,000 jobs
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(jobs), POSTERS_PER_SLICE):
            some = jobs[start : start + POSTERS_PER_SLICE]
            links = pool.map(lambda job: _poster_once(store, job, extract), some)
            made.update((job, link) for job, link in zip(some, links, strict=True) if link)
    return made


def _verified(
    store: VideoStore | None, frame: pd.DataFrame, videos: dict[str, str]
) -> pd.DataFrame:
    """The report with ``verified``/``verify_message``: the journal's, else probed now."""
    if "verified" in frame.columns or store is None:
        return frame  # the engine probed each video as it came: never again here
    frame = frame.copy()
    verified: list[bool | None] = []
    messages: list[str] = []
    for row in frame.itertuples(index=False):
        if row.job_id not in videos:
            verified.append(None)
            messages.append("")
            continue
        found = probe_stored(store, row.job_id, str(row.aspect_ratio), int(row.duration))
        verified.append(found.ok)
        messages.append(found.message)
    frame["verified"] = pd.array(verified, dtype="boolean")
    frame["verify_message"] = messages
    return frame


VIDEO, POSTER = "_video", "_poster"  # a record's video link and its poster's link (or None)


def _tile(row: dict, tag_columns: list[str], show_model: bool) -> str:
    """One job's tile."""
    job = _text(row["job_id"])
    job_e = _e(job)
    status = _text(row["status"]) or "pending"
    status_e = _e(status)
    width, height = _box(_text(row["aspect_ratio"]))
    verified = _text(row.get("verified")).lower()
    flagged = verified == "false"
    pick = _text(row.get("pick"))
    attrs = [f'data-status="{status_e}"', f'data-flag="{int(flagged)}"', f'data-pick="{_e(pick)}"']
    attrs += [f'data-t{i}="{_e(row.get(c))}"' for i, c in enumerate(tag_columns)]
    classes = f"tile s-{status_e}" + (" flagged" if flagged else "")
    video = row[VIDEO]
    if status in ("completed", "retired") and video is not None:
        poster = row[POSTER]
        poster_attr = f' poster="{_e(_href(poster))}"' if poster else ""
        picture = (
            f'<video controls preload="metadata"{poster_attr} src="{_e(_href(video))}" '
            f'width="{width}" height="{height}"></video>'
        )
    else:
        word = "file missing" if status == "completed" else _text(row.get("state")) or status
        picture = f'<div class="slot" style="width:{width}px;height:{height}px">{_e(word)}</div>'
    meta = [f'<span class="badge {status_e}">{status_e}</span>', f"r{_e(row.get('repeat'))}"]
    latency = row.get("latency_s")
    if status == "completed" and latency is not None and not pd.isna(latency):
        meta.append(f"{float(latency):.1f} s")
    if verified == "true":
        meta.append(
            '<span class="vok" title="decodes; duration and size as asked">✓ verified</span>'
        )
    if bool(row.get("possible_duplicate", False)):
        meta.append('<span class="vbad" title="the submit may have been billed twice">dup?</span>')
    lines = [f'<div class="meta">{" ".join(meta)}</div>']
    review = _review_line(pick, row.get("score"), _text(row.get("note")))
    if review:
        lines.append(review)
    if flagged:
        lines.append(f'<div class="vbad">⚠ {_e(row.get("verify_message")) or "not verified"}</div>')
    if status == "failed":
        http = _text(row.get("http_status"))
        head = " · ".join(
            x for x in (_e(row.get("error_type")), f"HTTP {_e(http)}" * bool(http)) if x
        )
        lines.append(f'<div class="err"><b>{head}</b> {_e(row.get("error_message"))}</div>')
        if _text(row.get("request_id")):
            lines.append(f'<div class="dim">request {_e(row.get("request_id"))}</div>')
    if show_model:
        lines.append(f'<div class="dim">{_e(row.get("model"))} · {_e(row.get("resolution"))}</div>')
    if account := _text(row.get("account")):  # the account's name, never a key
        lines.append(f'<div class="dim">account {_e(account)}</div>')
    lines.append(f'<div class="dim">{job_e}</div>')
    attrs.append(f'style="width:{max(width, CAPTION_MIN)}px"')
    return (
        f'<figure class="{classes}" id="job-{job_e}" {" ".join(attrs)}>'
        f"{picture}<figcaption>{''.join(lines)}</figcaption></figure>"
    )


def _review_line(pick: str, score: object, note: str) -> str:
    """A saved review, read-only (set in `omni-batch review` or `omni-batch pick`)."""
    parts = []
    if pick in ("picked", "rejected"):
        parts.append(
            f'<span class="pick {pick}">{"★ picked" if pick == "picked" else "✗ rejected"}</span>'
        )
    if score is not None and not pd.isna(score):
        n = int(score)  # type: ignore[call-overload]
        parts.append(f'<span class="score" title="score {n} of 5">{"●" * n}{"○" * (5 - n)}</span>')
    if note:
        parts.append(f'<span class="note">{_e(note)}</span>')
    return f'<div class="review">{" ".join(parts)}</div>' if parts else ""


def _row_header(first: pd.Series, var_columns: list[str], tag_columns: list[str]) -> str:
    chips = [
        f"<li>{_e(label(c))} = {_e(first.get(c))}</li>" for c in var_columns if _text(first.get(c))
    ]
    chips += [
        f'<li class="tag">{_e(label(c))}: {_e(first.get(c))}</li>'
        for c in tag_columns
        if _text(first.get(c))
    ]
    return (
        f'<th scope="row"><div class="pid">{_e(first["prompt_id"])}</div>'
        f'<div class="prompt">{_e(first["prompt"])}</div>'
        f'<ul class="chips">{"".join(chips)}</ul></th>'
    )


def _prompt_id(row: dict) -> str:
    return row["prompt_id"]


def _page_order(frame: pd.DataFrame) -> np.ndarray:
    """Row positions for the page: prompt rows in manifest order, repeats side by side."""
    first_seen = {pid: n for n, pid in enumerate(dict.fromkeys(_cells(frame["prompt_id"])))}
    keys = pd.DataFrame(
        {"group": frame["prompt_id"].map(first_seen).to_numpy(), "repeat": frame["repeat"]}
    ).reset_index(drop=True)
    return keys.sort_values(["group", "repeat"], kind="stable").index.to_numpy()


# the report columns a tile or a row header shows (timestamps, links and sizes are not shown,
# and turning them into Python objects was a third of the page's cost)
TILE_COLUMNS = frozenset(
    {
        "job_id", "status", "state", "aspect_ratio", "duration", "verified", "verify_message",
        "latency_s", "repeat", "possible_duplicate", "error_type", "error_message",
        "http_status", "request_id", "model", "resolution", "prompt_id", "prompt",
        "pick", "score", "note",
    }
)  # fmt: skip


def _records(frame: pd.DataFrame, order: np.ndarray) -> Iterator[dict]:
    """The rows in ``order`` as plain dicts, a slice at a time: per-group pandas work cost a
    millisecond a job, and every row as a dict at once ~100 MB at 20,000 jobs."""
    shown = frame[[c for c in frame.columns if c in TILE_COLUMNS or c.startswith(("var_", "tag_"))]]
    names = shown.columns.tolist()
    for start in range(0, len(order), RECORDS_PER_SLICE):
        part = shown.take(order[start : start + RECORDS_PER_SLICE])
        # a column at a time: to_dict("records") took each text cell out of Arrow one by one
        columns = [part.iloc[:, i].tolist() for i in range(len(names))]
        for values in zip(*columns, strict=True):
            yield dict(zip(names, values, strict=True))


def _with_files(
    records: Iterator[dict], videos: dict[str, str], posters: dict[str, str]
) -> Iterator[dict]:
    for row in records:
        job = _text(row["job_id"])
        row[VIDEO] = videos.get(job)
        row[POSTER] = posters.get(job)
        yield row


@dataclass(frozen=True)
class _Layout:
    """What the page's frame needs before its rows: the columns and the matrix's keys."""

    columns: list[str]
    keys: list[tuple[str, int]]  # (aspect_ratio, duration): the matrix's columns, in order
    show_model: bool

    @classmethod
    def of(cls, frame: pd.DataFrame) -> _Layout:
        pairs = zip(_cells(frame["aspect_ratio"]), _cells(frame["duration"]), strict=True)
        keys = sorted({(_text(r), int(d)) for r, d in pairs}, key=_column_key)
        show_model = frame["model"].nunique() > 1 or frame["resolution"].nunique() > 1
        return cls(list(frame.columns), keys, show_model)


def _matrix(layout: _Layout, rows_in_order: Iterator[dict]) -> Iterator[str]:
    """The matrix table, a prompt row at a time (rows: `_records` with `_with_files`)."""
    var_columns = [c for c in layout.columns if c.startswith("var_")]
    tag_columns = [c for c in layout.columns if c.startswith("tag_")]
    show_model, keys = layout.show_model, layout.keys
    head = "".join(f"<th>{_e(r)} · {d} s</th>" for r, d in keys)
    yield f'<table class="matrix"><thead><tr><th>prompt</th>{head}</tr></thead><tbody>'
    for prompt_id, group in itertools.groupby(rows_in_order, key=_prompt_id):
        cells: dict[tuple[str, int], list[str]] = {key: [] for key in keys}
        first = None
        for row in group:  # each row turned into its tile at once: only the text is kept
            first = first or row
            tile = _tile(row, tag_columns, show_model)
            cells[(_text(row["aspect_ratio"]), int(row["duration"]))].append(tile)
        tds = "".join(f'<td><div class="cell">{"".join(cells[k])}</div></td>' for k in keys)
        header = _row_header(first, var_columns, tag_columns)
        yield f'<tr class="group" data-prompt="{_e(prompt_id)}">{header}{tds}</tr>'
    yield "</tbody></table>"


def _tag_values(frame: pd.DataFrame) -> dict[str, set[str]]:
    columns = (c for c in frame.columns if c.startswith("tag_"))
    return {column: {_text(v) for v in _cells(frame[column])} for column in columns}


def _tag_filters(tag_values: dict[str, set[str]]) -> str:
    selects = []
    for i, (column, found) in enumerate(tag_values.items()):
        values = sorted(found)
        options = "".join(f'<option value="={_e(v)}">{_e(v) or "(none)"}</option>' for v in values)
        selects.append(
            f'<label>{_e(label(column))} <select data-tag="{i}" id="f-tag-{i}">'
            f'<option value="*">all</option>{options}</select></label>'
        )
    return "\n".join(selects)


def _summary_html(tables: dict[str, pd.DataFrame], max_rows: int = SHOWN_ROWS) -> str:
    parts = []
    for name, table in informative(tables).items():
        text = formatted(table.head(max_rows))  # a var of 20,000 values: format only 50
        text.index.name = "" if name == "all" else label(name)
        caption = "whole run" if name == "all" else f"by {label(name)}"
        # index=False keeps the dimension's name in the header row; pandas escapes every cell
        html = text.reset_index().to_html(escape=True, border=0, index=False, na_rep="—")
        parts.append(html.replace(">", f"><caption>{escape(caption)}</caption>", 1))
    return "\n".join(parts)


def _counts(rows: int, counts: pd.Series) -> str:
    """The header's line; ``counts``: as the report's ``status.value_counts()``."""
    known = [s for s in STATUS_ORDER if s in counts]
    known += [s for s in counts.index if s not in STATUS_ORDER]
    parts = [f"{rows} jobs"] + [f"{int(counts[s])} {_e(s)}" for s in known]
    return " · ".join(parts) + f" · written {time.strftime('%Y-%m-%d %H:%M')}"


def _frame_of(
    folder: Path,
    csp: str,
    title: str | None,
    rows: int,
    counts: pd.Series,
    tag_values: dict[str, set[str]],
    matrix: Iterator[str],
    summary: Callable[[], str],
) -> Iterator[str]:
    before, after = tpl.PAGE.split("{matrix}")
    yield before.format(
        csp=escape(csp, quote=True),
        title=_e(title or folder.resolve().name),
        css=tpl.CSS,
        counts=_counts(rows, counts),
        tag_filters=_tag_filters(tag_values),
    )
    if rows:
        yield from matrix
    else:
        yield "<p>No jobs yet.</p>"
    yield after.format(summary=summary() if rows else "", script=tpl.SCRIPT)


def _page(
    folder: Path, store: VideoStore | None, frame: pd.DataFrame, title: str | None, posters: bool
) -> Iterator[str]:
    """The page of a whole report table, in pieces."""
    videos = _videos(store, frame)
    made = _posters(store, videos, extract=posters)
    frame = _verified(store, frame, videos)
    records = _with_files(_records(frame, _page_order(frame)), videos, made)
    matrix = _matrix(_Layout.of(frame), records) if len(frame) else iter(())
    yield from _frame_of(
        folder,
        _csp(store),
        title,
        len(frame),
        frame["status"].value_counts(),
        _tag_values(frame),
        matrix,
        lambda: _summary_html(summary_tables(frame)),
    )


def _streamed_records(
    source: str | Path, run: str | None, store: VideoStore | None, posters: bool
) -> Iterator[dict]:
    """The journal's report in the page's order, a slice at a time, each row with its video
    and poster (found, or extracted, a slice at a time). ``source``: the output folder, or a
    shared journal's URL (its run ``run``)."""
    from omni_batch.outputs.report import page_slices

    for frame in page_slices(source, run):
        videos = _videos(store, frame)
        made = _posters(store, videos, extract=posters)
        frame = _verified(store, frame, videos)
        yield from _with_files(_records(frame, np.arange(len(frame))), videos, made)


def _streamed_page(
    folder: Path,
    source: str | Path,
    run: str | None,
    store: VideoStore | None,
    digest: ReportDigest,
    title: str | None,
    posters: bool,
) -> Iterator[str]:
    """The page from the journal, a slice of rows at a time: never the whole table."""
    layout = _Layout(
        digest.columns,
        sorted(digest.matrix_keys, key=_column_key),
        len(digest.models) > 1 or len(digest.resolutions) > 1,
    )
    tag_values = {
        c: digest.tag_values.get(c, set()) for c in digest.columns if c.startswith("tag_")
    }
    yield from _frame_of(
        folder,
        _csp(store),
        title,
        digest.rows,
        digest.status_counts(),
        tag_values,
        _matrix(layout, _streamed_records(source, run, store, posters)),
        lambda: _summary_html(digest.summary_tables()),
    )


def render_gallery(
    folder: Path,
    frame: pd.DataFrame,
    title: str | None = None,
    *,
    posters: bool = True,
    store: VideoStore | None = None,
) -> str:
    """The page for ``frame`` (a report), extracting missing posters into the store (default:
    the one the folder's journal names, else the folder's own, posters in ``folder/posters``;
    with ``posters=False``, only those already there are shown: no video is decoded)."""
    folder = Path(folder)
    return "".join(_page(folder, store or folder_store(folder), frame, title, posters))


def write_gallery(
    folder: str | Path,
    frame: pd.DataFrame | None = None,
    title: str | None = None,
    *,
    posters: bool = True,
    digest: ReportDigest | None = None,
    store: VideoStore | None = None,
    source: str | None = None,
    run: str | None = None,
) -> Path:
    """Write ``folder/gallery.html`` atomically (and any missing posters); return its path.

    ``frame`` is the report; without one the page is written from the journal a slice of rows
    at a time, never holding the table (the CLI's way: ``digest`` is the report's digest,
    `report.write_reports_digest`, read from the journal when None). ``title`` heads the page
    (default: the folder's name). Without a ``verified`` column the videos are probed here, so
    the page flags mismatches either way. ``posters=False`` (a run with ``verify=False``)
    extracts no poster, so nothing is decoded. Videos and posters are the ``store``'s
    (default: the one the folder's journal names, else the folder's own, `LocalStore`).

    ``source``: a shared journal's URL (as `report.write_reports_digest` takes it), the page
    of its run ``run`` written into ``folder`` (default title: the run's name), its videos and
    posters linked where the run's meta says they are stored (an S3 bucket's plain object
    URLs); a run that names no store gets a page without videos.
    """
    folder = Path(folder)
    if source is not None and not is_shared(source):
        raise UsageError(f"{source}: a gallery's source is a shared journal (a postgresql:// URL)")
    found: VideoStore | None = store
    if found is None:
        found = folder_store(folder) if source is None else shared_store(source, run)
    if source is not None:
        title = title or run or "default"
    if frame is None:
        from omni_batch.outputs.report import digest_report

        where = folder if source is None else source
        digest = digest or digest_report(where, run)
        pieces = _streamed_page(folder, where, run, found, digest, title, posters)
    else:
        pieces = _page(folder, found, frame, title, posters)
    path = folder / GALLERY
    temp = folder / f".{GALLERY}.tmp"
    try:
        with temp.open("w", encoding="utf-8") as out:
            out.writelines(pieces)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write the gallery: {exc.strerror or exc}") from None
    except BaseException:  # the page is rendered as it is written: no half page left behind
        temp.unlink(missing_ok=True)
        raise
    return path
