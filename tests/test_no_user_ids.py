"""Reports and logs carry aggregates, never raw user ids: a small shop job (ingest with rejects, train,
evaluate, recommend, export) runs through the CLI with every log record captured at DEBUG, and neither
the logs, what the commands print, nor any report or metadata file they write holds a user id; the
loaders' one-line errors name file, row and field but not the id."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from conftest_shop import NAME, sequences, write_unisrec
from conftest_text import make_tiny_encoder, small_toml
from recsys.data import Col

# Ids no report could print by chance (no number, metric or hash looks like this), found as whole words.
USER_ID = re.compile(r"\bpers\d+on\b")
TEXT_FILES = (".md", ".json", ".txt", ".csv", ".toml", ".log")


def _person(user: pl.Expr) -> pl.Expr:
    return pl.format("pers{}on", user.str.strip_chars_start("U"))


def _cli(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def _shop_csvs(root: Path) -> tuple[Path, Path]:
    """A synthetic shop with user ids like ``pers12on``, as CSV, with two bad event lines."""
    _cli("synth", root / "shop", "--kind", "shop", "--users", "150", "--items", "60", "--events", "3000")
    items, events = root / "items.csv", root / "events.csv"
    pl.read_parquet(root / "shop" / "items.parquet").drop(Col.TAGS, strict=False).write_csv(items)
    pl.read_parquet(root / "shop" / "events.parquet").with_columns(_person(pl.col(Col.USER))).write_csv(events)
    with events.open("a") as f:  # a bad time and a broken quote, each on a line holding a user id
        f.write("pers9001on,P1,not-a-time\npers9002on,\"P2,2024-03-02T10:00:00\n")
    return items, events


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("privacy")
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        items, events = _shop_csvs(root)
        printed = [_cli("ingest", "events", "--items", items, "--events", events, "--out", root / "data", "--test-fraction", "0.1", "--skip-bad-rows")]
        encoder = make_tiny_encoder(root / "encoder")
        (root / "small.toml").write_text(small_toml(encoder) + "\n[retrieval]\nper_source = 8\n")
        printed.append(_cli("-v", "train", root / "data", "--out", root / "model", "--config", root / "small.toml", "--frozen"))
        printed.append(_cli("-v", "evaluate", root / "model", "--split", "test", "--report", root / "report"))
        users = pl.read_parquet(root / "data" / "impressions.parquet")[Col.USER].unique().sort()
        pl.DataFrame({Col.USER: users.head(8)}).write_csv(root / "requests.csv")
        printed.append(_cli("-v", "recommend", root / "model", root / "requests.csv", "--out", root / "recs.parquet"))
        printed.append(_cli("-v", "export", root / "recs.parquet", "--to", root / "recs.csv"))
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    return {"root": root, "users": set(users.to_list()), "logs": "\n".join(handler.lines), "printed": "\n".join(printed)}


class _Collect(logging.Handler):
    """Every record of every logger, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


def test_no_user_id_in_logs_output_or_reports(job: dict) -> None:
    root: Path = job["root"]
    assert len(job["users"]) > 100 and all(USER_ID.fullmatch(u) for u in job["users"])
    assert "stage" in job["logs"] and "report:" in job["printed"]  # the capture saw the job
    written = [p for d in ("report", "model", "data") for p in (root / d).rglob("*") if p.is_file() and p.suffix in TEXT_FILES]
    assert {"report.md", "metrics.json", "model.json", "manifest.json"} <= {p.name for p in written}
    for name, text in [("logs", job["logs"]), ("printed", job["printed"])] + [(str(p), p.read_text(errors="replace")) for p in written]:
        leaked = set(USER_ID.findall(text))
        assert not leaked, f"{name} shows user ids {sorted(leaked)[:5]}"
    assert set(USER_ID.findall((root / "recs.csv").read_text())) <= job["users"]  # the grep finds ids where they belong
    assert USER_ID.findall((root / "recs.csv").read_text())


def test_bad_rows_are_named_without_the_user_id(job: dict, tmp_path: Path) -> None:
    root: Path = job["root"]
    rejects = pl.read_parquet(root / "data" / "rejects.parquet")
    assert sorted(rejects["line"]) == [3002, 3003]  # skipped and counted; the rejects keep the lines themselves
    ingest = ("ingest", "events", "--items", root / "items.csv", "--out", tmp_path / "data")
    (tmp_path / "quote.csv").write_text("user_id,item_id,timestamp\npers1on,P1,2024-03-01T10:00:00\npers9002on,\"P2,2024-03-02T10:00:00\n")
    line = _cli(*ingest, "--events", tmp_path / "quote.csv", code=1)
    assert "quote.csv, row 3, field 'item_id'" in line and "pers9002on" not in line and line.count("\n") == 1, line
    src = write_unisrec(tmp_path / "src", sequences(n_users=5, n_items=12), 12)
    users = src / f"{NAME}.user2index"
    users.write_text(users.read_text() + "pers4on\t7\n" + "pers4on\t8\n")
    line = _cli("ingest", "amazon", src, "--out", tmp_path / "amazon", code=1)
    assert "user2index, row 7, field 'user_id'" in line and "pers4on" not in line, line


def test_messages_quote_values_but_not_user_ids() -> None:
    import doctest

    from recsys import data

    result = doctest.testmod(data)
    assert result.attempted >= 1 and result.failed == 0
