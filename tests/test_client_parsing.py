"""Every documented response shape (and a few undocumented ones) → one typed result."""

from __future__ import annotations

import pytest

from omni_batch.errors import BadResponse
from omni_batch.running.api import api_root, parse_status, parse_submit


@pytest.mark.parametrize(
    ("body", "task_id"),
    [
        ({"id": "video_1", "object": "generation.task", "status": "queued"}, "video_1"),
        ({"task_id": "task_2"}, "task_2"),
        ({"code": 200, "data": [{"status": "submitted", "task_id": "task_3"}]}, "task_3"),
        ({"code": 200, "data": {"task_id": "task_4"}}, "task_4"),
        ({"code": 200, "data": []}, None),
        ({"id": ""}, None),
        (["video_1"], None),
    ],
)
def test_submit_task_id_in_documented_order(body, task_id):
    assert parse_submit(body) == task_id


@pytest.mark.parametrize(
    "body",
    [
        {"status": "completed", "result": {"type": "video", "data": [{"url": "https://x/a.mp4"}]}},
        {"status": "completed", "url": "https://x/a.mp4"},
        {"status": "completed", "video_url": "https://x/a.mp4"},
        {"code": 200, "data": {"status": "completed", "url": "https://x/a.mp4"}},
    ],
)
def test_video_url_from_every_documented_place(body):
    state = parse_status(body, None)
    assert state.final and state.video_url == "https://x/a.mp4"


def test_result_url_wins_over_the_older_fields():
    body = {"status": "completed", "result": {"data": [{"url": "a"}]}, "url": "b", "video_url": "c"}
    assert parse_status(body, None).video_url == "a"


def test_submitted_means_queued_and_unknown_words_are_not_final():
    assert parse_status({"status": "submitted"}, None).status == "queued"
    unknown = parse_status({"status": "rendering", "progress": 40}, None)
    assert not unknown.final and unknown.progress == 40


def test_failed_task_carries_code_and_message_whatever_the_code_type():
    for code in ("generation_failed", 500):
        state = parse_status(
            {"status": "failed", "error": {"code": code, "message": "content policy"}}, "rid"
        )
        assert (
            state.final
            and state.error_code == str(code)
            and state.error_message == "content policy"
        )
        assert state.request_id == "rid"


def test_a_status_answer_without_status_is_a_bad_response():
    with pytest.raises(BadResponse):
        parse_status({"id": "x"}, None)


@pytest.mark.parametrize(
    "url",
    [
        "https://toapis.com",
        "https://toapis.com/",
        "https://toapis.com/v1",
        "https://toapis.com/v1/",
    ],
)
def test_base_url_with_or_without_v1(url):
    assert api_root(url) == "https://toapis.com"
