"""The video probe and poster frames, on the simulator's real H.264 clips and on files broken
on purpose: wrong orientation, wrong length, cut short, garbage, empty, missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import pytest

from omni_batch.running.verify import Probe, poster, probe, ratio_problem
from omni_batch.simulator.clips import frame_size, get_clip


def clip(tmp_path: Path, ratio: str = "16:9", duration: int = 6, name: str = "clip.mp4") -> Path:
    path = tmp_path / name
    path.write_bytes(get_clip(ratio, duration, "720P", fps=4))  # what a fast simulator serves
    return path


@pytest.mark.parametrize(("ratio", "duration"), [("16:9", 6), ("9:16", 10), ("1:1", 6)])
def test_probe_passes_simulator_clips(tmp_path, ratio, duration):
    found = probe(clip(tmp_path, ratio, duration), ratio, duration)
    width, height = frame_size(ratio, "720P")
    assert found == Probe(True, width, height, float(duration), "")


def test_probe_flags_a_landscape_file_asked_as_portrait(tmp_path):
    found = probe(clip(tmp_path, "16:9"), "9:16", 6)
    assert not found.ok
    assert (found.width, found.height) == (1280, 720)
    assert found.message == "1280x720, expected portrait 9:16"


def test_probe_flags_the_wrong_duration(tmp_path):
    found = probe(clip(tmp_path, "16:9", 6), "16:9", 10)
    assert not found.ok and found.duration_s == 6.0
    assert found.message == "duration 6.0 s, expected 10 s"


def test_probe_tolerates_half_a_second(tmp_path):
    assert probe(clip(tmp_path, "16:9", 6), "16:9", 6.4).ok
    assert not probe(clip(tmp_path, "16:9", 6), "16:9", 6.6).ok


def test_probe_says_a_file_cut_before_its_header_does_not_decode(tmp_path):
    data = clip(tmp_path).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # PyAV writes the moov atom last: it is gone
    found = probe(cut, "16:9", 6)
    assert not found.ok and found.width is None
    assert found.message.startswith("does not decode: ")


def test_probe_measures_a_cut_file_by_its_packets_not_its_header(tmp_path):
    # A "faststart" file has its header first, so a cut copy still claims the full length.
    source, faststart = clip(tmp_path), tmp_path / "faststart.mp4"
    with (
        av.open(str(source)) as src,
        av.open(str(faststart), "w", format="mp4", options={"movflags": "faststart"}) as dst,
    ):
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    assert probe(faststart, "16:9", 6).ok
    data = faststart.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    found = probe(cut, "16:9", 6)
    assert not found.ok
    assert found.duration_s is not None and found.duration_s < 5.5
    assert "expected 6 s" in found.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"<html>403 Forbidden</html>" * 40, "does not decode: "),
        (b"", "does not decode: the file is empty"),
        (None, "does not decode: file not found"),
    ],
)
def test_probe_flags_files_that_are_not_video(tmp_path, content, message):
    path = tmp_path / "video.mp4"
    if content is not None:
        path.write_bytes(content)
    found = probe(path, "16:9", 6)
    assert not found.ok and found.message.startswith(message)


@pytest.mark.parametrize(
    ("width", "height", "ratio", "problem"),
    [
        (1920, 1080, "16:9", ""),
        (1920, 1088, "16:9", ""),  # coded height padded to whole macroblocks: 0.7% off
        (1080, 1920, "9:16", ""),
        (720, 722, "1:1", ""),
        (1440, 1080, "16:9", "1440x1080, expected landscape 16:9"),
        (1080, 1080, "9:16", "1080x1080, expected portrait 9:16"),
        (1280, 720, "1:1", "1280x720, expected square 1:1"),
        (1280, 720, "auto", ""),  # not an a:b ratio: nothing to compare against
    ],
)
def test_ratio_problem(width, height, ratio, problem):
    assert ratio_problem(width, height, ratio) == problem


@pytest.mark.parametrize(("ratio", "size"), [("16:9", (320, 180)), ("9:16", (180, 320))])
def test_poster_writes_the_first_frame_as_a_small_jpeg(tmp_path, ratio, size):
    out = tmp_path / "posters" / "job.jpg"
    assert poster(clip(tmp_path, ratio), out)
    data = out.read_bytes()
    assert data[:2] == b"\xff\xd8" and len(data) < 40_000  # a JPEG, and a small one
    with av.open(str(out)) as image:
        frame = next(image.decode(video=0))
    assert (frame.width, frame.height) == size
    assert [p.name for p in out.parent.iterdir()] == ["job.jpg"]  # no temp file left behind


def test_poster_of_a_broken_file_is_false_and_writes_nothing(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 100)
    out = tmp_path / "poster.jpg"
    assert poster(broken, out) is False
    assert not out.exists()


def test_importing_verify_does_not_load_pyav():
    code = "import sys, omni_batch.running.verify; print('av' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
