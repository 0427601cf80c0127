"""The S3 store against moto's S3 server on loopback: whole-or-absent, create-only puts, reads,
links, and no credential in any error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from omni_batch.errors import OutputError
from omni_batch.store.s3 import AlreadyStored, S3Store

VIDEO = bytes(range(256)) * 4000  # ~1 MB, every byte value


async def chunks_of(data: bytes, size: int = 64 * 1024, fail_after: int | None = None):
    for n, start in enumerate(range(0, len(data), size)):
        if fail_after is not None and n == fail_after:
            raise ConnectionResetError("upstream dropped the video")
        yield data[start : start + size]


@pytest.fixture
def s3_env(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for var, value in s3_server.env.items():
        monkeypatch.setenv(var, value)
    return s3_server


@pytest.fixture
def store(s3_env: Any) -> Iterator[S3Store]:
    bucket = s3_env.create_bucket()
    yield S3Store.from_url(f"s3://{bucket}/runs/night-1")


def put(store: S3Store, name: str, stream: AsyncIterator[bytes]) -> Any:
    return asyncio.run(store.put(name, stream))


def test_a_put_video_reads_back_whole_with_its_size(store: S3Store) -> None:
    store.prepare()
    stored = put(store, "shot-1", chunks_of(VIDEO))
    assert (stored.name, stored.size) == ("shot-1", len(VIDEO))
    assert store.size("shot-1") == len(VIDEO)
    with store.open("shot-1") as fh:
        assert fh.read() == VIDEO
        fh.seek(len(VIDEO) - 10)  # a decoder seeks to the moov atom at the end
        assert fh.read() == VIDEO[-10:]
        fh.seek(1000)
        assert fh.read(5) == VIDEO[1000:1005]
    assert store.local_path("shot-1") is None


def test_a_second_put_of_a_name_is_refused_and_the_first_video_stays(store: S3Store) -> None:
    put(store, "shot-1", chunks_of(VIDEO))
    with pytest.raises(AlreadyStored) as refused:
        put(store, "shot-1", chunks_of(b"another runner's copy"))
    assert refused.value.name == "shot-1"
    assert isinstance(refused.value, OutputError)
    assert "already stored" in str(refused.value)
    assert store.size("shot-1") == len(VIDEO)
    with store.open("shot-1") as fh:
        assert fh.read() == VIDEO


def test_a_failing_stream_leaves_no_object_and_its_error_passes_through(store: S3Store) -> None:
    with pytest.raises(ConnectionResetError, match="upstream dropped"):
        put(store, "shot-2", chunks_of(VIDEO, fail_after=3))
    assert store.size("shot-2") is None
    with pytest.raises(FileNotFoundError):
        store.open("shot-2")
    assert put(store, "shot-2", chunks_of(VIDEO)).size == len(VIDEO)  # the name is still free


def test_remove_deletes_and_removing_nothing_is_fine(store: S3Store) -> None:
    put(store, "shot-3", chunks_of(b"x" * 10))
    store.remove("shot-3")
    assert store.size("shot-3") is None
    store.remove("shot-3")


def test_links_name_the_object_without_credentials(store: S3Store, s3_env: Any) -> None:
    link = store.link("shot-1")
    assert link == f"{s3_env.endpoint}/{store.bucket}/runs/night-1/videos/shot-1.mp4"
    assert s3_env.access_key not in link and "Signature" not in link


def test_a_poster_links_only_when_no_older_than_its_video(store: S3Store) -> None:
    assert store.poster_link("shot-1") is None
    put(store, "shot-1", chunks_of(VIDEO))
    assert store.poster_link("shot-1") is None
    store.put_poster("shot-1", b"\xff\xd8jpeg")
    assert store.poster_link(
        "shot-1",
    ).endswith("/runs/night-1/posters/shot-1.jpg")  # type: ignore[union-attr]


def test_names_that_leave_the_prefix_are_refused(store: S3Store) -> None:
    with pytest.raises(OutputError, match="outside the store"):
        put(store, "../escape", chunks_of(b"x"))


def test_not_an_s3_url_is_a_one_line_error() -> None:
    with pytest.raises(OutputError, match="not an S3 location"):
        S3Store.from_url("/tmp/videos")


def test_credentials_never_appear_in_errors_or_repr(
    s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-VALUE-never-shown")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-KEY-ID-never-shown")
    missing = S3Store("no-such-bucket", "p")
    unreachable = S3Store("b", "p", endpoint="http://127.0.0.1:9")  # nothing listens on 9
    texts = [repr(missing), repr(unreachable)]
    for store in (missing, unreachable):
        with pytest.raises(OutputError) as failed:
            store.prepare()
        texts.append(str(failed.value))
    with pytest.raises(OutputError) as failed:
        put(missing, "shot-1", chunks_of(b"x"))
    texts.append(str(failed.value))
    assert "no-such-bucket" in texts[2]
    for text in texts:
        assert "\n" not in text
        assert "s3cr3t" not in text and "AKIA-KEY-ID" not in text


def test_stored_lists_every_whole_video_and_nothing_else(store: S3Store) -> None:
    put(store, "shot-1", chunks_of(VIDEO))
    put(store, "shot-2", chunks_of(b"x" * 10))
    store.put_poster("shot-1", b"\xff\xd8jpeg")  # a poster is no video
    assert sorted((v.name, v.size) for v in store.stored()) == [
        ("shot-1", len(VIDEO)),
        ("shot-2", 10),
    ]


def test_the_s3_store_has_every_method_of_the_protocol() -> None:
    from omni_batch.store.base import VideoStore

    wanted = {n for n in vars(VideoStore) if not n.startswith("_")}
    assert wanted <= set(dir(S3Store))
