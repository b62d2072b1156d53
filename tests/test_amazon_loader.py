"""The UniSRec-layout loader: items, leave-one-out splits, sequence-order timestamps, errors, and the real data."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import Col, Split, item_text, load_dataset, save_dataset
from recsys.errors import DataError
from recsys.loaders.amazon import EPOCH, FULL_TEXT_FIELDS, load_amazon, parse_text
from conftest_shop import NAME, sequences, write_unisrec


@pytest.fixture()
def tiny(tmp_path: Path) -> tuple[Path, list[list[int]]]:
    seqs = sequences(n_users=12, n_items=20)
    return write_unisrec(tmp_path / "src", seqs, 20), seqs


def test_parse_text_handles_missing_parts_and_dots_in_titles() -> None:
    assert parse_text("No. 5 Tape, 2 in. Cat A Cat B. Acme. ") == ("No. 5 Tape, 2 in", "Cat A Cat B. Acme", "Cat A Cat B", "Acme")
    assert parse_text("Lugs 8 AWG. Terminals. . ") == ("Lugs 8 AWG", "Terminals", "Terminals", None)
    assert parse_text("Fan 120 Volt. . TPI. ") == ("Fan 120 Volt", "TPI", None, "TPI")
    assert parse_text("Eyewear. . . ") == ("Eyewear", None, None, None)


def test_loader_builds_interaction_rows_per_split(tiny: tuple[Path, list[list[int]]], tmp_path: Path) -> None:
    src, seqs = tiny
    ds = load_amazon(src)
    assert ds.kind == "interactions" and ds.manifest["time_source"] == "sequence_order"
    counts = ds.impressions.group_by(Col.SPLIT).len().sort(Col.SPLIT)
    assert dict(counts.iter_rows()) == {Split.DEV: len(seqs), Split.TEST: len(seqs), Split.TRAIN: sum(len(s) - 3 for s in seqs)}
    # Every row: one positive candidate, history = the user's earlier items, time = epoch + position.
    for u, s in enumerate(seqs):
        rows = ds.impressions.filter(pl.col(Col.USER) == f"U{u:04d}").sort(Col.TIME)
        assert rows[Col.SPLIT].to_list() == [Split.TRAIN] * (len(s) - 3) + [Split.DEV, Split.TEST]
        for k, row in enumerate(rows.iter_rows(named=True), start=1):
            assert row[Col.CANDIDATES] == [f"B{s[k]:05d}"] and row[Col.LABELS] == [1]
            assert row[Col.HISTORY] == [f"B{i:05d}" for i in s[:k]]
            assert (row[Col.TIME] - EPOCH).total_seconds() == k
    # The dataset round-trips through the contract.
    again = load_dataset(save_dataset(ds, tmp_path / "ds"))
    assert again.impressions.equals(ds.impressions) and again.manifest["kind"] == "interactions"


def test_item_text_is_kept_whole(tiny: tuple[Path, list[list[int]]]) -> None:
    src, _ = tiny
    ds = load_amazon(src)
    raw = dict(line.split("\t", 1) for line in (src / f"{NAME}.text").read_text().splitlines()[1:])
    full = dict(zip(ds.items[Col.ITEM].to_list(), item_text(ds.items, FULL_TEXT_FIELDS).to_list()))
    for item, text in raw.items():
        # Only empty parts (". . ") disappear; every word of the original is kept, title first.
        assert full[item].split() == [w for w in text.replace(". .", ".").rstrip(". ").split() if w != "."]
    row = ds.items.filter(pl.col(Col.ITEM) == "B00003").row(0, named=True)  # no category
    assert row[Col.TITLE] == "Widget No. 3 part" and row[Col.CATEGORY] is None and row[Col.TAGS] == ["Brand0"]


def test_unknown_item_index_names_file_and_line(tiny: tuple[Path, list[list[int]]]) -> None:
    src, _ = tiny
    path = src / f"{NAME}.valid.inter"
    lines = path.read_text().splitlines()
    lines[2] = "1\t0 1 2\t999"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"Tiny.valid.inter, row 3.*999"):
        load_amazon(src)


def test_real_amazon_scientific(amazon_dir: Path) -> None:
    ds = load_amazon(amazon_dir)
    assert ds.items.height == 4385 and ds.manifest["users"] == 8442
    # 59,427 interactions: every item after a user's first is one row.
    assert ds.impressions.height + 8442 == 59427
    dev, test = ds.split(Split.DEV), ds.split(Split.TEST)
    joined = dev.join(test, on=Col.USER, suffix="_t")
    # The dev target is the last history item of the test row (histories cut at 50 keep it last).
    assert (joined[Col.CANDIDATES].list.first() == joined[f"{Col.HISTORY}_t"].list.last()).all()
