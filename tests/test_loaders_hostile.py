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
