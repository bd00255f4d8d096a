"""A throwaway PostgreSQL cluster for tests, from Debian's server binaries.

``initdb`` into a fresh temporary directory, ``pg_ctl start`` with the unix socket in that
directory (no TCP listener, so parallel test runs cannot collide), and everything removed
afterwards. PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user and every server command runs through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psycopg

INSTALL_HINT = "PostgreSQL server binaries not found: run .ci/postgres.sh to install them"


class PostgresMissing(RuntimeError):
    """No ``initdb`` on this machine: the caller must fail (not skip) with the hint."""


def bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb`` and ``pg_ctl``."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        on_path = shutil.which("initdb")
        if on_path is None:
            raise PostgresMissing(INSTALL_HINT)
        return Path(on_path).parent
    return Path(max(found, key=lambda p: int(Path(p).parent.parent.name))).parent


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running cluster reachable through its unix socket."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{dbname}?host={self.root}&port={self.port}"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.root} port={self.port} user=postgres dbname={dbname}"

    def create_database(self) -> str:
        """A fresh empty database; its SQLAlchemy URL. Cheaper than a cluster per test."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.conninfo(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    result = subprocess.run(_as_postgres(command), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}")


@contextmanager
def postgres_cluster() -> Iterator[Cluster]:
    """Start a cluster, yield it, then stop it and delete its directory."""
    binaries = bin_dir()
    root = Path(tempfile.mkdtemp(prefix="greenroom-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", free_port()
    try:
        initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        _run([*initdb, "--no-sync", "--encoding=UTF8", "--locale=C"])
        options = f"-k {root} -p {port} -c listen_addresses='' -c max_connections=50"
        log = root / "server.log"
        pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data)]
        try:
            _run([*pg_ctl, "-o", options, "-l", str(log), "-w", "-t", "60", "start"])
        except RuntimeError as e:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{e}\n{tail}") from None
        try:
            yield Cluster(root, port)
        finally:
            _run([*pg_ctl, "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
