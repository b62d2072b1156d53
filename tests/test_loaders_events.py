"""Generic items + events loader: request grouping, session gaps, click-only logs, splits, bad input."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from recsys.data import Col
from recsys.errors import DataError, RecsysError
from recsys.loaders import EventsConfig, EventsSource, load, load_events

ITEMS = "item_id,title,category,tags,publish_time\nA,Apple pie,food,sweet|baking,2020-01-01\nB,Ball game,sports,,\nC,Cat rescue,pets,,\n"
HEADER = "user_id,item_id,timestamp,event"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def events_csv(tmp_path: Path, rows: list[str], header: str = HEADER) -> Path:
    return write(tmp_path / "events.csv", header + "\n" + "".join(r + "\n" for r in rows))


def ingest(tmp_path: Path, events: Path, **cfg: object) -> tuple[pl.DataFrame, dict]:
    result = load_events(write(tmp_path / "items.csv", ITEMS), events, tmp_path / "out", EventsConfig(**cfg))  # type: ignore[arg-type]
    return result.dataset().impressions, result.manifest


def test_request_id_grouping_labels_and_history(tmp_path: Path) -> None:
    rows = [
        "u1,A,2020-01-02T10:00:00,impression,r1",
        "u1,B,2020-01-02T10:00:00,impression,r1",
        "u1,B,2020-01-02T10:00:05,click,r1",
        "u2,C,2020-01-02T10:00:01,impression,r2",
        "u1,C,2020-01-02T10:01:00,impression,r3",  # same user, one minute later: own request
        "u1,Z,2020-01-02T10:01:00,impression,r3",
        "u1,C,2020-01-02T10:01:30,purchase,r3",
    ]
    imps, manifest = ingest(tmp_path, events_csv(tmp_path, rows, HEADER + ",request_id"), dev_fraction=0.0)
    assert manifest["kind"] == "impressions"
    assert imps[Col.IMPRESSION].to_list() == ["r1", "r2", "r3"]
    assert imps[Col.CANDIDATES].to_list() == [["A", "B"], ["C"], ["C", "Z"]]
    assert imps[Col.LABELS].to_list() == [[0, 1], [0], [1, 0]]
    assert imps[Col.HISTORY].to_list() == [[], [], ["B"]]  # the r1 click came before r3
    assert imps[Col.TIME][2] == datetime(2020, 1, 2, 10, 1)
    # Z is kept in the impression, and counted as missing from items.
    assert manifest["missing_item_ids"]["examples"] == ["Z"]


def test_time_gap_grouping(tmp_path: Path) -> None:
    rows = [
        "u1,A,2020-01-02T10:00:00,impression",
        "u1,B,2020-01-02T10:10:00,impression",
        "u1,B,2020-01-02T10:12:00,click",
        "u1,C,2020-01-02T12:00:00,impression",  # 108 minutes later: new impression
        "u2,A,2020-01-02T10:05:00,impression",
    ]
    imps, _ = ingest(tmp_path, events_csv(tmp_path, rows), dev_fraction=0.0, session_gap_minutes=30)
    by_user = imps.sort(Col.TIME).select(Col.USER, Col.CANDIDATES, Col.LABELS, Col.HISTORY).rows()
    assert by_user == [("u1", ["A", "B"], [0, 1], []), ("u2", ["A"], [0], []), ("u1", ["C"], [0], ["B"])]
    imps, _ = ingest(tmp_path, events_csv(tmp_path, rows), dev_fraction=0.0, session_gap_minutes=200)
    assert sorted(imps[Col.CANDIDATES].list.len().to_list()) == [1, 3]


def test_click_only_log_becomes_interactions(tmp_path: Path) -> None:
    rows = ["u1,A,1600000000", "u1,B,1600000100", "u2,C,1600000200", "u1,C,1600000300"]
    imps, manifest = ingest(tmp_path, events_csv(tmp_path, rows, "user_id,item_id,timestamp"), dev_fraction=0.25)
    assert manifest["kind"] == "interactions"
    assert imps[Col.CANDIDATES].to_list() == [["A"], ["B"], ["C"], ["C"]]
    assert imps[Col.LABELS].to_list() == [[1]] * 4
    assert imps[Col.HISTORY].to_list() == [[], ["A"], [], ["A", "B"]]
    assert imps[Col.SPLIT].to_list() == ["train", "train", "train", "dev"]  # last 25% by time
    assert imps[Col.TIME][0] == datetime(2020, 9, 13, 12, 26, 40)


def test_split_column_parquet_and_timezones(tmp_path: Path) -> None:
    events = pl.DataFrame(
        {
            Col.USER: ["u1", "u1", "u2"],
            Col.ITEM: ["A", "B", "C"],
            Col.TIME: [datetime(2020, 1, 1, 12, tzinfo=timezone.utc)] * 3,
            Col.SPLIT: ["train", "test", "dev"],
        }
    ).with_columns(pl.col(Col.TIME).dt.convert_time_zone("Europe/Paris"))
    events.write_parquet(tmp_path / "events.parquet")
    pl.read_csv(write(tmp_path / "items.csv", ITEMS)).write_parquet(tmp_path / "items.parquet")
    result = load(EventsSource(tmp_path / "items.parquet", tmp_path / "events.parquet"), tmp_path / "out")
    imps = result.dataset().impressions
    assert imps[Col.SPLIT].to_list() == ["train", "test", "dev"]
    assert set(imps[Col.TIME].to_list()) == {datetime(2020, 1, 1, 12)}  # naive UTC
    items = result.dataset().items.sort(Col.ITEM)
    assert items[Col.TAGS][0].to_list() == ["sweet", "baking"]
    assert items[Col.PUBLISHED][0] == datetime(2020, 1, 1)


@pytest.mark.parametrize(
    ("rows", "line", "field", "problem"),
    [
        (["u1,A,2020-01-02T10:00:00,impression", "u1,B,last tuesday,click"], 3, Col.TIME, "bad timestamp"),
        (["u1,A,2020-01-02T10:00:00,impression", "u1,B,2020-01-02T10:00:00,like"], 3, "event", "unknown event value"),
        (["u1,A,2020-01-02T10:00:00,impression", ",B,2020-01-02T10:00:00,click"], 3, Col.USER, "empty user_id"),
        (["u1,A,2020-01-02T10:00:00,impression", "u1,B,2020-01-02T10:00:00,click,extra"], 3, None, "wrong number of fields"),
    ],
)
def test_bad_events_name_file_line_field(tmp_path: Path, rows: list[str], line: int, field: str | None, problem: str) -> None:
    path = events_csv(tmp_path, rows)
    with pytest.raises(DataError) as err:
        ingest(tmp_path, path)
    assert (err.value.path, err.value.row, err.value.field) == (str(path), line, field)
    assert problem in err.value.problem


def test_missing_column_empty_file_and_options(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="field 'timestamp': column is missing"):
        ingest(tmp_path, events_csv(tmp_path, ["u1,A"], "user_id,item_id"))
    with pytest.raises(DataError, match="file is empty"):
        ingest(tmp_path, write(tmp_path / "events.csv", ""))
    with pytest.raises(RecsysError, match="on_bad_rows"):
        EventsConfig(on_bad_rows="ignore")
    with pytest.raises(RecsysError, match="dev_fraction"):
        EventsConfig(dev_fraction=1.5)


def test_skip_mode_counts_and_rejects(tmp_path: Path) -> None:
    rows = [
        "u1,A,2020-01-02T10:00:00,impression",
        "u1,B,never,click",
        "u1,B,2020-01-02T10:00:00,like",
        "u1,B,2020-01-02T10:00:00,click,extra,fields",
        "u1,B,2020-01-02T10:01:00,click",
        "u2,C,nope,impression",
    ]
    imps, manifest = ingest(tmp_path, events_csv(tmp_path, rows), dev_fraction=0.0, on_bad_rows="skip")
    assert manifest["skipped"] == {
        "total": 4,
        "by_reason": {"bad timestamp": 2, "unknown event value (expected one of impression, click, purchase)": 1, "wrong number of fields (expected 4)": 1},
    }
    assert imps[Col.CANDIDATES].to_list() == [["A", "B"]]
    assert imps[Col.LABELS].to_list() == [[0, 1]]
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert sorted(rejects["line"].to_list()) == [3, 4, 5, 7]


def test_cli_ingest_events(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    events = events_csv(tmp_path, ["u1,A,2020-01-02T10:00:00,impression", "u1,A,2020-01-02T10:00:09,click", "u1,B,bad,click"])
    items = write(tmp_path / "items.csv", ITEMS)
    args = ["ingest", "events", "--items", str(items), "--events", str(events), "--out", str(tmp_path / "ds"), "--dev-fraction", "0"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "events.csv, row 4, field 'timestamp': bad timestamp" in res.output
    res = CliRunner().invoke(main, args + ["--skip-bad-rows"])
    assert res.exit_code == 0, res.output
    assert "1 impressions (train 1); skipped 1 rows" in res.output
