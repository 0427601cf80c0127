"""Real servers for the several-machines tests: a throwaway PostgreSQL cluster and moto's S3
server, each on a free loopback port and gone when the test session ends (conftest fixtures).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, within: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {within}s")


# --- PostgreSQL ---------------------------------------------------------------------------


def postgres_missing() -> str | None:
    """Why PostgreSQL cannot be started here (its binaries, or a way to leave root), or None."""
    if pg_bindir() is None:
        return "PostgreSQL's initdb/pg_ctl are not installed (Debian: apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL as the postgres user"
    return None


def pg_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl: Debian's newest /usr/lib/postgresql/*/bin, else
    the PATH's; None when there is neither."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    return None


@dataclass
class Postgres:
    """A running cluster: ``url(db)`` for SQLAlchemy/psycopg/DBOS, ``create_database`` for a
    fresh database per test."""

    port: int
    datadir: Path
    bindir: Path
    as_user: list[str]

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        stop = ["-D", str(self.datadir), "-m", "immediate", "-w", "stop"]
        _pg_tool(self.as_user, self.bindir, "pg_ctl", *stop, check=False)


def _run_as_postgres() -> list[str]:
    """The prefix that runs a command as the postgres user when we are root (PostgreSQL
    refuses to run as root); nothing otherwise."""
    if os.geteuid() != 0:
        return []
    return [shutil.which("runuser") or "runuser", "-u", PG_USER, "--"]


def _pg_tool(as_user: list[str], bindir: Path, tool: str, *args: str, check: bool = True) -> None:
    command = [*as_user, str(bindir / tool), *args]
    subprocess.run(command, capture_output=True, check=check, timeout=120)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """initdb in a temp dir (trust auth, loopback only, socket in the same dir), start, yield,
    stop with ``-m immediate`` and remove the dir."""
    bindir = pg_bindir()
    assert bindir is not None, postgres_missing()
    as_user = _run_as_postgres()
    root = Path(tempfile.mkdtemp(prefix="omni-pg-"))
    datadir = root / "data"
    try:
        if as_user:
            import pwd

            entry = pwd.getpwnam(PG_USER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        init = [
            "-D",
            str(datadir),
            "-U",
            PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "-N",
            "--no-sync",
        ]
        _pg_tool(as_user, bindir, "initdb", *init)
        port = free_port()
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        start = ["-D", str(datadir), "-o", options, "-l", str(root / "log"), "-w", "-t", "60"]
        _pg_tool(as_user, bindir, "pg_ctl", *start, "start")
        server = Postgres(port=port, datadir=datadir, bindir=bindir, as_user=as_user)
        try:
            yield server
        finally:
            server.stop()
    except subprocess.CalledProcessError as exc:
        log = root / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(
            f"PostgreSQL failed to start: {exc.stderr.decode(errors='replace')}{tail}"
        ) from exc
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- moto's S3 server -----------------------------------------------------------------------


@dataclass
class S3Server:
    """moto's server: ``endpoint`` plus the dummy credentials it accepts; ``env`` is what
    obstore (and boto) read from the environment."""

    endpoint: str
    access_key: str = "testing-access-key"
    secret_key: str = "testing-secret-key-do-not-leak"
    region: str = "us-east-1"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def create_bucket(self, prefix: str = "b") -> str:
        """A new bucket (a signed-free PUT: moto does not check signatures); returns its name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status
        return name


def moto_missing() -> str | None:
    """Why moto's server cannot be started here, or None."""
    import importlib.util

    for module in ("moto", "flask", "werkzeug"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install -e '.[dev]' brings moto[server]"
    return None


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """``python -m moto.server`` on a free loopback port, killed at the end."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, 30, process)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # listening is not serving yet: wait for a real answer
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield S3Server(endpoint=endpoint)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
