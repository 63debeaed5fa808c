"""A throw-away PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` into a fresh temporary directory, starts the server with
``pg_ctl`` (unix socket in that directory, TCP on 127.0.0.1 only, on a free port, with the
durability settings switched off for speed), creates the database ``diskledger_test`` and hands out
SQLAlchemy URLs. ``stop()`` shuts down exactly that server, via its data directory and pid file,
and removes the temporary directory::

    with PostgresServer() as server:
        engine = sqlalchemy.create_engine(server.url)
        other_url = server.fresh_database("migrations_test")

PostgreSQL refuses to run as root, so when this process is root the server binaries run as the
``postgres`` system user (through ``runuser``) on a directory that user owns. If the binaries
cannot be found, ``start()`` raises :class:`PostgresUnavailable`; any other failure to start raises
:class:`PostgresStartError` with the tail of the server log.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = [
    "DEFAULT_DATABASE",
    "PostgresServer",
    "PostgresServerError",
    "PostgresStartError",
    "PostgresUnavailable",
    "find_bindir",
    "pid_alive",
]

DEFAULT_DATABASE = "diskledger_test"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"
"""The system account the server runs as when this process is root."""

_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
_INSTALL_HINT = (
    "install the `postgresql` package (`apt-get install postgresql` on Debian/Ubuntu, "
    "or run scripts/bootstrap.sh)"
)
_DB_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_LOG_TAIL_LINES = 40
_PORT_ATTEMPTS = 3
# A unix socket path (``<dir>/.s.PGSQL.<port>``) must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_DIR_LEN = 80


class PostgresServerError(RuntimeError):
    """Base class for the errors of :class:`PostgresServer`."""


class PostgresUnavailable(PostgresServerError):
    """PostgreSQL (or what is needed to run it here) is not installed."""


class PostgresStartError(PostgresServerError):
    """PostgreSQL is installed but the throw-away server could not be set up or started."""


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Prefers Debian's ``/usr/lib/postgresql/<highest version>/bin``, then the directory of
    ``initdb`` on ``PATH``. Raises :class:`PostgresUnavailable` if neither has all three.
    """
    versions: list[tuple[tuple[int, ...], Path]] = []
    if _DEBIAN_ROOT.is_dir():
        for entry in _DEBIAN_ROOT.iterdir():
            try:
                key = tuple(int(part) for part in entry.name.split("."))
            except ValueError:
                continue
            if _has_binaries(entry / "bin"):
                versions.append((key, entry / "bin"))
    if versions:
        return max(versions)[1]
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if _has_binaries(bindir):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in "
        f"{_DEBIAN_ROOT}/<version>/bin nor on PATH; {_INSTALL_HINT}"
    )


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _REQUIRED_BINARIES)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    # The state is the first field after the parenthesised command name.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no server log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


class PostgresServer:
    """A throw-away PostgreSQL cluster in a temporary directory; see the module docstring."""

    def __init__(
        self,
        *,
        bindir: Path | None = None,
        startup_timeout: int = 60,
        shared_buffers: str = "16MB",
        listen_addresses: str = "127.0.0.1",
        hba_networks: Sequence[str] = (),
        command_prefix: Sequence[str] = (),
    ) -> None:
        """``listen_addresses``, ``hba_networks`` (CIDRs allowed in by TCP with ``trust``) and
        ``command_prefix`` (e.g. ``ip netns exec NS``, put before every server command, so that
        the server runs in that network namespace) serve the multi-host rig (tests/multihost)."""
        self._listen_addresses = listen_addresses
        self._hba_networks = tuple(hba_networks)
        self._command_prefix = tuple(command_prefix)
        self._bindir_override = bindir
        self._startup_timeout = startup_timeout
        self._shared_buffers = shared_buffers
        self._bindir: Path | None = None
        self._tmpdir: Path | None = None
        self._port: int | None = None
        self._pid: int | None = None
        self._as_postgres = False
        self._runuser: str | None = None
        self._env: dict[str, str] = {}

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- properties --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._pid is not None

    @property
    def tmpdir(self) -> Path:
        """The temporary directory: data dir, server log and the unix socket live in it."""
        if self._tmpdir is None:
            raise PostgresServerError("the PostgreSQL server has not been started")
        return self._tmpdir

    @property
    def socket_dir(self) -> Path:
        return self.tmpdir

    @property
    def data_dir(self) -> Path:
        return self.tmpdir / "data"

    @property
    def log_path(self) -> Path:
        return self.tmpdir / "server.log"

    @property
    def port(self) -> int:
        self._require_running()
        assert self._port is not None
        return self._port

    @property
    def pid(self) -> int:
        """The pid of the postmaster, as read from ``postmaster.pid`` after it started."""
        self._require_running()
        assert self._pid is not None
        return self._pid

    @property
    def major_version(self) -> int:
        """The major version of the cluster (from ``PG_VERSION`` in the data dir)."""
        return int((self.data_dir / "PG_VERSION").read_text().strip().split(".")[0])

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3, unix socket) of the database ``diskledger_test``."""
        return self.url_for(DEFAULT_DATABASE)

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3, unix socket) of database ``dbname`` on this server."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql+psycopg://{SUPERUSER}@/{quote(dbname)}?host={host}&port={self.port}"

    def connect(
        self, dbname: str = DEFAULT_DATABASE, *, autocommit: bool = False
    ) -> psycopg.Connection[TupleRow]:
        """A plain psycopg connection (unix socket) to ``dbname`` as the superuser ``postgres``."""
        self._require_running()
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            connect_timeout=10,
            autocommit=autocommit,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """initdb, start the server and create ``diskledger_test``; clean up if any step fails."""
        if self._tmpdir is not None:
            raise PostgresServerError("this PostgresServer has already been started")
        self._bindir = self._bindir_override or find_bindir()
        if self._bindir_override is not None and not _has_binaries(self._bindir):
            raise PostgresUnavailable(
                f"{self._bindir} lacks one of {', '.join(_REQUIRED_BINARIES)}; {_INSTALL_HINT}"
            )
        owner = self._prepare_identity()
        self._tmpdir = self._make_tmpdir(owner)
        atexit.register(self.stop)
        try:
            self._initdb()
            self._start_server()
            self.fresh_database(DEFAULT_DATABASE)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server (``pg_ctl -m immediate``) and delete the temporary directory.

        Idempotent. Only the server started by this object is touched: ``pg_ctl`` finds it
        through the data directory's ``postmaster.pid``.
        """
        tmpdir = self._tmpdir
        if tmpdir is None:
            return
        try:
            self._shutdown()
        finally:
            atexit.unregister(self.stop)
            self._tmpdir = None
            self._pid = None
            self._port = None
            shutil.rmtree(tmpdir, ignore_errors=True)
            if tmpdir.exists():  # e.g. a straggler wrote into it during the first pass
                shutil.rmtree(tmpdir)

    def fresh_database(self, name: str) -> str:
        """(Re)create an empty database ``name`` on this server and return its URL.

        ``name`` must be a lower-case SQL identifier (``[a-z_][a-z0-9_]*``, at most 63 bytes).
        An existing database of that name is dropped first, terminating its connections.
        """
        if not _DB_NAME_RE.fullmatch(name):
            raise ValueError(
                f"database name {name!r} must match [a-z_][a-z0-9_]* and be at most 63 bytes"
            )
        ident = sql.Identifier(name)
        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(ident)
            )
        return self.url_for(name)

    # -- internals ---------------------------------------------------------------------------

    def _require_running(self) -> None:
        if self._tmpdir is None or self._port is None:
            raise PostgresServerError("the PostgreSQL server is not running")

    def _prepare_identity(self) -> pwd.struct_passwd | None:
        """Decide who runs the binaries; return the ``postgres`` account when we are root."""
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._env["TZ"] = "UTC"
        if os.geteuid() != 0:
            self._as_postgres = False
            return None
        try:
            account = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root, but there is no `{SYSTEM_USER}` system user to run "
                f"PostgreSQL as; {_INSTALL_HINT}"
            ) from None
        runuser = shutil.which("runuser") or (
            "/usr/sbin/runuser" if os.access("/usr/sbin/runuser", os.X_OK) else None
        )
        if runuser is None:
            raise PostgresUnavailable(
                "running as root, but `runuser` (package util-linux) is missing, so PostgreSQL "
                f"cannot be run as the `{SYSTEM_USER}` user"
            )
        self._as_postgres = True
        self._runuser = runuser
        return account

    @staticmethod
    def _make_tmpdir(owner: pwd.struct_passwd | None) -> Path:
        # As root: under /tmp, which the postgres user can traverse (TMPDIR might be under /root).
        # Otherwise the usual temp dir, unless its path is too long for a unix socket.
        base: str | None = "/tmp" if owner is not None else None
        if base is None and len(tempfile.gettempdir()) > _MAX_SOCKET_DIR_LEN - 30:
            base = "/tmp"
        path = Path(tempfile.mkdtemp(prefix="diskledger-pg-", dir=base))
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        return path

    def _command(self, args: Sequence[str]) -> list[str]:
        if self._as_postgres:
            assert self._runuser is not None
            return [*self._command_prefix, self._runuser, "-u", SYSTEM_USER, "--", *args]
        return [*self._command_prefix, *args]

    def _run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(args),
            cwd=self.tmpdir,
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _bin(self, name: str) -> str:
        assert self._bindir is not None
        return str(self._bindir / name)

    def _initdb(self) -> None:
        args = [
            self._bin("initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "--no-sync",
            "-E",
            "UTF8",
            "--no-locale",
        ]
        result = self._run(args, timeout=120)
        if result.returncode != 0:
            raise PostgresStartError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Added by tests/support/postgres.py\ninclude = 'diskledger.conf'\n")
        if self._hba_networks:
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in self._hba_networks)

    def _write_settings(self, port: int) -> None:
        settings = {
            "listen_addresses": _conf_quote(self._listen_addresses),
            "port": str(port),
            "unix_socket_directories": _conf_quote(str(self.socket_dir)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": _conf_quote(self._shared_buffers),
            # What docs/multihost.md ("PostgreSQL settings") requires of a production server, so
            # that the tests run against it: a session idle in a transaction (a stalled writer
            # holding the ledger_head lock) is ended, and a vanished client is noticed in seconds.
            "idle_in_transaction_session_timeout": _conf_quote("10s"),
            "tcp_keepalives_idle": "5",
            "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3",
            "tcp_user_timeout": _conf_quote("10s"),
            "client_connection_check_interval": _conf_quote("2s"),
        }
        path = self.data_dir / "diskledger.conf"
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        if self._as_postgres:
            account = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _start_server(self) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = _free_port()
            self._write_settings(port)
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            args = [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(self._startup_timeout),
                "start",
            ]
            try:
                result = self._run(args, timeout=self._startup_timeout + 30)
            except subprocess.TimeoutExpired as exc:
                raise PostgresStartError(
                    f"pg_ctl start did not return within {exc.timeout} s; server log:\n"
                    f"{_tail(self.log_path, log_offset)}"
                ) from None
            log_tail = _tail(self.log_path, log_offset)
            if result.returncode == 0:
                self._port = port
                self._pid = self._read_pid_file()
                if self._pid is None:
                    raise PostgresStartError(
                        f"pg_ctl reported success but {self.data_dir}/postmaster.pid is "
                        f"missing; server log:\n{log_tail}"
                    )
                return
            # Another process may have grabbed the port between _free_port() and the bind.
            if "Address already in use" in log_tail and attempt < _PORT_ATTEMPTS:
                continue
            raise PostgresStartError(
                f"PostgreSQL failed to start (pg_ctl exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n"
                f"--- last lines of {self.log_path} ---\n{log_tail}"
            )

    def _read_pid_file(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first_line)
        except (OSError, ValueError):
            return None

    def _is_our_postmaster(self, pid: int) -> bool:
        """Guard against pid reuse: is ``pid`` a postgres process on our data directory?"""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return os.fsencode(self.data_dir) in argv

    def _shutdown(self) -> None:
        pid = self._pid or self._read_pid_file()
        if (self.data_dir / "postmaster.pid").exists() and self._bindir is not None:
            args = [self._bin("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w"]
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._run([*args, "-t", "30", "stop"], timeout=60)
        if pid is None:
            return
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid) and self._is_our_postmaster(pid):
            # pg_ctl could not stop it: kill the postmaster we started, by its pid.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
