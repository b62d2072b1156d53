"""Hostile input for every loader: each bad file ends in one line naming file, row and field, or
(with skip) in a counted reject; never a traceback, never a silently different dataset."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from recsys.data import Col, explode_candidates, load_dataset
from recsys.errors import DataError
from recsys.loaders import EventsConfig, load_events, load_mind
from recsys.loaders.amazon import load_amazon
from conftest_shop import NAME, sequences, write_unisrec

T = "11/15/2019 8:55:22 AM"
NEWS = "".join(f"N{i}\tnews\tworld\tTitle {i}\t\t\t[]\t[]\n" for i in range(1, 6))
ITEMS = "item_id,title\nA,Apple\nB,Ball\nC,Cat\n"
BOM = "\ufeff"


def mind_dir(root: Path, behaviors: list[str] | bytes, truth: list[str] | None = None, news: str | bytes = NEWS) -> Path:
    """A MIND directory; ``behaviors`` rows are 'id user history impressions' (time filled in)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "news.tsv").write_bytes(news.encode() if isinstance(news, str) else news)
    if isinstance(behaviors, list):
        behaviors = "".join(f"{i}\tU{i}\t{T}\t{hist}\t{imps}\n" for i, (hist, imps) in enumerate(behaviors, start=1)).encode()
    (root / "behaviors.tsv").write_bytes(behaviors)
    if truth is not None:
        (root / "truth.tsv").write_text("".join(f"{i}\t{p}\n" for i, p in enumerate(truth, start=1)))
    return root


def raises(call, path: Path, row: int | None, field: str | None, problem: str) -> DataError:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError) as err:
        call()
    assert (err.value.path, err.value.row, err.value.field) == (str(path), row, field), str(err.value)
    assert problem in err.value.problem
    return err.value


def cli_fails_in_one_line(args: list[str], expected: str) -> None:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    assert res.output.count("\n") == 1 and res.output.startswith("error: ") and expected in res.output, res.output


class TestMindLabels:
    """Labelledness is decided per file (not from line 1) and ``ID-LABEL`` is parsed strictly."""

    def test_unlabelled_first_impression_in_labelled_file(self, tmp_path: Path) -> None:
        d = mind_dir(tmp_path / "train", [("", "N1 N2"), ("", "N3-0 N1-1"), ("", "N4-1 N2-0")])
        raises(lambda: load_mind({"train": d}, tmp_path / "out"), d / "behaviors.tsv", 1, "impressions", "unlabelled impression in a labelled file")
        result = load_mind({"train": d}, tmp_path / "out", on_bad_rows="skip")
        assert result.manifest["skipped"]["by_reason"] == {"unlabelled impression in a labelled file (all impressions must be labelled, or none)": 1}
        assert result.dataset().impressions[Col.CANDIDATES].to_list() == [["N3", "N1"], ["N4", "N2"]]
        cli_fails_in_one_line(["ingest", "mind", "--train", str(d), "--out", str(tmp_path / "cli")], "behaviors.tsv, row 1, field 'impressions'")

    def test_labelled_impression_in_unlabelled_file(self, tmp_path: Path) -> None:
        d = mind_dir(tmp_path / "test", [("", "N1 N2"), ("", "N3 N4"), ("", "N145-0 N2")])
        raises(lambda: load_mind({"test": d}, tmp_path / "out"), d / "behaviors.tsv", 3, "impressions", "labelled candidates in an unlabelled file")
        result = load_mind({"test": d}, tmp_path / "out", on_bad_rows="skip")
        assert result.manifest["skipped"]["total"] == 1
        assert "N145-0" not in result.dataset().impressions[Col.CANDIDATES].explode().to_list()

    @pytest.mark.parametrize(
        ("token", "problem"),
        [("N1--1", "bad news id before the label"), ("-1", "bad news id before the label"), ("N1-01", "unknown label value"), ("N1-", "unknown label value"), ("N1-1x", "unknown label value")],
    )
    def test_strict_id_label_tokens(self, tmp_path: Path, token: str, problem: str) -> None:
        d = mind_dir(tmp_path / "train", [("", "N1-1 N2-0"), ("", f"N3-0 {token}")])
        err = raises(lambda: load_mind({"train": d}, tmp_path / "out"), d / "behaviors.tsv", 2, "impressions", problem)
        assert repr(token) in str(err)

    def test_label_after_the_last_dash(self, tmp_path: Path) -> None:
        d = mind_dir(tmp_path / "train", [("", "N1-0-1 N2-0")])
        imps = load_mind({"train": d}, tmp_path / "out").dataset().impressions
        assert (imps[Col.CANDIDATES].to_list(), imps[Col.LABELS].to_list()) == ([["N1-0", "N2"]], [[1, 0]])


class TestMindTruth:
    """Every impression has a truth row of the right length; splits without truth still explode."""

    def test_missing_truth_row(self, tmp_path: Path) -> None:
        d = mind_dir(tmp_path / "train", [("", "N1-1 N2-0"), ("", "N3-0 N1-1")], truth=["0.1 0.2"])
        raises(lambda: load_mind({"train": d}, tmp_path / "out"), d / "behaviors.tsv", 2, Col.IMPRESSION, "impression has no row in truth.tsv")
        result = load_mind({"train": d}, tmp_path / "out", on_bad_rows="skip")
        assert result.manifest["skipped"]["by_reason"] == {"impression has no row in truth.tsv": 1}
        explode_candidates(result.dataset().impressions)

    def test_wrong_length_named_at_truth_line_or_skipped(self, tmp_path: Path) -> None:
        d = mind_dir(tmp_path / "train", [("", "N1-1 N2-0"), ("", "N3-0 N1-1")], truth=["0.1 0.2", "0.5"])
        raises(lambda: load_mind({"train": d}, tmp_path / "out"), d / "truth.tsv", 2, Col.CLICK_PROBS, "different number of probabilities")
        result = load_mind({"train": d}, tmp_path / "out", on_bad_rows="skip")
        assert result.manifest["impressions"] == 1
        assert pl.read_parquet(tmp_path / "out" / "rejects.parquet").select("file", "line").rows() == [(str(d / "truth.tsv"), 2)]

    def test_duplicate_truth_row(self, tmp_path: Path) -> None:
        d = mind_dir(tmp_path / "train", [("", "N1-1 N2-0")])
        (d / "truth.tsv").write_text("1\t0.1 0.2\n1\t0.3 0.4\n")
        raises(lambda: load_mind({"train": d}, tmp_path / "out"), d / "truth.tsv", 2, Col.IMPRESSION, "duplicate impression id")

    def test_split_without_truth_gets_null_probs_that_explode(self, tmp_path: Path) -> None:
        train = mind_dir(tmp_path / "train", [("", "N1-1 N2-0"), ("", "N3-0 N1-1 N4-0")], truth=["0.1 0.2", "0.3 0.4 0.5"])
        dev = mind_dir(tmp_path / "dev", [("", "N1-1 N2-0 N5-0")])
        result = load_mind({"train": train, "dev": dev}, tmp_path / "out")
        assert result.manifest["truth_splits"] == ["train"]
        ds = load_dataset(tmp_path / "out")  # validates
        assert ds.split("dev")[Col.CLICK_PROBS].to_list() == [[None, None, None]]
        long = explode_candidates(ds.impressions)
        assert long.height == 8 and long.filter(pl.col(Col.SPLIT) == "dev")[Col.CLICK_PROBS].null_count() == 3


class TestByteOrderMark:
    """A UTF-8 BOM at the start of news/behaviors/truth is not part of the first id."""

    def test_bom_stripped_everywhere(self, tmp_path: Path) -> None:
        behaviors = (BOM + f"1\tU1\t{T}\t\tN1-1 N2-0\n").encode()
        d = mind_dir(tmp_path / "train", behaviors, news=(BOM + NEWS).encode())
        (d / "truth.tsv").write_text(BOM + "1\t0.25 0.5\n")
        ds = load_mind({"train": d}, tmp_path / "out").dataset()
        assert ds.items[Col.ITEM][0] == "N1"
        assert ds.impressions[Col.IMPRESSION].to_list() == ["train-1"]
        assert ds.impressions[Col.CLICK_PROBS].to_list() == [[0.25, 0.5]]
        assert ds.manifest["missing_item_ids"]["distinct"] == 0


class TestNonUtf8:
    """Undecodable bytes are a named bad line (or a counted reject), in CSV tables and Amazon files."""

    @pytest.mark.parametrize("which", ["items", "events"])
    def test_csv(self, tmp_path: Path, which: str) -> None:
        items = tmp_path / "items.csv"
        events = tmp_path / "events.csv"
        items.write_bytes(b"item_id,title\nA,Apple\nB,Ba\xffll\n" if which == "items" else ITEMS.encode())
        events.write_bytes(b"user_id,item_id,timestamp\nu1,A,1600000000\n" + (b"u\xfe2,B,1600000001\n" if which == "events" else b"u2,B,1600000001\n"))
        path, field = (items, Col.TITLE) if which == "items" else (events, Col.USER)
        line = 3
        raises(lambda: load_events(items, events, tmp_path / "out"), path, line, field, "invalid UTF-8")
        result = load_events(items, events, tmp_path / "out", EventsConfig(on_bad_rows="skip", dev_fraction=0))
        assert result.manifest["skipped"] == {"total": 1, "by_reason": {"invalid UTF-8": 1}}
        args = ["ingest", "events", "--items", str(items), "--events", str(events), "--out", str(tmp_path / "cli")]
        cli_fails_in_one_line(args, f"row {line}, field '{field}': invalid UTF-8")

    @pytest.mark.parametrize(("suffix", "line", "field"), [("text", 3, "text"), ("item2index", 2, Col.ITEM), ("test.inter", 2, Col.HISTORY)])
    def test_amazon(self, tmp_path: Path, suffix: str, line: int, field: str) -> None:
        src = write_unisrec(tmp_path / "src", sequences(n_users=5, n_items=12), 12)
        path = src / f"{NAME}.{suffix}"
        lines = path.read_bytes().split(b"\n")
        parts = lines[line - 1].split(b"\t")
        parts[1 if field != Col.ITEM else 0] += b"\xc3"
        lines[line - 1] = b"\t".join(parts)
        path.write_bytes(b"\n".join(lines))
        raises(lambda: load_amazon(src), path, line, field, "invalid UTF-8")


class TestEventsFiles:
    """Non-finite or absurd epoch times, a fake Parquet file and broken CSV quoting."""

    @pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e20, 1e300, 1.6e12])
    def test_bad_epoch_in_parquet(self, tmp_path: Path, value: float) -> None:
        (tmp_path / "items.csv").write_text(ITEMS)
        events = tmp_path / "events.parquet"
        pl.DataFrame({Col.USER: ["u1", "u2"], Col.ITEM: ["A", "B"], Col.TIME: [1.6e9, value]}).write_parquet(events)
        raises(lambda: load_events(tmp_path / "items.csv", events, tmp_path / "out"), events, 2, Col.TIME, "bad timestamp")
        result = load_events(tmp_path / "items.csv", events, tmp_path / "out", EventsConfig(on_bad_rows="skip", dev_fraction=0))
        assert result.manifest["skipped"] == {"total": 1, "by_reason": {"bad timestamp": 1}}

    def test_epoch_strings_mixed_with_other_text(self, tmp_path: Path) -> None:
        (tmp_path / "items.csv").write_text(ITEMS)
        events = tmp_path / "events.csv"
        events.write_text("user_id,item_id,timestamp\nu1,A,1600000000\nu1,B,oops\nu1,C,2020-09-13T12:30:00\n")
        raises(lambda: load_events(tmp_path / "items.csv", events, tmp_path / "out"), events, 3, Col.TIME, "bad timestamp")
        result = load_events(tmp_path / "items.csv", events, tmp_path / "out", EventsConfig(on_bad_rows="skip", dev_fraction=0))
        assert result.manifest["skipped"]["total"] == 1  # epoch and ISO text both parse, each by its form
        assert result.dataset().impressions[Col.CANDIDATES].to_list() == [["A"], ["C"]]

    def test_file_that_is_not_parquet(self, tmp_path: Path) -> None:
        (tmp_path / "items.csv").write_text(ITEMS)
        events = tmp_path / "events.parquet"
        events.write_text("user_id,item_id,timestamp\nu1,A,1600000000\n")
        err = raises(lambda: load_events(tmp_path / "items.csv", events, tmp_path / "out"), events, None, None, "not a readable Parquet file")
        assert "\n" not in str(err)
        cli_fails_in_one_line(["ingest", "events", "--items", str(tmp_path / "items.csv"), "--events", str(events), "--out", str(tmp_path / "cli")], "not a readable Parquet file")

    def test_parquet_column_that_is_not_text(self, tmp_path: Path) -> None:
        (tmp_path / "items.csv").write_text(ITEMS)
        events = tmp_path / "events.parquet"
        pl.DataFrame({Col.USER: [["u1"]], Col.ITEM: ["A"], Col.TIME: [1.6e9]}).write_parquet(events)
        raises(lambda: load_events(tmp_path / "items.csv", events, tmp_path / "out"), events, None, Col.USER, "expected text")

    @pytest.mark.parametrize("bad_line", ['u1,"B,1600000001', 'u1,B"x,1600000001', 'u1,"B"x,1600000001'])
    def test_unquoted_quote(self, tmp_path: Path, bad_line: str) -> None:
        (tmp_path / "items.csv").write_text(ITEMS)
        events = tmp_path / "events.csv"
        events.write_text(f"user_id,item_id,timestamp\nu1,A,1600000000\n{bad_line}\nu2,C,1600000002\n")
        raises(lambda: load_events(tmp_path / "items.csv", events, tmp_path / "out"), events, 3, Col.ITEM, "malformed quoting")
        result = load_events(tmp_path / "items.csv", events, tmp_path / "out", EventsConfig(on_bad_rows="skip", dev_fraction=0))
        assert result.manifest["skipped"]["total"] == 1
        assert result.dataset().impressions[Col.CANDIDATES].to_list() == [["A"], ["C"]]  # line 4 not swallowed


class TestRequestReuse:
    """A request id is one impression per (request id, user) and within request_gap_hours."""

    HEADER = "user_id,item_id,timestamp,event,request_id\n"

    def ingest(self, tmp_path: Path, rows: list[str]) -> tuple[pl.DataFrame, dict]:
        (tmp_path / "items.csv").write_text(ITEMS)
        (tmp_path / "events.csv").write_text(self.HEADER + "".join(r + "\n" for r in rows))
        result = load_events(tmp_path / "items.csv", tmp_path / "events.csv", tmp_path / "out", EventsConfig(dev_fraction=0))
        return result.dataset().impressions.sort(Col.TIME), result.manifest

    def test_reused_by_another_user_days_later(self, tmp_path: Path) -> None:
        rows = ["u1,A,2020-01-01T10:00:00,impression,r1", "u1,A,2020-01-01T10:00:05,click,r1", "u1,B,2020-01-01T10:00:00,impression,r1",
                "u2,C,2020-01-05T10:00:00,impression,r1", "u3,A,2020-01-02T00:00:00,impression,r2"]
        imps, manifest = self.ingest(tmp_path, rows)
        assert imps.select(Col.IMPRESSION, Col.USER, Col.CANDIDATES, Col.LABELS).rows() == [
            ("r1#1", "u1", ["A", "B"], [1, 0]), ("r2", "u3", ["A"], [0]), ("r1#2", "u2", ["C"], [0])]
        assert manifest["reused_request_ids"] == {"request_ids": 1, "impressions": 2, "examples": ["r1"]}

    def test_same_user_after_the_gap_but_not_within_it(self, tmp_path: Path) -> None:
        rows = ["u1,A,2020-01-01T10:00:00,impression,r1", "u1,B,2020-01-01T11:00:00,click,r1", "u1,C,2020-01-09T10:00:00,impression,r1"]
        imps, manifest = self.ingest(tmp_path, rows)
        assert imps.select(Col.IMPRESSION, Col.CANDIDATES).rows() == [("r1#1", ["A", "B"]), ("r1#2", ["C"])]
        assert manifest["reused_request_ids"]["impressions"] == 2


class TestHistoryContainsCandidate:
    """Kept, and counted in the manifest (by every loader) so a leak is visible."""

    def test_mind(self, tmp_path: Path) -> None:
        d = mind_dir(tmp_path / "train", [("N1 N2", "N1-1 N3-0"), ("N4", "N2-0 N3-1")])
        result = load_mind({"train": d}, tmp_path / "out")
        assert result.manifest["history_contains_candidate"] == {"impressions": 1, "candidates": 1, "clicked": 1, "examples": ["train-1"]}
        assert result.manifest["impressions"] == 2

    def test_events_repeat_click(self, tmp_path: Path) -> None:
        (tmp_path / "items.csv").write_text(ITEMS)
        (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\nu1,A,1600000000\nu1,B,1600000100\nu1,A,1600000200\n")
        result = load_events(tmp_path / "items.csv", tmp_path / "events.csv", tmp_path / "out", EventsConfig(dev_fraction=0))
        assert result.manifest["history_contains_candidate"] == {"impressions": 1, "candidates": 1, "clicked": 1, "examples": ["e4"]}

    def test_amazon(self, tmp_path: Path) -> None:
        src = write_unisrec(tmp_path / "src", [[0, 1, 2, 1, 3]], 5)
        ds = load_amazon(src)
        assert ds.manifest["history_contains_candidate"]["impressions"] == 1  # the dev row: item 1 again after 0 1 2


class TestAmazonIndexAndSplits:
    """A repeated index or raw id in item2index, and an .inter file without rows, are named errors."""

    @pytest.mark.parametrize(("extra", "field", "problem"), [("B99999\t3", "index", "index 3 is given twice"), ("B00003\t99", Col.ITEM, "'B00003' is given twice")])
    def test_item2index_repeats(self, tmp_path: Path, extra: str, field: str, problem: str) -> None:
        src = write_unisrec(tmp_path / "src", sequences(n_users=5, n_items=12), 12)
        path = src / f"{NAME}.item2index"
        path.write_text(path.read_text() + extra + "\n")
        raises(lambda: load_amazon(src), path, 13, field, problem)
        cli_fails_in_one_line(["ingest", "amazon", str(src), "--out", str(tmp_path / "cli")], f"row 13, field '{field}'")

    @pytest.mark.parametrize("content", ["user_id:token\titem_id_list:token_seq\titem_id:token\n", ""])
    def test_empty_inter(self, tmp_path: Path, content: str) -> None:
        src = write_unisrec(tmp_path / "src", sequences(n_users=5, n_items=12), 12)
        path = src / f"{NAME}.test.inter"
        path.write_text(content)
        raises(lambda: load_amazon(src), path, None, None, "no rows")
