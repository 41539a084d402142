"""A real PostgreSQL server for tests and scripts, started in a temporary directory and stopped at the end.

Needs Debian's ``postgresql`` package (initdb / pg_ctl under /usr/lib/postgresql/<version>/bin). As root,
the server runs as the ``postgres`` user (initdb refuses root). :func:`pg_server` raises
:class:`PgUnavailable` with the reason when the machine cannot run one (callers skip with it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class PgUnavailable(Exception):
    """This machine cannot start a PostgreSQL server (the message says why)."""


def _bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgServer:
    url: str
    bindir: Path
    data: Path
    base: Path
    port: int
    run_as: list[str]

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-l", str(self.base / "server.log"), "-w", "-t", "60", "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-t", "60", "-m", mode, "stop")


@contextmanager
def pg_server() -> Iterator[PgServer]:
    """A fresh server (user ``parley``, trust auth on 127.0.0.1, database ``postgres``) for the block."""
    bindir = _bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise PgUnavailable("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                            "(apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pw = None
        if runuser is None or pw is None:
            shutil.rmtree(base, ignore_errors=True)
            raise PgUnavailable("running as root: initdb refuses root, and there is no 'postgres' user / runuser")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        run_as = [runuser, "-u", "postgres", "--"]
    data = base / "data"
    server = PgServer("", bindir, data, base, _free_port(), run_as)
    server.url = f"postgresql+asyncpg://parley@127.0.0.1:{server.port}/postgres"
    initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "parley", "-E", "UTF8", "--locale=C"]
    try:
        subprocess.run([*run_as, *initdb, "--no-sync"], check=True, capture_output=True, timeout=120)
        server.start()
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr.decode(errors='replace')}") from exc
    try:
        yield server
    finally:
        try:
            server.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(base, ignore_errors=True)
