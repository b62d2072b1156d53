"""Throwaway PostgreSQL servers for the export tests (fixtures registered in conftest.py).

Each server lives in a temp dir (run as the postgres user when the tests run as root, as PostgreSQL refuses
root), listens on a unix socket in that dir and on 127.0.0.1 at a free port, and is stopped and removed at
the end of the session. ``pg_tls_server`` also speaks TLS with a self-signed certificate made by the
``openssl`` command, and its pg_hba.conf admits TCP connections over TLS only. Without initdb/pg_ctl (or
openssl, for TLS) the tests that need a server are skipped with the reason, never failed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_BIN = Path("/usr/local/bin")


@dataclass(frozen=True)
class PgServer:
    """A running server. `root_cert` (TLS servers only) verifies its certificate; `other_cert` does not."""

    base: Path
    port: int
    root_cert: Path | None = None
    other_cert: Path | None = None

    @property
    def socket_url(self) -> str:
        return f"postgresql:///postgres?host={self.base}&port={self.port}&user=postgres"

    @property
    def tcp_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _tool(name: str) -> str | None:
    path = shutil.which(name) or str(_BIN / name)
    return path if os.access(path, os.X_OK) else None


def _as_postgres() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


def make_certs(out: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 with its key, and an unrelated one.

    Returns:
        (server.crt, server.key, other.crt); server.crt is also the root that verifies the server.
    """
    openssl = _tool("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl not found")
    for name in ("server", "other"):
        _run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
              "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
              "-keyout", str(out / f"{name}.key"), "-out", str(out / f"{name}.crt")])
    return out / "server.crt", out / "server.key", out / "other.crt"


def start(tls: bool = False) -> tuple[PgServer | None, str, Path | None]:
    """Start a server; return (server, reason if none, its temp dir to remove)."""
    initdb, pg_ctl = _tool("initdb"), _tool("pg_ctl")
    if initdb is None or pg_ctl is None:
        return None, "initdb/pg_ctl not found", None
    if _as_postgres() and not shutil.which("runuser"):
        return None, "running as root and runuser is unavailable", None
    base = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    data, port = base / "data", _free_port()
    opts = f"-k {base} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off"
    try:
        if _as_postgres():
            base.chmod(0o755)
            shutil.chown(base, "postgres")
        _run([*_as_postgres(), initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        certs: tuple[Path, Path, Path] | None = None
        if tls:
            certs = make_certs(base)
            certs[1].chmod(0o600)  # PostgreSQL refuses a key others can read
            if _as_postgres():
                shutil.chown(certs[1], "postgres")
            (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
            opts += f" -c ssl=on -c ssl_cert_file={certs[0]} -c ssl_key_file={certs[1]}"
        _run([*_as_postgres(), pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "30", "start"])
    except (subprocess.SubprocessError, OSError, KeyError, LookupError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log = (base / "log").read_text(errors="replace")[-300:] if (base / "log").exists() else ""
        return None, f"could not start PostgreSQL: {exc} {detail.decode(errors='replace')[-300:]} {log}", base
    return PgServer(base, port, certs[0] if certs else None, certs[2] if certs else None), "", base


def stop(server: PgServer | None, base: Path | None) -> None:
    if server is not None:
        pg_ctl = _tool("pg_ctl") or "pg_ctl"
        subprocess.run([*_as_postgres(), pg_ctl, "-D", str(server.base / "data"), "-m", "immediate", "stop"], capture_output=True, timeout=60)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


def _serve(tls: bool) -> Iterator[PgServer]:
    server, reason, base = start(tls)
    try:
        if server is None:
            pytest.skip(f"PostgreSQL tests skipped: {reason}")
        yield server
    finally:
        stop(server, base)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A server without TLS (unix socket and TCP)."""
    yield from _serve(tls=False)


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """The URL of :func:`pg_server` over its unix socket."""
    return pg_server.socket_url


@pytest.fixture(scope="session")
def pg_tls_server() -> Iterator[PgServer]:
    """A server whose TCP connections must use TLS (self-signed certificate for 127.0.0.1)."""
    yield from _serve(tls=True)
