"""Export round trips (Parquet, JSONL, CSV, DuckDB, a real PostgreSQL), atomicity, replacement, prediction.txt."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

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
    with pytest.raises(OSError, match="disk full"):
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
    with pytest.raises(RecsysError, match="bad table name"):
        export.write(df, f"duckdb://{db}?table=x;drop")


# --- PostgreSQL: a throwaway server in a temp dir, reached over a unix socket --------------------


def _pg_start() -> tuple[str | None, str, Path | None]:
    """Start a server; return (url, reason if none, data dir)."""
    initdb, pg_ctl = shutil.which("initdb") or "/usr/local/bin/initdb", shutil.which("pg_ctl") or "/usr/local/bin/pg_ctl"
    if not (os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK)):
        return None, "initdb/pg_ctl not found", None
    base = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        if not shutil.which("runuser"):
            return None, "running as root and runuser is unavailable", base
        prefix = ["runuser", "-u", "postgres", "--"]
        base.chmod(0o755)
        shutil.chown(base, "postgres")
    data, sock = base / "data", base
    try:
        subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=60)
        opts = f"-k {sock} -c listen_addresses='' -p 5433 -c fsync=off"
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "-t", "30", "start"], check=True, capture_output=True, timeout=60)
    except (subprocess.SubprocessError, OSError, KeyError, LookupError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        return None, f"could not start PostgreSQL: {exc} {detail.decode(errors='replace')[-300:]}", base
    return f"postgresql:///postgres?host={sock}&port=5433&user=postgres", "", base


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url, reason, base = _pg_start()
    try:
        if url is None:
            pytest.skip(f"PostgreSQL tests skipped: {reason}")
        yield url
    finally:
        if base is not None:
            if url is not None:
                prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
                subprocess.run([*prefix, shutil.which("pg_ctl") or "/usr/local/bin/pg_ctl", "-D", str(base / "data"), "-m", "immediate", "stop"], capture_output=True, timeout=60)
            shutil.rmtree(base, ignore_errors=True)


def _pg_rows(url: str, table: str) -> pl.DataFrame:
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT request_id, user_id, rank, item_id, score, model_id, generated_at FROM {table} ORDER BY request_id, rank")
        return pl.DataFrame(cur.fetchall(), schema=recs().schema, orient="row")


def test_postgres_round_trip_replace_and_atomicity(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    df = recs().with_columns(pl.when(pl.col(RANK) == 2).then(None).otherwise(pl.col(Col.ITEM)).alias(Col.ITEM))
    summary = export.write(df, f"{pg_url}&table=public.recs")
    assert summary.kind == "postgresql" and summary.table == "public.recs"
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
