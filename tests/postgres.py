"""A throw-away PostgreSQL server for tests: initdb in a temporary folder, a free localhost port, stopped after.

``initdb`` and ``postgres`` refuse to run as root, so under root the server runs as the unprivileged
user the Debian package creates (``postgres``; ``QSNN_PG_USER`` overrides). The binaries are found in
``QSNN_PG_BIN``, ``/usr/lib/postgresql/<version>/bin`` (Debian) or on PATH; ``make install`` installs
Debian's ``postgresql`` when missing. The server trusts local connections (it listens on 127.0.0.1
only, on a port nobody else uses, and lives as long as the test session).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "qsnn"


def find_bin() -> Path | None:
    """The folder holding initdb and postgres, or None."""
    env = os.environ.get("QSNN_PG_BIN")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(p).parent
        for p in sorted(
            glob.glob("/usr/lib/postgresql/*/bin/initdb"),
            key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
            reverse=True,
        )
    ]
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "postgres").is_file():
            return c
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    port: int
    root: Path
    proc: subprocess.Popen
    start_s: float
    stop_s: float | None = None
    databases: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres", driver: str = "") -> str:
        """``postgresql://qsnn@127.0.0.1:PORT/DATABASE`` (``driver="+psycopg"`` names the driver)."""
        return f"postgresql{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh database; returns its plain ``postgresql://`` URL (the form a user writes)."""
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)


@contextmanager
def postgres_server(timeout: float = 60.0):
    """Start a PostgreSQL server (as an unprivileged user under root); yield a :class:`Server`; stop it."""
    bindir = find_bin()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL's initdb/postgres not found: `make install` installs Debian's postgresql "
            "(as root), or set QSNN_PG_BIN to the folder holding them"
        )
    root = Path(tempfile.mkdtemp(prefix="qsnn-pg-"))
    as_user: dict = {}
    if os.geteuid() == 0:
        user = pwd.getpwnam(os.environ.get("QSNN_PG_USER", "postgres"))
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
    t0 = time.perf_counter()
    proc = None
    try:
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            **as_user,
        )
        for _attempt in range(5):  # the port is free when chosen; another process may take it first
            port = _free_port()
            log = open(root / "server.log", "ab")
            proc = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(root / "data"),
                    "-p",
                    str(port),
                    "-k",
                    str(root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=50",
                ],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                **as_user,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while proc.poll() is None and not _port_open(port) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None and _port_open(port):
                break
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        else:
            raise RuntimeError(f"PostgreSQL did not start: {(root / 'server.log').read_text()[-2000:]}")
        server = Server(port=port, root=root, proc=proc, start_s=time.perf_counter() - t0)
        yield server
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGINT)  # "fast" shutdown: roll back open transactions, close connections
        proc.wait(timeout=timeout)
        server.stop_s = time.perf_counter() - t1
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
