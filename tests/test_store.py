"""The video store's contract, on the local store: a put is whole or absent (never part of a
video under its name), a failed stream leaves nothing, size/remove/open/link/posters; and the
resume check that asks the store, not the journal, which completed videos are lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from omni_batch.errors import OutputError
from omni_batch.running.download import requeue_lost_videos
from omni_batch.store import LocalStore, Stored, VideoStore
from omni_batch.store.base import VideoStore as Protocol


def store_in(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "out")
    store.prepare()
    return store


async def stream(*chunks: bytes, fail: Exception | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise fail


def put(store: VideoStore, name: str, chunks: AsyncIterator[bytes]) -> Stored:
    return asyncio.run(store.put(name, chunks))  # type: ignore[arg-type]


def files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "out" / "videos").iterdir())


def test_the_local_store_has_every_method_of_the_protocol():
    wanted = {n for n in vars(Protocol) if not n.startswith("_")}
    assert wanted <= set(dir(LocalStore))
    assert wanted == {
        "prepare", "put", "size", "remove", "open", "local_path", "link", "put_poster",
        "poster_link", "stored",
    }  # fmt: skip


def test_stored_lists_whole_videos_only(tmp_path):
    store = store_in(tmp_path)
    put(store, "job-1", stream(b"abc"))
    (tmp_path / "out" / "videos" / ".job-2.mp4.part").write_bytes(b"x")  # a download under way
    (tmp_path / "out" / "videos" / "job-3.mp4").write_bytes(b"")  # nothing in it
    (tmp_path / "out" / "videos" / "notes.txt").write_bytes(b"x")
    assert list(store.stored()) == [Stored("job-1", 3)]
    assert list(store_in(tmp_path / "nowhere").stored()) == []


def test_a_put_stores_the_whole_stream_under_its_name(tmp_path):
    store = store_in(tmp_path)
    assert put(store, "job-1", stream(b"abc", b"defg")) == Stored("job-1", 7)
    assert store.size("job-1") == 7
    with store.open("job-1") as fh:
        assert fh.read() == b"abcdefg"
    assert store.local_path("job-1") == (tmp_path / "out" / "videos" / "job-1.mp4").resolve()
    assert store.link("job-1") == "videos/job-1.mp4"  # as reports have always named it
    assert files(tmp_path) == ["job-1.mp4"]


def test_nothing_is_visible_under_the_name_while_a_put_streams(tmp_path):
    store = store_in(tmp_path)
    seen: list[int | None] = []

    async def watched() -> AsyncIterator[bytes]:
        for chunk in (b"x" * 10, b"y" * 10):
            yield chunk
            seen.append(store.size("job-1"))

    put(store, "job-1", watched())
    assert seen == [None, None] and store.size("job-1") == 20


def test_a_replacing_put_keeps_the_old_video_whole_until_the_new_one_is(tmp_path):
    store = store_in(tmp_path)
    put(store, "job-1", stream(b"old video"))
    seen: list[int | None] = []

    async def watched() -> AsyncIterator[bytes]:
        yield b"new"
        seen.append(store.size("job-1"))
        yield b" video, longer"

    put(store, "job-1", watched())
    assert seen == [9] and store.size("job-1") == 17


def test_a_failed_stream_leaves_nothing_and_its_error_passes_through(tmp_path):
    store = store_in(tmp_path)
    with pytest.raises(ConnectionResetError):
        put(store, "job-1", stream(b"part of it", fail=ConnectionResetError()))
    assert store.size("job-1") is None
    assert files(tmp_path) == []  # no temporary file left either


def test_a_failed_stream_over_an_old_video_leaves_the_old_one(tmp_path):
    store = store_in(tmp_path)
    put(store, "job-1", stream(b"whole"))
    with pytest.raises(ValueError, match="cut"):
        put(store, "job-1", stream(b"half", fail=ValueError("cut")))
    assert store.size("job-1") == 5 and files(tmp_path) == ["job-1.mp4"]


def test_a_store_that_cannot_be_written_is_an_output_error(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "videos").write_text("a file where the folder should be")
    store = LocalStore(tmp_path / "out")
    with pytest.raises(OutputError, match="cannot create the videos folder"):
        store.prepare()
    with pytest.raises(OutputError, match="cannot write video"):
        put(store, "job-1", stream(b"abc"))


def test_remove_deletes_and_an_absent_video_is_none(tmp_path):
    store = store_in(tmp_path)
    put(store, "job-1", stream(b"abc"))
    store.remove("job-1")
    store.remove("job-1")  # absent: nothing to do
    assert store.size("job-1") is None and files(tmp_path) == []
    with pytest.raises(OSError):
        store.open("job-1")


def test_names_that_would_leave_the_folder_are_refused(tmp_path):
    store = store_in(tmp_path)
    for hostile in ("../escape", "a/b", "/etc/passwd", "nul\0byte", "..", ""):
        with pytest.raises(OutputError, match="refusing to write outside"):
            put(store, hostile, stream(b"abc"))
        assert store.size(hostile) is None and store.poster_link(hostile) is None
    assert files(tmp_path) == []


def test_a_poster_is_linked_while_it_is_no_older_than_its_video(tmp_path):
    store = store_in(tmp_path)
    put(store, "job-1", stream(b"abc"))
    assert store.poster_link("job-1") is None
    store.put_poster("job-1", b"\xff\xd8jpeg")
    assert store.poster_link("job-1") == "posters/job-1.jpg"
    assert (tmp_path / "out" / "posters" / "job-1.jpg").read_bytes() == b"\xff\xd8jpeg"
    poster = store.poster_path("job-1")
    os.utime(poster, (1_000_000_000, 1_000_000_000))  # older than the video: stale
    assert store.poster_link("job-1") is None
    store.remove("job-1")
    assert store.poster_link("job-1") is None  # no video: no poster shown


class Ledger:
    """The two journal calls the resume check makes, over a dict (no SQL needed here)."""

    def __init__(self, completed: dict[str, int]):
        self.completed = completed
        self.requeued: list[tuple[list[str], str]] = []

    def completed_videos(self) -> Iterator[tuple[str, str, int]]:
        for job_id, size in self.completed.items():
            yield job_id, f"videos/{job_id}.mp4", size

    def requeue(self, job_ids: Iterable[str], reason: str) -> int:
        ids = list(job_ids)
        self.requeued.append((ids, reason))
        return len(ids)


def test_the_store_not_the_journal_says_which_completed_videos_are_lost(tmp_path):
    store = store_in(tmp_path)
    for job, body in (("whole", b"12345"), ("short", b"12")):
        put(store, job, stream(body))
    ledger = Ledger({"whole": 5, "short": 5, "gone": 5})
    assert requeue_lost_videos(ledger, store) == 2
    assert ledger.requeued == [(["short", "gone"], "video lost on disk")]
    assert store.size("short") is None  # a cut-short video must not pass for the whole one
    assert store.size("whole") == 5


def test_the_journal_imports_nothing_from_the_later_stages():
    code = (
        "import sys, omni_batch.journal.sqlite; "
        "print(sorted(m for m in sys.modules if m.startswith(('omni_batch.running', "
        "'omni_batch.store', 'omni_batch.outputs'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class FarStore(LocalStore):
    """A store whose bytes are not on this machine (as an object store's): read via `open`."""

    def local_path(self, name: str) -> Path | None:
        return None


def test_a_video_elsewhere_is_probed_and_postered_through_open(tmp_path):
    from omni_batch.running.verify import poster_stored, probe_stored
    from omni_batch.simulator.clips import get_clip

    store = FarStore(tmp_path / "out")
    store.prepare()
    put(store, "job-1", stream(get_clip("9:16", 6, "720P", fps=4)))
    found = probe_stored(store, "job-1", "9:16", 6, poster=True)
    assert found.ok and (found.width, found.height) == (720, 1280), found.message
    assert store.poster_link("job-1") == "posters/job-1.jpg"
    store.remove("job-1")
    assert probe_stored(store, "job-1", "9:16", 6).message == "does not decode: file not found"
    assert poster_stored(store, "job-1") is False
