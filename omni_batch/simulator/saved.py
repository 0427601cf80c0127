"""A simulator's tasks kept on disk, so a rehearsed resume behaves like the real one.

The real API keeps a task whatever happens to the client; the embedded simulator lives in the
runner's process and would forget every task with it (a rerun's polls would answer 404). With a
``SavedTasks`` folder (``DIR/.simulator/`` for ``run --simulate``) the simulator appends one JSON
line per task it creates, written and flushed before the submit is answered, so any task id the
runner could have committed is on disk even after ``kill -9``; a restarted simulator loads them
and they go on progressing on the wall clock. Videos need no saving: a clip is a pure function
of the task's ratio, duration and resolution. The listening ports are kept too, so the video
links a previous run was handed still point at this simulator.

Lines: ``{"task": {...}}`` per created task and ``{"expiry": {"id": ..., "at": ...}}`` when a
poll hands out a fresh link. A line cut short by a crash is skipped on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TASKS_FILE = "tasks.jsonl"
PORTS_FILE = "ports.json"


def key_digest(key: str) -> str:
    """What the file says about a task's API key: never the key itself."""
    return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()


class SavedTasks:
    """One simulator state folder: the task lines and the ports last served from it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._handle: IO[str] | None = None

    @property
    def tasks_path(self) -> Path:
        return self.folder / TASKS_FILE

    def records(self) -> Iterator[dict[str, Any]]:
        """Every whole line, in the order written; nothing when the folder is new."""
        try:
            text = self.tasks_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    yield record

    def append(self, record: dict[str, Any]) -> None:
        """Write one line and hand it to the OS before returning (a killed process loses
        nothing written; the folder is made on the first line, not before)."""
        if self._handle is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = self.tasks_path.open("a", encoding="utf-8")
            if handle.tell() and not self._ends_with_newline():
                handle.write("\n")  # after a line a crash cut short
            self._handle = handle
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._handle.flush()

    def _ends_with_newline(self) -> bool:
        with self.tasks_path.open("rb") as raw:
            raw.seek(-1, os.SEEK_END)
            return raw.read(1) == b"\n"

    def ports(self) -> tuple[int, int] | None:
        """(API port, CDN port) of the last simulator that answered from this folder."""
        try:
            found = json.loads((self.folder / PORTS_FILE).read_text(encoding="utf-8"))
            api, cdn = int(found["api"]), int(found["cdn"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (api, cdn) if 0 < api < 65536 and 0 < cdn < 65536 else None

    def save_ports(self, api: int, cdn: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.folder / (PORTS_FILE + ".tmp")
        temp.write_text(json.dumps({"api": api, "cdn": cdn}), encoding="utf-8")
        temp.replace(self.folder / PORTS_FILE)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
