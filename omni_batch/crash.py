"""Crash points for the crash-matrix tests: ``OMNI_BATCH_CRASH_AT=name:N`` kills the process
(SIGKILL, like ``kill -9``) the N-th time the run passes ``point(name)``; with
``OMNI_BATCH_CRASH_SIG=STOP`` it stops there instead (SIGSTOP: a paused machine, resumed by
SIGCONT). Off unless set.
"""

from __future__ import annotations

import os
import signal

ENV = "OMNI_BATCH_CRASH_AT"
SIG_ENV = "OMNI_BATCH_CRASH_SIG"
POINTS = (
    "before_post",  # `submitting` is committed, the POST not yet sent
    "after_post",  # the task exists upstream, its id not yet committed
    "after_task_id",  # the task id is committed
    "mid_download",  # part of the video is in the temporary file
    "before_rename",  # the whole video is in the temporary file
    "after_rename",  # the video is in place, its `completed` not yet committed
    "mid_report",  # report.csv is half written (to its temporary file)
    "in_commit",  # inside a journal transaction, before COMMIT
    "mid_rebuild",  # a lost journal half rebuilt from events.jsonl, before its COMMIT
)

_UNREAD = ("", 0)
_target: tuple[str, int] | None = _UNREAD  # read from the environment at the first point
_seen: dict[str, int] = {}


def _parse() -> tuple[str, int] | None:
    raw = os.environ.get(ENV, "")
    if not raw:
        return None
    name, _, count = raw.partition(":")
    return name, int(count or 1)


def point(name: str) -> None:
    """Die here if the environment asked for it (a no-op in normal runs)."""
    global _target
    if _target is _UNREAD:  # not at import: a process forked from a warm one has its own
        _target = _parse()
    if _target is None or _target[0] != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _target[1] and os.environ.get(SIG_ENV) == "STOP":
        os.kill(os.getpid(), signal.SIGSTOP)  # once: it goes on from here when continued
    elif _seen[name] >= _target[1] and os.environ.get(SIG_ENV) != "STOP":
        os.kill(os.getpid(), signal.SIGKILL)
