"""MIND loader: full-column fixture, unlabelled test split, bad input (raise and skip), streaming, round trip, CLI."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from cli import main
from recsys.data import Col, load_dataset
from recsys.errors import DataError, RecsysError
from recsys.loaders import MindSource, load, load_mind
from recsys.loaders.mind_export import write_mind
from recsys.loaders.rejects import BadRows
from recsys.loaders.tsv import read_tsv
from recsys.synth import SynthConfig, generate

ENTITY = '[{"Label": "PGA Tour", "Type": "O", "WikidataId": "Q910409", "Confidence": 1.0, "OccurrenceOffsets": [0], "SurfaceForms": ["PGA Tour"]}]'
NEWS = [
    ["N1", "sports", "golf", 'Tiger "wins" the PGA Tour', "He won again.", "https://x/1", ENTITY, "[]"],
    ["N2", "finance", "markets", "Stocks rally", "", "https://x/2", "", ""],
    ["N3", "news", "world", "Storm hits coast", "Rain and wind.", "https://x/3", "[]", '[{"Label": "Atlantic Ocean", "Type": "G"}, {"Label": "PGA Tour"}]'],
]
BEHAVIORS = [
    ["1", "U1", "11/15/2019 8:55:22 AM", "N1 N2", "N3-1 N2-0"],
    ["2", "U2", "11/15/2019 12:05:02 PM", "", "N1-0 N9-1 N3-0"],
]


def write_rows(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def mind_dir(root: Path, behaviors: list[list[str]] = BEHAVIORS, news: list[list[str]] = NEWS) -> Path:
    write_rows(root / "news.tsv", news)
    write_rows(root / "behaviors.tsv", behaviors)
    return root


def test_every_column_parsed(tmp_path: Path) -> None:
    ds = load_mind({"train": mind_dir(tmp_path / "train")}, tmp_path / "out").dataset()
    items = ds.items.sort(Col.ITEM)
    assert items[Col.TAGS].to_list() == [["PGA Tour"], [], ["Atlantic Ocean", "PGA Tour"]]
    assert items[Col.ABSTRACT].to_list() == ["He won again.", None, "Rain and wind."]
    assert items[Col.TITLE][0] == 'Tiger "wins" the PGA Tour'
    assert items[Col.CATEGORY].to_list() == ["sports", "finance", "news"]
    imps = ds.impressions
    assert imps[Col.IMPRESSION].to_list() == ["train-1", "train-2"]
    assert imps[Col.TIME].to_list() == [datetime(2019, 11, 15, 8, 55, 22), datetime(2019, 11, 15, 12, 5, 2)]
    assert imps.schema[Col.TIME] == pl.Datetime("us")
    assert imps[Col.HISTORY].to_list() == [["N1", "N2"], []]
    assert imps[Col.CANDIDATES].to_list() == [["N3", "N2"], ["N1", "N9", "N3"]]
    assert imps[Col.LABELS].to_list() == [[1, 0], [0, 1, 0]]
    assert ds.manifest["missing_item_ids"] == {"distinct": 1, "in_candidates": 1, "in_history": 0, "examples": ["N9"]}
    assert ds.manifest["splits"]["train"]["clicks"] == 2


def test_unlabelled_test_split_and_dedup_across_splits(tmp_path: Path) -> None:
    train = mind_dir(tmp_path / "train")
    extra = NEWS + [["N4", "tech", "ai", "Robots", "", "", "[]", "[]"]]
    test = mind_dir(tmp_path / "test", [["1", "U1", "11/16/2019 1:00:00 PM", "N1", "N3 N4 N2"]], extra)
    result = load(MindSource({"train": train, "test": test}), tmp_path / "out")
    ds = result.dataset()
    assert ds.items.height == 4  # N1-N3 appear in both splits, once in items
    test_rows = ds.split("test")
    assert test_rows[Col.IMPRESSION].to_list() == ["test-1"]
    assert test_rows[Col.CANDIDATES].to_list() == [["N3", "N4", "N2"]]
    assert test_rows[Col.LABELS].to_list() == [None]
    assert result.manifest["splits"]["test"]["unlabelled"] == 1


@pytest.mark.parametrize(
    ("file", "rows", "line", "field", "problem"),
    [
        ("behaviors.tsv", BEHAVIORS + [["3", "U3", "11/15/2019 1:00:00 PM", "N1"]], 3, None, "wrong number of fields"),
        ("behaviors.tsv", [BEHAVIORS[0], ["2", "U2", "2019-11-15 25:00", "", "N1-0"]], 2, Col.TIME, "bad timestamp"),
        ("behaviors.tsv", [BEHAVIORS[0], ["2", "U2", "11/15/2019 1:00:00 PM", "", "N1-0 N2-2"]], 2, "impressions", "unknown label value"),
        ("behaviors.tsv", [BEHAVIORS[0], ["2", "", "11/15/2019 1:00:00 PM", "", "N1-0"]], 2, Col.USER, "empty user_id"),
        ("behaviors.tsv", [BEHAVIORS[0], ["2", "U2", "11/15/2019 1:00:00 PM", "N1", ""]], 2, "impressions", "no candidates"),
        ("behaviors.tsv", BEHAVIORS + [["1", "U3", "11/15/2019 1:00:00 PM", "", "N1-0"]], 3, Col.IMPRESSION, "duplicate impression id"),
        ("news.tsv", NEWS[:2] + [["N3", "a", "b", "t", "x", "u", "[{oops", "[]"]], 3, "title_entities", "invalid entity JSON"),
        ("news.tsv", NEWS + [["N4", "only", "five", "fields", "here"]], 4, None, "wrong number of fields"),
    ],
)
def test_bad_input_names_file_line_field(tmp_path: Path, file: str, rows: list[list[str]], line: int, field: str | None, problem: str) -> None:
    root = mind_dir(tmp_path / "train")
    write_rows(root / file, rows)
    with pytest.raises(DataError) as err:
        load_mind({"train": root}, tmp_path / "out")
    assert err.value.path == str(root / file)
    assert (err.value.row, err.value.field) == (line, field)
    assert problem in err.value.problem
    assert not (tmp_path / "out" / "manifest.json").exists()  # never a half-written dataset


def test_empty_and_missing_files(tmp_path: Path) -> None:
    root = mind_dir(tmp_path / "train")
    (root / "behaviors.tsv").write_text("")
    with pytest.raises(DataError, match="behaviors.tsv: file is empty"):
        load_mind({"train": root}, tmp_path / "out")
    (root / "news.tsv").unlink()
    with pytest.raises(DataError, match="news.tsv: file not found"):
        load_mind({"train": root}, tmp_path / "out")
    with pytest.raises(RecsysError, match="unknown split"):
        MindSource({"valid": root})


def test_skip_mode_counts_by_reason_and_writes_rejects(tmp_path: Path) -> None:
    rows = BEHAVIORS + [
        ["3", "U3", "13/45/2019 1:00:00 PM", "", "N1-0"],
        ["4", "U4", "11/15/2019 1:00:00 PM", "", "N1-7"],
        ["5", "U5", "11/15/2019 1:00:00 PM"],
        [""],
        ["6", "U6", "11/15/2019 1:00:00 PM", "", "N1-1"],
        ["7", "U7", "not a time", "", "N1-0"],
    ]
    root = mind_dir(tmp_path / "train", rows)
    result = load_mind({"train": root}, tmp_path / "out", on_bad_rows="skip")
    skipped = result.manifest["skipped"]
    assert skipped["total"] == 5
    assert skipped["by_reason"] == {
        "bad timestamp (expected like '11/15/2019 8:55:22 AM')": 2,
        "unknown label value (expected <news id>-0 or -1)": 1,
        "wrong number of fields (expected 5)": 2,
    }
    assert result.dataset().impressions[Col.IMPRESSION].to_list() == ["train-1", "train-2", "train-6"]
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet").sort("line")
    assert rejects["line"].to_list() == [3, 4, 5, 6, 8]
    assert rejects.filter(pl.col("line") == 4)["value"].to_list() == ["N1-7"]


def test_invalid_utf8_named_or_skipped(tmp_path: Path) -> None:
    root = mind_dir(tmp_path / "train")
    with (root / "behaviors.tsv").open("ab") as fh:
        fh.write(b"3\tU3\t11/15/2019 1:00:00 PM\t\tN1-\xff0\n")
    with pytest.raises(DataError) as err:
        load_mind({"train": root}, tmp_path / "out")
    assert (err.value.row, err.value.problem) == (3, "invalid UTF-8")
    result = load_mind({"train": root}, tmp_path / "out", on_bad_rows="skip")
    assert result.manifest["skipped"]["by_reason"] == {"invalid UTF-8": 1}
    assert result.manifest["impressions"] == 2


def test_read_tsv_line_numbers_across_blocks_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    path.write_bytes(b"".join(b"a%d\tb%d\r\n" % (i, i) for i in range(1, 200)) + b"bad\n" + b"z\tz\n")
    bad = BadRows("skip")
    batches = list(read_tsv(path, ["a", "b"], bad, block_bytes=64))
    assert len(batches) > 5
    rows = pl.concat(batches)
    assert rows["_line"].to_list() == list(range(1, 200)) + [201]
    assert rows["b"][:3].to_list() == ["b1", "b2", "b3"]  # "\r" stripped
    assert bad.counts == {"wrong number of fields (expected 2)": 1}


def test_synth_round_trip_through_mind_files(tmp_path: Path) -> None:
    ds = generate(SynthConfig.preset("tiny", seed=3, test_fraction=0.1))
    write_mind(ds, tmp_path / "mind")
    assert {p.name for p in (tmp_path / "mind" / "train").iterdir()} == {"news.tsv", "behaviors.tsv", "truth.tsv"}
    back = load_mind({s: tmp_path / "mind" / s for s in ("train", "dev", "test")}, tmp_path / "out").dataset()
    assert_frame_equal(back.impressions, ds.impressions)  # click_probs attached from truth.tsv, exactly
    assert_frame_equal(back.items.drop(Col.PUBLISHED), ds.items.drop(Col.PUBLISHED))


def test_truth_length_mismatch_is_an_error(tmp_path: Path) -> None:
    root = mind_dir(tmp_path / "train")
    write_rows(root / "truth.tsv", [["1", "0.1 0.2"], ["2", "0.1 0.2"]])
    with pytest.raises(DataError, match=r"truth.tsv, row 2, field 'click_probs': different number of probabilities than candidates: 'impression 2: 2 probabilities, 3 candidates'"):
        load_mind({"train": root}, tmp_path / "out")


def test_cli_synth_ingest_stats(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["synth", str(tmp_path / "mind"), "--size", "tiny", "--format", "mind"])
    assert res.exit_code == 0, res.output
    args = ["ingest", "mind", "--train", str(tmp_path / "mind" / "train"), "--dev", str(tmp_path / "mind" / "dev"), "--out", str(tmp_path / "ds")]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "400 impressions" in res.output
    assert load_dataset(tmp_path / "ds").manifest["source"] == "mind"
    res = runner.invoke(main, ["stats", str(tmp_path / "ds")])
    assert res.exit_code == 0 and "CTR" in res.output
    write_rows(tmp_path / "mind" / "dev" / "behaviors.tsv", [["1", "U1", "yesterday", "", "N1-1"]])
    res = runner.invoke(main, args)
    assert res.exit_code == 1
    assert "behaviors.tsv, row 1, field 'timestamp': bad timestamp" in res.output
