"""A throwaway PostgreSQL server on 127.0.0.1 for the tests: initdb, pg_ctl start, stop.

The binaries come from PATH or Debian's ``/usr/lib/postgresql/*/bin``. ``initdb`` and
the server refuse to run as root, so under root they run as the ``postgres`` user (or
``nobody``) in a folder handed to it. Durability is switched off: the data dies with
the test session anyway.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from ._servers import free_port

#: Set to 1 (CI does) to fail, not skip, when PostgreSQL is not installed.
ENV_REQUIRE = "MAAS_TUNE_REQUIRE_POSTGRES"
#: Superuser the cluster is created with (login by trust on loopback only).
SUPERUSER = "maas"
START_TIMEOUT_S = 60


def find_bin(name: str) -> str | None:
    """``name`` from PATH, else from the newest Debian ``/usr/lib/postgresql/N/bin``."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return candidates[-1] if candidates else None


def _run_as() -> pwd.struct_passwd | None:
    """The user to run the server as when we are root (None: ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


class PostgresServer:
    """One cluster in a temporary folder, listening on 127.0.0.1 only (no Unix socket).

    ``durable=False`` (tests) switches fsync off; benchmarks keep PostgreSQL's defaults.
    """

    def __init__(self, *, durable: bool = False) -> None:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError("initdb / pg_ctl not found in PATH or /usr/lib/postgresql")
        self._initdb, self._pg_ctl = initdb, pg_ctl
        self._user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="maas-tune-pg-"))
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
        self._names = itertools.count()
        self._admin = None
        self._durable = durable

    def _run(self, *args: str) -> None:
        ids = (
            {}
            if self._user is None
            else {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        )
        proc = subprocess.run(
            args,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
            **ids,
        )
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {proc.stdout}{proc.stderr}{tail}")

    def start(self) -> PostgresServer:
        self._run(
            self._initdb,
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=300"
        if not self._durable:  # tests: the data dies with the session anyway
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            self._pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            options,
            "start",
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url(), autocommit=True)
        name = f"test_{os.getpid()}_{next(self._names)}"
        self._admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(self._pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
