"""Reading users' files: UTF-8 text with errors that name the file, and CSV rows as raw entries.

A CSV row becomes the same {field: Field} entry a YAML prompt item does; other columns are tags.
Cells are separated by `,`, `;` (Excel in much of Europe) or tabs, told apart by the header.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from itertools import islice
from pathlib import Path

from omni_batch.errors import ManifestError, Problem, Where
from omni_batch.planning.problems import Field, Problems, suggest

CSV_COLUMNS = ("id", "prompt", "model", "aspect_ratio", "duration", "resolution", "repeats")
MAX_CELL = 64 << 20  # Python's csv stops at 128 KiB per cell; a long prompt is still a prompt
csv.field_size_limit(MAX_CELL)
Entry = tuple[Where, dict[str, Field]]
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}  # in order of preference
SNIFF_ROWS = 200  # rows looked at when the header alone cannot tell
SNIFF_CHARS = 256 << 10  # ... within the file's first 256 KiB


def read_text(path: Path) -> str:
    """Decode a user's file as UTF-8 (BOM allowed); raise ManifestError naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError([Problem(Where(str(path)), "", "file not found")]) from None
    except IsADirectoryError:
        raise ManifestError(
            [Problem(Where(str(path)), "", "is a directory, not a manifest")]
        ) from None
    except OSError as exc:
        raise ManifestError(
            [Problem(Where(str(path)), "", f"cannot read: {exc.strerror}")]
        ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        where = Where(str(path), line)
        msg = f"not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        raise ManifestError([Problem(where, "", msg)]) from None


def _split_rows(text: str, delimiter: str, limit: int | None = None) -> list[list[str]]:
    return list(islice(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), limit))


def sniff_delimiter(text: str) -> tuple[str, str | None]:
    """The cell delimiter of a CSV manifest, and a note saying so when it is a guess.

    The header decides: the one delimiter that splits it into columns, one of them `prompt`.
    Only a header that splits several ways, or not at all (one column), leaves a guess: then
    the first rows decide (the delimiter that gives them the header's width), and the note says
    which one was assumed. Quoted cells may hold any delimiter.
    """
    cut = len(text) > SNIFF_CHARS
    sample = text[:SNIFF_CHARS]
    samples: dict[str, list[list[str]]] = {}
    for delimiter in DELIMITERS:
        try:
            rows = _split_rows(sample, delimiter, SNIFF_ROWS + 1)
        except csv.Error:
            rows = []
        if cut and 1 < len(rows) <= SNIFF_ROWS:
            rows.pop()  # the sample ended inside it
        samples[delimiter] = rows[:SNIFF_ROWS]

    def header(d: str) -> list[str]:
        return [cell.strip().lower() for cell in samples[d][0]] if samples[d] else []

    def fit(d: str) -> int:  # rows that have the header's width, for a tie
        width = len(header(d))
        return sum(len(row) == width for row in samples[d][1:] if any(c.strip() for c in row))

    split = [d for d in DELIMITERS if len(header(d)) > 1]
    named = [d for d in split if "prompt" in header(d)]
    if len(named) == 1:
        return named[0], None
    if named:  # e.g. `prompt;id,prompt`: let the rows tell
        best = max(named, key=fit)  # max keeps the first of equals: the preferred one
        others = " and ".join(repr(d) for d in named if d != best)
        return best, (
            f"the header splits on {others} too; assumed {DELIMITERS[best]}-separated ({best!r})"
        )
    if split:  # no `prompt` column either way: the widest reading names the columns best
        return max(split, key=lambda d: len(header(d))), None
    # one column: the rows must have one cell each, so pick the delimiter that splits none
    # (a one-column file from a `;` Excel keeps its commas unquoted)
    splits = {
        d: sum(len(row) > 1 for row in samples[d][1:] if any(c.strip() for c in row))
        for d in DELIMITERS
    }
    best = min(DELIMITERS, key=lambda d: splits[d])
    if not any(splits.values()):
        return best, None  # no row holds any delimiter: the choice changes nothing
    guess = "the header has a single column, so the delimiter is a guess: "
    if splits[best]:
        return best, guess + f"assumed {DELIMITERS[best]}-separated ({best!r})"
    kept = " and ".join(f"{DELIMITERS[d]}s" for d in DELIMITERS if splits[d])
    return best, guess + f"assumed none; each row is one cell, its {kept} kept"


def csv_entries(problems: Problems, text: str, path: str) -> list[Entry]:
    delimiter, note = sniff_delimiter(text)
    if note:
        problems.note(Where(path, row=1), note)
    try:
        rows = _split_rows(text, delimiter)
    except csv.Error as exc:
        problems.add(Where(path), "", f"not a readable CSV file: {exc}")
        return []
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0]]
    columns = [h.lower() if h.lower() in CSV_COLUMNS else h for h in header]
    for name, count in Counter(columns).items():
        if name and count > 1:
            problems.add(Where(path, row=1), name, "the column appears more than once")
    if "prompt" not in columns:
        hint = "".join(suggest(h.lower(), ["prompt"]) for h in header if h)[:40]
        problems.add(Where(path, row=1), "prompt", f"the header has no `prompt` column{hint}")
        return []
    entries = []
    for number, row in enumerate(rows[1:], start=2):
        where = Where(path, row=number)
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(columns):
            problems.add(
                where, "", f"has {len(row)} cells but the header has {len(columns)} columns"
            )
            continue
        fields: dict[str, Field] = {}
        tags: dict[str, str] = {}
        for col, cell in zip(columns, row, strict=False):
            value = cell.strip()
            if col in CSV_COLUMNS:
                if value or col == "prompt":
                    fields[col] = Field(value, where, col, split=col not in ("prompt", "id"))
            elif col:
                tags[col] = value
            elif value:
                problems.add(where, "", "a cell sits under a column with no name in the header")
        if tags:
            fields["tags"] = Field(tags, where, "tags")
        entries.append((where, fields))
    return entries
