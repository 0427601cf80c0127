"""Live counters of one run for the progress display; the journal stays the truth."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omni_batch.running.money import Spend


@dataclass
class RunStats:
    """Live counters for the progress display; the journal stays the truth."""

    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0  # completed or failed during this process
    rate_limited: int = 0
    messages: list[str] = field(default_factory=list)  # the last 20
    logged: int = 0  # messages ever logged, so a reader knows how many it missed
    spend: Spend | None = None  # spent and projected, for the display (issue #15)

    def move(self, old: str | None, new: str) -> None:
        if old:
            self.counts[old] = self.counts.get(old, 0) - 1
        self.counts[new] = self.counts.get(new, 0) + 1
        if new in ("completed", "failed"):
            self.finished_here += 1
