"""Completed tasks serve real H.264 MP4s at the asked size and duration, rendered lazily and
cached; importing the simulator does not load PyAV."""

from __future__ import annotations

import io
import subprocess
import sys

import av
import pytest

from omni_batch.simulator import clips


@pytest.mark.parametrize(
    ("ratio", "resolution", "size"),
    [
        ("16:9", "720P", (1280, 720)),
        ("9:16", "720P", (720, 1280)),
        ("16:9", "1080p", (1920, 1080)),
        ("1:1", "720p", (720, 720)),
        ("4:3", "720p", (960, 720)),
        ("3:4", "1080p", (1080, 1440)),
    ],
)
def test_frame_size_follows_the_short_side(ratio, resolution, size):
    assert clips.frame_size(ratio, resolution) == size


def _probe(data: bytes) -> tuple[int, int, float, str]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))  # it really decodes
        assert frame.width == stream.width
        return stream.width, stream.height, container.duration / 1e6, stream.codec_context.name


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"aspect_ratio": "16:9", "duration": 6}, (1280, 720, 6)),
        ({"aspect_ratio": "9:16", "duration": 10}, (720, 1280, 10)),
        (
            {"model": "gemini_omni_flash", "resolution": "1080p", "duration": 4},
            (1920, 1080, 4),
        ),
    ],
)
def test_a_completed_task_serves_a_playable_mp4_of_the_asked_shape(sim_run, body, expected):
    async def scenario(api):
        task_id = (await api.submit(**body)).body["id"]
        done = (await api.wait(task_id)).body
        status, headers, data = await api.fetch(done["result"]["data"][0]["url"])
        assert status == 200 and headers["Content-Type"] == "video/mp4"
        return data

    width, height, duration, codec = _probe(sim_run(scenario))
    assert (width, height, codec) == (expected[0], expected[1], "h264")
    assert abs(duration - expected[2]) <= 0.25


def test_clips_are_cached_per_parameters():
    first = clips.get_clip("9:16", 6, "720P", fps=4)
    assert clips.get_clip("9:16", 6, "720P", fps=4) is first
    assert clips.get_clip("16:9", 6, "720P", fps=4) != first


def test_importing_the_simulator_and_its_command_loads_no_video_or_http_stack():
    code = (
        "import sys, omni_batch.cli.simulate;"
        "assert not {'aiohttp', 'av', 'numpy'} & set(sys.modules), sys.modules.keys();"
        "from omni_batch.simulator import start_simulator;"
        "assert 'av' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
