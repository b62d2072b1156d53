"""``recsys export --pseudonymise-users``: every target gets hex(HMAC-SHA256(key, user_id)) instead of the id,
a downstream system with the key joins back to the raw ids, the key goes nowhere, and a missing key
stops the export before anything is written."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from recsys import export
from recsys.data import Col
from recsys.errors import DataError, RecsysError
from recsys.pseudonym import DEFAULT_KEY_ENV, MIN_KEY_BYTES, PseudonymKey

KEY = "k3y-Only-Downstream-Knows-7f1e"  # distinctive, so a grep for it cannot match by chance
TARGETS = ("parquet", "jsonl", "csv", "duckdb", "postgresql")


def recs() -> pl.DataFrame:
    users = ["cust-17", "cust-17", "cust-4", "cust-4", "", "", None, None, "ü-9", "ü-9"]
    return pl.DataFrame({"request_id": [f"r{i // 2}" for i in range(10)], Col.USER: users, "rank": [1, 2] * 5,
                         Col.ITEM: list("abcdeabcde")})


def pseudonym(user_id: str | None, key: str = KEY) -> str | None:
    """What a downstream system computes: the recipe of recsys/pseudonym.py's docstring, re-typed."""
    return None if user_id is None else hmac.new(key.encode(), user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _target(kind: str, tmp_path: Path, request: pytest.FixtureRequest, table: str) -> str:
    if kind == "duckdb":
        return f"duckdb://{tmp_path / 'out.db'}?table={table}"
    if kind == "postgresql":
        return f"{request.getfixturevalue('pg_url')}&table={table}"
    return str(tmp_path / f"{table}.{kind}")


def _read(kind: str, target: str) -> pl.DataFrame:
    if kind in ("parquet", "jsonl", "csv"):
        read = {"parquet": pl.read_parquet, "jsonl": pl.read_ndjson, "csv": lambda p: pl.read_csv(p, infer_schema=False)}[kind]
        df = read(target)
    elif kind == "duckdb":
        import duckdb

        path, table = target.removeprefix("duckdb://").split("?table=")
        with duckdb.connect(path, read_only=True) as con:
            df = con.sql(f"SELECT * FROM {table}").pl()
    else:
        import psycopg

        url, table = target.rsplit("&table=", 1)
        with psycopg.connect(url) as conn:
            cur = conn.execute(f"SELECT request_id, user_id, rank, item_id FROM {table}")
            df = pl.DataFrame(cur.fetchall(), schema=recs().schema, orient="row")
    return df.with_columns(pl.col("rank").cast(pl.Int64()), pl.col(Col.USER).cast(pl.String())).sort("request_id", "rank")


def _export(args: list[str], env: dict[str, str]) -> str:
    result = CliRunner(env=env).invoke(main, ["-v", "export", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("kind", TARGETS)
def test_every_target_pseudonymises_and_downstream_joins_back(kind: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "recs.parquet"
    raw = recs()
    raw.write_parquet(src)
    hashed_target, plain_target = _target(kind, tmp_path, request, "hashed"), _target(kind, tmp_path, request, "plain")
    out = _export([str(src), "--to", hashed_target, "--pseudonymise-users"], {DEFAULT_KEY_ENV: KEY})
    assert f"user ids pseudonymised with the key in {DEFAULT_KEY_ENV}" in out
    _export([str(src), "--to", plain_target], {DEFAULT_KEY_ENV: KEY})
    hashed, plain = _read(kind, hashed_target), _read(kind, plain_target)
    raw = raw.sort("request_id", "rank")
    assert plain.equals(raw)  # without the flag the ids are as they were
    # Downstream, with the key: hash each raw id and join the export back on the pseudonym.
    lookup = raw.select(pl.col(Col.USER).alias("raw")).unique().drop_nulls().with_columns(
        pl.col("raw").map_elements(pseudonym, return_dtype=pl.String()).alias(Col.USER))
    back = hashed.join(lookup, on=Col.USER, how="left").sort("request_id", "rank")
    assert back["raw"].to_list() == raw[Col.USER].to_list()  # every id, the empty one too; null stays null
    assert hashed.drop(Col.USER).equals(plain.drop(Col.USER))  # nothing else changed
    assert not set(hashed[Col.USER]) & set(raw[Col.USER]) - {None}  # no raw id survives
    # The key went nowhere: not in the output, not in the log, not in what the command printed.
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != src]
    assert (written or kind == "postgresql") and not any(KEY.encode() in b for b in written)
    assert KEY not in caplog.text + out + hashed.write_csv()


def test_downstream_join_in_postgresql(pg_url: str, tmp_path: Path) -> None:
    """The recipe in SQL (pgcrypto's hmac), as a warehouse holding the key would run it."""
    import psycopg

    export.write(recs(), f"{pg_url}&table=raw_recs")
    export.write(recs(), f"{pg_url}&table=pseudo_recs", pseudonym=PseudonymKey("K", KEY.encode()))
    with psycopg.connect(pg_url) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        except psycopg.Error as exc:
            pytest.skip(f"pgcrypto is not installed with this PostgreSQL: {exc}")
        joined = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE r.user_id = '') FROM pseudo_recs p JOIN raw_recs r "
            "ON p.request_id = r.request_id AND p.rank = r.rank AND p.user_id = encode(hmac(r.user_id, %s, 'sha256'), 'hex')",
            [KEY],
        ).fetchone()
    assert joined == (8, 2)  # every non-null id joins back, the empty one included


def test_api_streams_a_parquet_file_and_other_keys_differ(tmp_path: Path) -> None:
    src = tmp_path / "recs.parquet"
    recs().with_columns(pl.col(Col.USER).cast(pl.Categorical())).write_parquet(src)
    a = export.write(src, tmp_path / "a.parquet", pseudonym=PseudonymKey("A", KEY.encode()))
    export.write(recs(), tmp_path / "b.parquet", pseudonym=PseudonymKey("B", (KEY + "x").encode()))
    ids_a, ids_b = pl.read_parquet(tmp_path / "a.parquet")[Col.USER], pl.read_parquet(tmp_path / "b.parquet")[Col.USER]
    assert ids_a.to_list() == [pseudonym(u) for u in recs()[Col.USER].to_list()]
    assert ids_a.n_unique() == ids_b.n_unique() == 5 and not set(ids_a.drop_nulls()) & set(ids_b.drop_nulls())
    assert a.pseudonym_key_env == "A" and "key in A" in str(a) and KEY not in repr(PseudonymKey("A", KEY.encode()))
    numbers = pl.DataFrame({Col.USER: [17, None], "rank": [1, 2]})  # integer ids are hashed as their decimal text
    export.write(numbers, tmp_path / "n.csv", pseudonym=PseudonymKey("A", KEY.encode()))
    assert pl.read_csv(tmp_path / "n.csv")[Col.USER].to_list() == [pseudonym("17"), None]
    with pytest.raises(DataError, match="user_id.*missing"):
        export.write(recs().drop(Col.USER), tmp_path / "x.csv", pseudonym=PseudonymKey("A", KEY.encode()))
    with pytest.raises(DataError, match="only text or integer"):
        export.write(recs().with_columns(pl.lit([1]).alias(Col.USER)), tmp_path / "x.csv", pseudonym=PseudonymKey("A", KEY.encode()))
    assert not (tmp_path / "x.csv").exists()


def test_a_missing_or_weak_key_stops_before_anything_is_written(tmp_path: Path) -> None:
    src, out = tmp_path / "recs.parquet", tmp_path / "out.csv"
    recs().write_parquet(src)
    short = "s" * (MIN_KEY_BYTES - 1)
    cases = [({}, [], DEFAULT_KEY_ENV), ({DEFAULT_KEY_ENV: ""}, [], "unset or empty"), ({DEFAULT_KEY_ENV: short}, [], "15 bytes"),
             ({DEFAULT_KEY_ENV: KEY}, ["--key-env", "WAREHOUSE_KEY"], "WAREHOUSE_KEY")]
    for env, extra, message in cases:
        result = CliRunner(env={"WAREHOUSE_KEY": None, **env}).invoke(main, ["export", str(src), "--to", str(out), "--pseudonymise-users", *extra])
        assert result.exit_code == 1 and result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        assert message in result.output and short not in result.output and KEY not in result.output
        assert not out.exists()
    result = CliRunner().invoke(main, ["export", str(src), "--to", str(out), "--key-env", "WAREHOUSE_KEY"])
    assert result.exit_code == 1 and "only with --pseudonymise-users" in result.output and not out.exists()
    _export([str(src), "--to", str(out), "--pseudonymise-users", "--key-env", "WAREHOUSE_KEY"], {"WAREHOUSE_KEY": KEY + "2"})
    assert pl.read_csv(out)[Col.USER][0] == pseudonym("cust-17", KEY + "2")
    with pytest.raises(RecsysError, match="NOPE"):
        PseudonymKey.from_env("NOPE")


def test_doctests_pass() -> None:
    import doctest

    from recsys import pseudonym as module

    result = doctest.testmod(module)
    assert result.attempted >= 1 and result.failed == 0
