"""Reading users' files: UTF-8 text with errors that name the file, and CSV rows as raw entries.

A CSV row becomes the same {field: Field} entry a YAML prompt item does; other columns are tags.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from omni_batch.errors import ManifestError, Problem, Where
from omni_batch.resolve import Field, Problems, suggest

CSV_COLUMNS = ("id", "prompt", "model", "aspect_ratio", "duration", "resolution", "repeats")
MAX_CELL = 64 << 20  # Python's csv stops at 128 KiB per cell; a long prompt is still a prompt
csv.field_size_limit(MAX_CELL)
Entry = tuple[Where, dict[str, Field]]


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


def csv_entries(problems: Problems, text: str, path: str) -> list[Entry]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
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
