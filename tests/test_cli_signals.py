"""A signal while a command is still planning (before a run takes signals over): one line,
exit 130, nothing created — never a traceback or a silent kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_planning_is_one_line_and_exit_130(tmp_path: Path, sig: int):
    # 1,000,000 jobs (the default ceiling): several seconds of planning, all before anything could be sent
    manifest = tmp_path / "big.yaml"
    manifest.write_text(
        "vars:\n  a: [" + ", ".join(str(i) for i in range(1000)) + "]\n"
        "  b: [" + ", ".join(str(i) for i in range(1000)) + "]\n"
        "prompts:\n  - {id: 'p-{a}-{b}', prompt: 'shot {a} {b}'}\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    env = {**os.environ, "TOAPIS_API_KEY": "sk-test"}
    args = [sys.executable, "-m", "omni_batch", "run", str(manifest), "--out", str(out)]
    args += ["--base-url", "http://127.0.0.1:9", "--yes", "--no-progress"]
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(3.0)  # past the imports even on a loaded machine; planning takes ~15 s
    child.send_signal(sig)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    text = err.decode()
    assert "Traceback" not in text and text.strip().splitlines()[-1] == "interrupted"
    assert not (out / "journal.sqlite").exists()
