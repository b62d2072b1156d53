"""The "without text" baseline sees no text: neither text features nor the candidates only text sources retrieved."""

from __future__ import annotations

import numpy as np
import polars as pl

from features.without_text import WithoutTextRanker, without_text

PER_SOURCE = 3


def candidates() -> pl.DataFrame:
    """Five candidates: ranks of 1-3 are in a source's top 3, 4 and more are not, null = the source is not scored."""
    return pl.DataFrame({
        "item": ["ease+text", "text only", "text+sequence", "ease only", "repeat"],
        "n_sources": pl.Series([2, 1, 2, 1, 0], dtype=pl.Int8()),
        "src_ease_rank": [1.0, 40.0, 9.0, 3.0, 20.0],
        "src_text_rank": [2.0, 1.0, 3.0, 4.0, None],
        "src_sequence_rank": [8.0, 5.0, 1.0, 11.0, 4.0],
    })


def test_text_votes_leave_n_sources_and_text_only_candidates_are_dropped() -> None:
    seen, keep = without_text(candidates(), PER_SOURCE, retrieved=True)
    assert seen["n_sources"].to_list() == [1, 0, 0, 1, 0]
    assert seen["n_sources"].dtype == pl.Int8()
    # Only text sources retrieved the 2nd and 3rd; the repeat candidate (no source) is not text's choice.
    assert keep.tolist() == [True, False, False, True, True]
    assert seen.drop("n_sources").equals(candidates().drop("n_sources"))


def test_logged_candidates_all_stay() -> None:
    seen, keep = without_text(candidates(), PER_SOURCE, retrieved=False)
    assert keep.all() and seen["n_sources"].to_list() == [1, 0, 0, 1, 0]


def test_a_table_without_retrieval_features_is_unchanged() -> None:
    table = candidates().drop("n_sources")
    seen, keep = without_text(table, PER_SOURCE, retrieved=True)
    assert seen.equals(table) and keep.all()


class _Counting:
    """A ranker that scores a row by its n_sources (what the baseline is given, not the full table's)."""

    def score(self, table: pl.DataFrame) -> np.ndarray:
        return table["n_sources"].cast(pl.Float64).to_numpy()


def test_the_baseline_ranks_text_only_candidates_last() -> None:
    score = WithoutTextRanker(_Counting(), PER_SOURCE, retrieved=True).score(candidates())  # type: ignore[arg-type]
    assert score.tolist() == [1.0, -np.inf, -np.inf, 1.0, 0.0]
    score = WithoutTextRanker(_Counting(), PER_SOURCE, retrieved=False).score(candidates())  # type: ignore[arg-type]
    assert score.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
