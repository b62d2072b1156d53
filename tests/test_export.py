"""Export round trips (Parquet, JSONL, CSV, DuckDB, a real PostgreSQL), atomicity, replacement, prediction.txt;
hostile input: passwords, tables that are not ours, unwritable targets, bad options, stale temp files."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from recsys import export
from recsys.data import Col
from recsys.errors import DataError, RecsysError

REQUEST, RANK, SCORE, MODEL, GENERATED = "request_id", "rank", "score", "model_id", "generated_at"


def recs(n_requests: int = 3, k: int = 4, model: str = "m1") -> pl.DataFrame:
    at = dt.datetime(2024, 5, 1, 12, 30, 15, 123456)
    rows = [
        {REQUEST: f"r{r}", Col.USER: f"u,{r}" if r else "", RANK: i + 1, Col.ITEM: f"n{(r * 7 + i) % 11}",
         SCORE: 1.0 / (i + 1) + 1e-13 * r, MODEL: model, GENERATED: at}
        for r in range(n_requests) for i in range(k)
    ]  # fmt: skip
    return pl.DataFrame(rows, schema={REQUEST: pl.String, Col.USER: pl.String, RANK: pl.Int32, Col.ITEM: pl.String,
                                      SCORE: pl.Float64, MODEL: pl.String, GENERATED: pl.Datetime("us")})


def _read_file(path: Path, like: pl.DataFrame) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix == ".csv":
        return pl.read_csv(path, schema=like.schema)
    return pl.read_ndjson(path).with_columns(pl.col(GENERATED).str.to_datetime(time_unit="us")).cast(like.schema)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_file_round_trip_and_replace(tmp_path: Path, suffix: str) -> None:
    df = recs()
    out = tmp_path / "deep" / f"recs{suffix}"
    summary = export.write(df, out)
    assert summary.rows == df.height and summary.kind in ("parquet", "jsonl", "csv")
    assert _read_file(out, df).equals(df)
    newer = recs(n_requests=2, model="m2")
    export.write(newer, out)
    assert _read_file(out, df).equals(newer)  # replaced, not appended
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left


def test_parquet_input_path_streams(tmp_path: Path) -> None:
    df = recs()
    src = tmp_path / "in.parquet"
    df.write_parquet(src)
    export.write(src, tmp_path / "out.csv")
    assert _read_file(tmp_path / "out.csv", df).equals(df)
    with pytest.raises(DataError, match="parquet"):
        export.write(tmp_path / "missing.parquet", tmp_path / "x.csv")
    with pytest.raises(RecsysError, match="unknown export format"):
        export.write(df, tmp_path / "x.xlsx")
    with pytest.raises(RecsysError, match="unknown export target"):
        export.write(df, "mysql://host/db")


def test_file_failure_leaves_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "recs.csv"
    export.write(recs(), out)
    before = out.read_bytes()

    def half_then_fail(self: pl.LazyFrame, path: Path, **kw: object) -> None:
        Path(path).write_text("request_id,user_id\nr0,")
        raise OSError("disk full")

    monkeypatch.setattr(pl.LazyFrame, "sink_csv", half_then_fail)
    with pytest.raises(RecsysError, match=f"cannot export to {out}: disk full"):
        export.write(recs(model="m2"), out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["recs.csv"]


def _duck_rows(db: Path, table: str = "recs") -> pl.DataFrame:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql(f"SELECT * FROM {table} ORDER BY request_id, rank").pl()


def _failing_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second batch of the source raises: a crash halfway through loading."""
    real = export._source

    def source(df: pl.DataFrame) -> tuple:
        schema, rows, batches = real(df)

        def gen() -> Iterator[pl.DataFrame]:
            yield next(batches)
            raise RuntimeError("crash mid-write")

        return schema, rows, gen()

    monkeypatch.setattr(export, "_source", source)


def test_duckdb_round_trip_replace_and_atomicity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "out.db"
    df = recs()
    summary = export.write(df, f"duckdb://{db}?table=recs")
    assert summary.table == "recs" and summary.rows == df.height
    assert _duck_rows(db).equals(df)
    export.write(df, f"duckdb://{db}")  # default table name, re-run
    assert _duck_rows(db).height == df.height  # replaced, not duplicated
    monkeypatch.setattr(export, "BATCH_ROWS", 5)
    _failing_batches(monkeypatch)
    with pytest.raises(RuntimeError, match="crash"):
        export.write(recs(n_requests=5, model="m2"), f"duckdb://{db}?table=recs")
    assert _duck_rows(db).equals(df)


# --- PostgreSQL: a throwaway server (tests/conftest_pg.py), reached over a unix socket ------------


def _pg_rows(url: str, table: str) -> pl.DataFrame:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT request_id, user_id, rank, item_id, score, model_id, generated_at FROM {table} ORDER BY request_id, rank")
        return pl.DataFrame(cur.fetchall(), schema=recs().schema, orient="row")


def test_postgres_round_trip_replace_and_atomicity(pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    df = recs().with_columns(pl.when(pl.col(RANK) == 2).then(None).otherwise(pl.col(Col.ITEM)).alias(Col.ITEM))
    caplog.set_level("INFO", logger="recsys.export")
    summary = export.write(df, f"{pg_url}&password=Top%23Secret2&table=public.recs")  # trust auth ignores it
    assert summary.kind == "postgresql" and summary.table == "public.recs"
    assert "password=***" in str(summary) and "password=***" in caplog.text  # the summary and the log
    assert "Secret2" not in str(summary) + caplog.text
    got = _pg_rows(pg_url, "public.recs")
    assert got.equals(df)  # nulls stay null, the empty user id stays an empty string, floats exact
    assert got[Col.USER].to_list().count("") == 4 and got[Col.ITEM].null_count() == 3
    export.write(df, f"{pg_url}&table=public.recs")
    assert _pg_rows(pg_url, "recs").height == df.height  # replaced, not duplicated
    monkeypatch.setattr(export, "BATCH_ROWS", 5)
    _failing_batches(monkeypatch)
    with pytest.raises(RuntimeError, match="crash"):
        export.write(recs(n_requests=6, model="m2"), f"{pg_url}&table=recs")
    assert _pg_rows(pg_url, "recs").equals(df)


def test_postgres_errors_are_clear(pg_url: str) -> None:
    with pytest.raises(RecsysError, match=r"export to postgresql://u:\*\*\*@"):
        export.write(recs(), "postgresql://u:secret@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(DataError, match="tags"):
        export.write(recs().with_columns(pl.lit(["a"]).alias("tags")), f"{pg_url}&table=bad")


# --- hostile input: every failure is one line, no password, nothing of yours destroyed ---------------


def _cli_error(args: list[str]) -> str:
    """Run ``recsys export ...``; assert it failed with one line; return that line."""
    result = CliRunner().invoke(main, ["export", *args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    assert result.output.count("\n") == 1, result.output
    return result.output


def test_passwords_never_leave_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "recs.parquet"
    recs().write_parquet(src)
    targets = [
        "postgresql://localhost:1/app?user=u&password=TopSecret2&table=recs",  # libpq: connection refused
        "postgresql://u:Top%23Sec%2Fret2@localhost:1/app?connect_timeout=2",  # percent-encoded # and /
        "postgresql://u:Top#Secret2@localhost:1/app?table=r",  # raw #: no "fragment" for libpq
        "postgresql://u:Top/Secret2@localhost:1/app",  # raw /: ambiguous, refused
        "postgresql://u:Top%zzSecret2@h/app",  # libpq echoes the bad token
        "postgresql:///app?host=/nonexistent&password=Top%zzSecret2",
        "mysql://u:TopSecret2@h/db",
    ]
    for target in targets:
        line = _cli_error([str(src), "--to", target])
        assert "Secret" not in line and "Sec%2F" not in line and "***" in line, line
        debug = CliRunner().invoke(main, ["--debug", "export", str(src), "--to", target])
        assert "Secret" not in "".join(traceback.format_exception(debug.exception)), target  # chained causes too
    import psycopg

    def echo(conninfo: str, **kw: object) -> None:  # a driver message quoting the URL, raw and decoded
        raise psycopg.OperationalError(f"cannot use {conninfo!r}\nhint: password 'Top#Sec/ret2' rejected")

    monkeypatch.setattr(psycopg, "connect", echo)
    line = _cli_error([str(src), "--to", "postgresql://u:Top%23Sec%2Fret2@h/app"])
    assert "Top" not in line and "postgresql://u:***@h/app" in line


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_export_never_drops_a_table_it_did_not_create(backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend == "duckdb":
        import duckdb

        db = tmp_path / "out.db"
        url = f"duckdb://{db}?table=recs"

        def run(q: str) -> list:
            with duckdb.connect(str(db)) as con:
                return con.execute(q).fetchall()

    else:
        import psycopg

        base = request.getfixturevalue("pg_url")
        url = f"{base}&table=public.recs"

        def run(q: str) -> list:
            with psycopg.connect(base) as conn, conn.cursor() as cur:
                cur.execute(q)
                return cur.fetchall() if cur.description else []

        run("DROP TABLE IF EXISTS recs, recs__staging")
    run("CREATE TABLE recs__staging (note text)")
    run("INSERT INTO recs__staging VALUES ('mine')")
    export.write(recs(), url)
    export.write(recs(), url)
    with monkeypatch.context() as m:  # even a staging name that collides fails rather than replaces
        m.setattr(export, "staging_name", lambda name: f"{name}__staging")
        with pytest.raises(RecsysError, match="already exists"):
            export.write(recs(), url)
    monkeypatch.setattr(export, "BATCH_ROWS", 5)
    _failing_batches(monkeypatch)
    with pytest.raises(RuntimeError, match="crash"):
        export.write(recs(), url)
    assert run("SELECT note FROM recs__staging") == [("mine",)]
    assert run("SELECT count(*) FROM recs") == [(recs().height,)]
    tables = run("SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'recs%'")
    assert sorted(t for (t,) in tables) == ["recs", "recs__staging"]  # no staging table left behind


def test_non_duckdb_file_is_refused_untouched(tmp_path: Path) -> None:
    src, target = tmp_path / "recs.parquet", tmp_path / "out.csv"
    recs().write_parquet(src)
    target.write_text("a,b\n1,2\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _cli_error([str(src), "--to", f"duckdb://{target}?table=recs"])
    assert "not a valid DuckDB database" in line and str(target) in line
    assert target.read_text() == "a,b\n1,2\n" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_unwritable_targets_fail_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    src = tmp_path / "recs.parquet"
    recs().write_parquet(src)
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory" in _cli_error([str(src), "--to", str(tmp_path / "dir.csv")])
    assert "is a directory" in _cli_error([str(src), "--to", f"duckdb://{tmp_path / 'dir.csv'}"])
    (tmp_path / "file").write_text("")
    assert "cannot create the directory" in _cli_error([str(src), "--to", str(tmp_path / "file" / "out.csv")])
    assert "cannot create" in _cli_error([str(src), "--to", f"duckdb://{tmp_path / 'file' / 'out.db'}"])
    held = duckdb.connect(str(tmp_path / "held.db"))  # another connection holds the file
    try:
        assert str(tmp_path / "held.db") in _cli_error([str(src), "--to", f"duckdb://{tmp_path / 'held.db'}"])
    finally:
        held.close()
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the temp file creation fail as it would

        def denied(*a: object, **kw: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert "Permission denied" in _cli_error([str(src), "--to", str(ro / "out.csv")])


def test_csv_list_columns_are_space_separated(tmp_path: Path) -> None:
    df = recs(n_requests=2, k=1).with_columns(pl.Series("history", [["n1", "n2"], []]), pl.Series("ids", [[3, 4], None]))
    out = export.write(df, tmp_path / "recs.csv")
    back = pl.read_csv(tmp_path / "recs.csv", infer_schema=False)
    assert back["history"].to_list() == ["n1 n2", ""] and back["ids"].to_list() == ["3 4", None]
    # read back as `recsys recommend` reads CSV lists
    lists = back["history"].fill_null("").str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
    assert lists.to_list() == df["history"].to_list() and out.columns == df.columns
    for bad in (pl.Series("history", [["a b"], []]), pl.Series("history", [[["x"]], []]), pl.Series("history", [[None, "x"], []])):
        with pytest.raises(DataError, match="history"):
            export.write(df.with_columns(bad), tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_table_options_are_checked(tmp_path: Path) -> None:
    src = tmp_path / "recs.parquet"
    recs().write_parquet(src)
    assert "given 2 times" in _cli_error([str(src), "--to", f"duckdb://{tmp_path / 'o.db'}?table=a&table=b"])
    assert "63" in _cli_error([str(src), "--to", "postgresql://localhost:1/db?table=" + "é" * 32])  # 64 bytes
    assert "63" in _cli_error([str(src), "--to", "postgresql://localhost:1/db?table=s." + "t" * 64])
    for bad in ("x;drop", "a.b.c", "", 'x"y'):
        assert "bad table name" in _cli_error([str(src), "--to", f"duckdb://{tmp_path / 'o.db'}?table={bad}"])
    assert not (tmp_path / "o.db").exists()


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    out, old = tmp_path / "recs.csv", time.time() - 2 * export.STALE_TEMP_SECONDS
    stale, fresh = tmp_path / ".recs.csv.k2x9_a0q.tmp", tmp_path / ".recs.csv.abcdefgh.tmp"
    others = [tmp_path / ".other.csv.k2x9_a0q.tmp", tmp_path / ".recs.csv.notes.tmp", tmp_path / "recs.csv.k2x9_a0q.tmp"]
    for p in (stale, fresh, *others):
        p.write_text("x")
    (tmp_path / ".recs.csv.dir00000.tmp").mkdir()
    (tmp_path / ".recs.csv.lnk00000.tmp").symlink_to(others[0])
    others += [tmp_path / ".recs.csv.dir00000.tmp", tmp_path / ".recs.csv.lnk00000.tmp"]
    for p in (stale, *others):
        os.utime(p, (old, old), follow_symlinks=False)
    export.write(recs(), out)
    assert not stale.exists()
    assert fresh.exists() and all(p.exists() or p.is_symlink() for p in others)


# --- MIND prediction.txt -------------------------------------------------------------------------


def test_mind_prediction_format(tmp_path: Path) -> None:
    df = pl.DataFrame(
        {
            Col.IMPRESSION: ["dev-10"] * 3 + ["dev-9"] * 2 + ["dev-100"] * 4,
            Col.POSITION: [2, 0, 1, 1, 0, 0, 1, 2, 3],
            "s": [0.9, 0.1, 0.5, 0.3, 0.3, 0.2, 0.8, 0.5, 0.8],
        }
    )
    out = export.write_mind_prediction(df, "s", tmp_path / "prediction.txt")
    # dev-10 in position order has scores 0.1, 0.5, 0.9; dev-9 ties -> position order; dev-100: 0.8 tie, earlier first
    assert out.read_text() == "9 [1,2]\n10 [3,2,1]\n100 [4,1,3,2]\n"
    with pytest.raises(DataError, match="null"):
        export.write_mind_prediction(df.with_columns(pl.lit(None, dtype=pl.Float64).alias("s")), "s", tmp_path / "p.txt")
    mixed = df.with_columns(pl.col(Col.IMPRESSION).str.replace("dev-9", "test-10"))
    with pytest.raises(DataError, match="several splits"):
        export.write_mind_prediction(mixed, "s", tmp_path / "p.txt")


def test_mind_prediction_non_numeric_ids_keep_first_appearance(tmp_path: Path) -> None:
    df = pl.DataFrame({Col.IMPRESSION: ["b", "b", "a"], "s": [0.2, 0.4, 1.0]})
    out = export.write_mind_prediction(df, "s", tmp_path / "prediction.txt")
    assert out.read_text() == "b [2,1]\na [1]\n"
