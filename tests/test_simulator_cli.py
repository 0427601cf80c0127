"""`omni-batch simulate` and `serve_in_thread`: the standalone server starts, prints where it
listens, answers, stops on Ctrl-C; bad knobs and busy ports are one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from click.testing import CliRunner

from omni_batch.cli.simulate import simulate
from omni_batch.simulator import SimConfig, serve_in_thread


def _post(url: str, key: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/v1/videos/generations",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_in_thread_answers_plain_blocking_clients():
    with serve_in_thread(SimConfig.from_profile("fast")) as sim:
        status, body = _post(sim.base_url, sim.key, {"model": "gemini_omni", "prompt": "x"})
        assert status == 200 and body["status"] == "queued"
        assert sim.stats()["submits"] == 1  # read across threads
        with urllib.request.urlopen(sim.base_url + "/_sim/stats", timeout=5) as response:
            assert json.loads(response.read())["submit_requests"] == 1


def test_bad_knobs_and_profiles_exit_2_with_one_line():
    runner = CliRunner()
    for args, words in (
        (["--set", "p_5xxx=1"], "unknown simulator knob 'p_5xxx'; did you mean p_5xx?"),
        (["--set", "p_drop=3"], "p_drop must be between 0 and 1"),
        (["--profile", "chaotic"], "unknown simulator profile 'chaotic'"),
    ):
        result = runner.invoke(simulate, ["--port", "0", *args])
        assert result.exit_code == 2, result.output
        assert words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


def test_show_prints_the_profile_with_overrides():
    result = CliRunner().invoke(simulate, ["--profile", "chaos", "--set", "p_drop=0", "--show"])
    assert result.exit_code == 0
    assert "p_drop = 0.0" in result.output
    assert "submit_shape = mixed" in result.output


def test_a_missing_catalog_overlay_exits_2(tmp_path):
    result = CliRunner().invoke(simulate, ["--port", "0", "--catalog", str(tmp_path / "no.yaml")])
    assert result.exit_code == 2
    assert "catalog file not found" in result.stderr


def test_a_busy_port_exits_2_with_one_line():
    with serve_in_thread() as sim:
        port = sim.base_url.rsplit(":", 1)[1]
        result = CliRunner().invoke(simulate, ["--port", port])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_command_serves_until_ctrl_c():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = "from omni_batch.cli.simulate import simulate; simulate()"
    args = ["--port", "0", "--profile", "fast", "--seed", "3", "--key", "sk-test"]
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        try:
            lines = []
            for line in process.stdout:
                lines.append(line)
                if "Ctrl-C" in line:
                    break
            text = "".join(lines)
            api = re.search(r"API:\s+(http://127\.0\.0\.1:\d+)", text).group(1)
            cdn = re.search(r"CDN:\s+(http://127\.0\.0\.1:\d+)", text).group(1)
            assert api != cdn
            assert "key:  sk-test" in text
            status, _ = _post(api, "sk-test", {"model": "gemini_omni", "prompt": "x"})
            assert status == 200
            assert _post(api, "sk-sim-local", {"model": "gemini_omni", "prompt": "x"})[0] == 401
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    assert "simulator stopped" in out
    assert "Traceback" not in err
