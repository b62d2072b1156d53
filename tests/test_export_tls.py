"""PostgreSQL exports over TLS, against local servers (tests/conftest_pg.py): one with a self-signed
certificate that admits TCP clients over TLS only, one without TLS. ``sslmode`` reaches libpq as written;
what the server cannot do is refused in one line; a remote host without enforced TLS is warned about."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import psycopg
import pytest
from click.testing import CliRunner

from cli import main
from conftest_pg import PgServer
from recsys import export
from recsys.errors import RecsysError
from recsys.export_target import parse, redact, tls_warning

SSL_OF_SESSION = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def recs() -> pl.DataFrame:
    return pl.DataFrame({"request_id": ["r1", "r1", "r2"], "user_id": ["u1", "u1", "u2"], "rank": [1, 2, 1], "item_id": ["a", "b", "a"]})


@pytest.fixture
def export_sessions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, str | None]]:
    """What the server says about each connection the export opens: (ssl, TLS version)."""
    seen: list[tuple[bool, str | None]] = []
    real: Callable[..., psycopg.Connection] = psycopg.connect

    def spy(*args: object, **kw: object) -> psycopg.Connection:
        conn = real(*args, **kw)
        seen.append(conn.execute(SSL_OF_SESSION).fetchone())  # type: ignore[arg-type]
        return conn

    monkeypatch.setattr(psycopg, "connect", spy)
    return seen


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    return result.output


def _tables(server: PgServer) -> list[str]:
    with psycopg.connect(server.socket_url) as conn:
        return [t for (t,) in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]


def test_sslmode_require_and_verify_export_over_tls(pg_tls_server: PgServer, export_sessions: list) -> None:
    root = pg_tls_server.root_cert
    modes = ["sslmode=require", f"sslmode=verify-ca&sslrootcert={root}", f"sslmode=verify-full&sslrootcert={root}"]
    for i, mode in enumerate(modes):
        summary = export.write(recs(), f"{pg_tls_server.tcp_url}?{mode}&table=tls{i}")
        assert summary.rows == 3
        ssl, version = export_sessions[-1]
        assert ssl is True and version and version.startswith("TLS"), (mode, version)
        with psycopg.Connection.connect(f"{pg_tls_server.tcp_url}?{mode}") as conn:  # not through the spy
            assert conn.execute(f"SELECT count(*) FROM tls{i}").fetchone() == (3,)
    assert len(export_sessions) == len(modes)
    # The fixture really demands TLS: a plain-text TCP client is turned away by the server.
    with pytest.raises(RecsysError, match="no encryption"):
        export.write(recs(), f"{pg_tls_server.tcp_url}?sslmode=disable&table=plain")
    assert "plain" not in _tables(pg_tls_server)


def test_require_against_a_server_without_tls_is_refused(pg_server: PgServer, tmp_path: Path) -> None:
    src = tmp_path / "recs.parquet"
    recs().write_parquet(src)
    url = pg_server.tcp_url.replace("postgres@", "postgres:Top%23Secret2@") + "?sslmode=require&table=refused"
    line = _one_line_error([str(src), "--to", url])
    assert "server does not support SSL, but SSL was required" in line, line
    assert "Secret" not in line and "postgres:***@127.0.0.1" in line
    assert "refused" not in _tables(pg_server)  # nothing was written
    export.write(src, pg_server.tcp_url + "?table=plain_ok")  # the same server without sslmode: libpq's prefer
    assert "plain_ok" in _tables(pg_server)


def test_verify_full_with_the_wrong_root_certificate_fails(pg_tls_server: PgServer, tmp_path: Path) -> None:
    src = tmp_path / "recs.parquet"
    recs().write_parquet(src)
    wrong = f"{pg_tls_server.tcp_url}?sslmode=verify-full&sslrootcert={pg_tls_server.other_cert}&sslpassword=Top%23Secret2&table=wrong"
    line = _one_line_error([str(src), "--to", wrong])
    assert "certificate verify failed" in line and "Secret" not in line and "sslpassword=***" in line, line
    missing = f"{pg_tls_server.tcp_url}?sslmode=verify-full&sslrootcert={tmp_path / 'none.crt'}&table=wrong"
    assert "none.crt" in _one_line_error([str(src), "--to", missing])
    assert "wrong" not in _tables(pg_tls_server)


@pytest.mark.parametrize(
    ("url", "env", "warned"),
    [
        ("postgresql://u@db.example.com/app", {}, "db.example.com"),
        ("postgresql://u@db.example.com:5432/app?sslmode=prefer", {}, "db.example.com"),
        ("postgresql://u@[2001:db8::1]:5432/app?sslmode=allow", {}, "2001:db8::1"),
        ("postgresql://u@localhost,db2:5433/app", {}, "db2"),
        ("postgresql://u@localhost/app?hostaddr=10.1.2.3", {}, "10.1.2.3"),
        ("postgresql:///app", {"PGHOST": "db.example.com"}, "db.example.com"),
        ("postgresql://u@db.example.com/app?sslmode=require", {}, None),
        ("postgresql://u@db.example.com/app?sslmode=verify-full&sslrootcert=ca.crt", {}, None),
        ("postgresql://u@db.example.com/app", {"PGSSLMODE": "verify-ca"}, None),
        ("postgresql://u@localhost:5432/app", {}, None),
        ("postgresql://u@127.0.0.1/app", {}, None),
        ("postgresql://u@[::1]/app", {}, None),
        ("postgresql:///app?host=/var/run/postgresql", {}, None),
        ("postgresql://%2Fvar%2Frun%2Fpostgresql/app", {}, None),
        ("postgresql:///app", {}, None),
        ("duckdb:///tmp/x.db", {}, None),
    ],
)
def test_tls_warning_for_remote_hosts(url: str, env: dict[str, str], warned: str | None) -> None:
    warning = tls_warning(parse(url), env)
    if warned is None:
        assert warning is None, warning
    else:
        assert warning is not None and f"exporting to {warned} with sslmode=" in warning and "\n" not in warning


def test_export_logs_the_tls_warning_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def refused(conninfo: str, **kw: object) -> None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(psycopg, "connect", refused)
    monkeypatch.delenv("PGSSLMODE", raising=False)
    caplog.set_level("WARNING", logger="recsys.export")
    for url, expected in (("postgresql://u:TopSecret2@db.example.com/app", 1), ("postgresql://u:TopSecret2@db.example.com/app?sslmode=require", 0)):
        caplog.clear()
        with pytest.raises(RecsysError, match="connection refused"):
            export.write(recs(), url)
        assert caplog.text.count("sslmode=prefer") == expected and "Secret" not in caplog.text


def test_sslpassword_is_hidden_like_a_password() -> None:
    url = "postgresql://u@h/app?sslcert=c.crt&sslkey=c.key&sslpassword=Top%23Secret2"
    assert redact(url) == "postgresql://u@h/app?sslcert=c.crt&sslkey=c.key&sslpassword=***"
    assert "Top#Secret2" in parse(url).secrets and parse(url).hide("bad key Top#Secret2") == "bad key ***"
