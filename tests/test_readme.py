"""The README's promises: CI runs exactly its test command, and its quick start works."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_has_exactly_the_two_one_line_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "omni-batch" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert readme_commands()[1] in ci


def test_quick_start_manifest_exists():
    command = readme_commands()[0]
    manifest = re.search(r"manifests/\S+", command)
    assert manifest and (ROOT / manifest.group(0)).is_file()


def test_every_test_the_guarantees_name_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", section))
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    assert named and named <= defined, named - defined
