"""Feature families against values computed by hand on the log of conftest_features.py."""

from __future__ import annotations

import ast
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from conftest_features import at, base_log, by_key, impression, write_log

from features.build import FeatureConfig, build_features
from features.registry import BEHAVIOUR, CLICK_PROB, FAMILIES, FEATURES, PAIRS, RETRIEVAL, TEXT, TEXT_FEATURES, describe, feature_names, ranker_features
from recsys.data import IMPRESSIONS_SCHEMA, Col
from recsys.errors import DataError, RecsysError

PRIOR, WEIGHT = 0.05, 20.0  # FeatureConfig defaults


def smoothed(clicks: int, impressions: int) -> float:
    return (clicks + PRIOR * WEIGHT) / (impressions + WEIGHT)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    tmp = tmp_path_factory.mktemp("features")
    build_features(write_log(tmp / "ds", base_log()), tmp / "f.parquet", show_progress=False)
    return pl.read_parquet(tmp / "f.parquet")


def test_layout_keys_order_and_dtypes(table: pl.DataFrame) -> None:
    assert table.columns[:7] == [Col.IMPRESSION, Col.USER, Col.ITEM, Col.POSITION, Col.TIME, Col.SPLIT, Col.LABEL]
    assert table.schema[Col.LABEL] == pl.Int8()
    names = feature_names(table.columns)
    assert names == table.columns[7:]  # only keys and features, features in registry order
    assert {f.name: f.dtype for f in describe(names)} == {n: table.schema[n] for n in names}
    # ordered by (timestamp, impression_id, position); the empty impression has no rows
    assert table.select(Col.IMPRESSION).unique(maintain_order=True)[Col.IMPRESSION].to_list() == ["e1", "e2", "e3", "e4", "cold", "q"]
    assert table.filter(pl.col(Col.IMPRESSION) == "q")[Col.POSITION].to_list() == [0, 1, 2, 3]
    assert table.filter(pl.col(Col.IMPRESSION) == "q")[Col.LABEL].null_count() == 4
    assert table.filter(pl.col(Col.IMPRESSION) == "e4")[Col.LABEL].to_list() == [0, 0, 1]


def test_item_family_by_hand(table: pl.DataFrame) -> None:
    rows = by_key(table)
    a, b, c, zz = (rows[("q", i)] for i in ("a", "b", "c", "zz"))
    # a at 26 h: impressions at 0, 0, 5, 20; clicks at 0 and 5
    assert (a["item_impressions_1h"], a["item_impressions_6h"], a["item_impressions_24h"], a["item_impressions_all"]) == (0, 1, 2, 4)
    assert (a["item_clicks_1h"], a["item_clicks_6h"], a["item_clicks_24h"], a["item_clicks_all"]) == (0, 0, 1, 2)
    assert a["item_ctr_all"] == pytest.approx(smoothed(2, 4))
    assert a["item_ctr_24h"] == pytest.approx(smoothed(1, 2))
    assert a["item_ctr_1h"] == pytest.approx(PRIOR)
    assert a["item_hours_since_first_seen"] == pytest.approx(26)
    assert a["item_hours_since_published"] == pytest.approx(36)
    # c: impressions at 0 (click), 5, 20 (click)
    assert (c["item_impressions_6h"], c["item_clicks_6h"], c["item_impressions_24h"], c["item_clicks_24h"]) == (1, 1, 2, 1)
    assert (c["item_impressions_all"], c["item_clicks_all"]) == (3, 2)
    # category news = a + b: 6 impressions, 2 clicks; politics = a only; economy = b: 2 impressions, 0 clicks
    assert a["item_category_ctr"] == pytest.approx(smoothed(2, 6))
    assert b["item_category_ctr"] == pytest.approx(smoothed(2, 6))
    assert a["item_subcategory_ctr"] == pytest.approx(smoothed(2, 4))
    assert b["item_subcategory_ctr"] == pytest.approx(smoothed(0, 2))
    assert c["item_category_ctr"] == pytest.approx(smoothed(2, 3))
    assert b["item_hours_since_published"] is None
    # zz is not in items.parquet: no metadata, no events, no crash
    assert zz["item_impressions_all"] == 0 and zz["item_clicks_24h"] == 0
    assert zz["item_hours_since_first_seen"] is None and zz["item_hours_since_published"] is None
    assert zz["item_category_ctr"] is None and zz["item_subcategory_ctr"] is None


def test_item_windows_at_earlier_times(table: pl.DataFrame) -> None:
    rows = by_key(table)
    # e3 at 5 h sees both impressions of a at 0 h (one click) in every window but 1 h
    e3a = rows[("e3", "a")]
    assert (e3a["item_impressions_1h"], e3a["item_impressions_6h"], e3a["item_impressions_all"]) == (0, 2, 2)
    assert (e3a["item_clicks_6h"], e3a["item_clicks_all"]) == (1, 1)
    assert e3a["item_hours_since_first_seen"] == pytest.approx(5)
    # ties: e1 and e2 are both at 0 h, so neither sees the other (nor itself)
    for key in (("e1", "a"), ("e2", "a"), ("e2", "c")):
        assert rows[key]["item_impressions_all"] == 0 and rows[key]["item_hours_since_first_seen"] is None


def test_user_family_by_hand(table: pl.DataFrame) -> None:
    rows = by_key(table)
    qa, qb, qc, qzz = (rows[("q", i)] for i in ("a", "b", "c", "zz"))
    # u1 before 26 h: impressions e1, e3; clicks on a at 0 h and 5 h; history [b]
    assert (qa["user_history_len"], qa["user_impressions_before"], qa["user_clicks_before"]) == (1, 2, 2)
    assert qa["user_hours_since_last_click"] == pytest.approx(21)
    # shares of the history list [b] (news/economy); the log's clicks on a do not count twice
    assert qa["user_category_share"] == pytest.approx(1.0)
    assert qa["user_subcategory_share"] == pytest.approx(0.0)
    assert qb["user_subcategory_share"] == pytest.approx(1.0)
    assert qc["user_category_share"] == pytest.approx(0.0)
    assert qzz["user_category_share"] is None
    # u2 at 20 h: history [c] + click on c at 0 h
    e4c = rows[("e4", "c")]
    assert (e4c["user_impressions_before"], e4c["user_clicks_before"], e4c["user_history_len"]) == (1, 1, 1)
    assert e4c["user_category_share"] == pytest.approx(1.0)
    assert e4c["user_hours_since_last_click"] == pytest.approx(20)


def test_user_without_history(table: pl.DataFrame) -> None:
    cold = by_key(table)[("cold", "a")]
    assert (cold["user_history_len"], cold["user_impressions_before"], cold["user_clicks_before"]) == (0, 0, 0)
    assert cold["user_hours_since_last_click"] is None
    assert cold["user_category_share"] is None  # no history: no share, not 0/0
    assert cold["item_clicks_all"] == 2  # item features do not depend on the user


def test_context_family_by_hand(table: pl.DataFrame) -> None:
    q = table.filter(pl.col(Col.IMPRESSION) == "q")
    assert q["ctx_n_candidates"].to_list() == [4] * 4
    assert q["ctx_hour"].to_list() == [2] * 4  # 26 h after midnight
    # clicks in the last 24 h: a 1, b 0, c 1, zz 0
    assert q["ctx_popularity_rank"].to_list() == [1, 3, 1, 3]
    # ages: a 36 h (published), b 26 h and c 26 h (first seen), zz never seen (newest)
    assert q["ctx_freshness_rank"].to_list() == [4, 2, 2, 1]


def test_text_features_join_when_given(tmp_path: Path, table: pl.DataFrame) -> None:
    ds = write_log(tmp_path / "ds", base_log())
    text = pl.DataFrame({Col.IMPRESSION: ["q", "q", "e1"], Col.ITEM: ["a", "c", "b"]}).with_columns(
        *(pl.Series(name, [0.5 + i, 0.25, -1.0], dtype=pl.Float32()) for i, name in enumerate(TEXT_FEATURES))
    )
    text.write_parquet(tmp_path / "text.parquet")
    build_features(ds, tmp_path / "f.parquet", text_features=tmp_path / "text.parquet", show_progress=False)
    out = pl.read_parquet(tmp_path / "f.parquet")
    assert feature_names(out.columns)[-len(TEXT_FEATURES):] == list(TEXT_FEATURES)
    rows = by_key(out)
    assert rows[("q", "a")]["text_score"] == pytest.approx(0.5)
    assert rows[("q", "a")]["text_recent_sim"] == pytest.approx(3.5)
    assert rows[("e1", "b")]["text_max_sim"] == pytest.approx(-1.0)
    assert rows[("q", "b")]["text_score"] is None  # no text row: null, the row is kept
    assert out.height == table.height
    assert out.drop(TEXT_FEATURES).equals(table)  # text changes nothing else
    assert not set(TEXT_FEATURES) & set(table.columns)  # absent when not given


def test_requests_without_labels_and_pass_through(tmp_path: Path) -> None:
    ds = write_log(tmp_path / "ds", base_log())
    requests = pl.DataFrame(
        [impression("r1", "u1", 30, [], ["c", "a"], None, "test")], schema=IMPRESSIONS_SCHEMA
    ).with_columns(
        pl.Series(Col.CLICK_PROBS, [[0.25, 0.75]], dtype=pl.List(pl.Float32())),
        pl.Series(Col.SAMPLED, [[False, True]], dtype=pl.List(pl.Boolean())),
    )
    requests.write_parquet(tmp_path / "requests.parquet")
    summary = build_features(ds, tmp_path / "f.parquet", rows=tmp_path / "requests.parquet", show_progress=False)
    out = pl.read_parquet(tmp_path / "f.parquet")
    assert summary.rows == out.height == 2 and summary.impressions == 1
    assert out[Col.ITEM].to_list() == ["c", "a"]
    assert out[CLICK_PROB].to_list() == [0.25, 0.75] and out[Col.SAMPLED].to_list() == [False, True]
    assert CLICK_PROB not in feature_names(out.columns) and Col.SAMPLED not in feature_names(out.columns)
    assert out[Col.LABEL].null_count() == 2
    # the whole log is before 30 h: c has 3 impressions / 2 clicks, u1 2 clicks, last at 5 h
    assert out["item_clicks_all"].to_list() == [2, 2] and out["item_impressions_all"].to_list() == [3, 4]
    assert out["user_clicks_before"].to_list() == [2, 2]
    assert out["user_hours_since_last_click"].to_list() == [25.0, 25.0]


def test_interactions_log_has_no_impression_features(tmp_path: Path) -> None:
    log = [
        impression("i1", "u1", 0, [], ["a"], [1]),
        impression("i2", "u2", 1, [], ["a"], [1]),
        impression("i3", "u1", 3, ["a"], ["b"], [1]),
    ]
    ds = write_log(tmp_path / "ds", log, kind="interactions")
    summary = build_features(ds, tmp_path / "f.parquet", show_progress=False)
    out = by_key(pl.read_parquet(tmp_path / "f.parquet"))
    assert not [f for f in describe(summary.features) if f.needs_impressions]
    assert "item_impressions_all" not in out[("i1", "a")] and "item_ctr_all" not in out[("i1", "a")]
    assert out[("i2", "a")]["item_clicks_all"] == 1 and out[("i2", "a")]["item_clicks_1h"] == 1
    assert out[("i3", "b")]["user_clicks_before"] == 1
    assert out[("i3", "b")]["user_category_share"] == pytest.approx(1.0)  # history a is news, b is news
    assert out[("i3", "b")]["user_subcategory_share"] == pytest.approx(0.0)


def test_empty_log_and_empty_rows(tmp_path: Path) -> None:
    summary = build_features(write_log(tmp_path / "ds", []), tmp_path / "f.parquet", show_progress=False)
    out = pl.read_parquet(tmp_path / "f.parquet")
    assert summary.rows == out.height == 0
    assert feature_names(out.columns) == summary.features and len(summary.features) > 20
    # rows against an empty log: every behavioural count is 0, CTRs are the prior
    pl.DataFrame([impression("r", "u", 1, ["a"], ["a", "zz"], None, "test")], schema=IMPRESSIONS_SCHEMA).write_parquet(tmp_path / "r.parquet")
    build_features(tmp_path / "ds", tmp_path / "g.parquet", rows=tmp_path / "r.parquet", show_progress=False)
    out = pl.read_parquet(tmp_path / "g.parquet")
    assert out["item_clicks_all"].to_list() == [0, 0] and out["user_clicks_before"].to_list() == [0, 0]
    assert out["item_ctr_6h"].to_list() == pytest.approx([PRIOR, PRIOR])
    assert out["user_category_share"].to_list() == [1.0, None]  # history [a] is news; zz has no category


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="no manifest.json"):
        build_features(tmp_path, tmp_path / "f.parquet", show_progress=False)
    ds = write_log(tmp_path / "ds", base_log())
    pl.DataFrame({Col.IMPRESSION: ["x"]}).write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=Col.USER):
        build_features(ds, tmp_path / "f.parquet", rows=tmp_path / "bad.parquet", show_progress=False)
    assert not (tmp_path / "f.parquet").exists()  # never a half-written output
    with pytest.raises(RecsysError, match="windows_hours"):
        FeatureConfig(windows_hours=(6, 6))
    with pytest.raises(RecsysError, match="memory_limit"):
        FeatureConfig(memory_limit="lots")


def test_custom_windows_are_registered(tmp_path: Path) -> None:
    cfg = FeatureConfig(windows_hours=(48, 2), memory_limit="512MB", threads=1, temp_dir=str(tmp_path))
    assert cfg.windows_hours == (2, 48)
    build_features(write_log(tmp_path / "ds", base_log()), tmp_path / "f.parquet", cfg, show_progress=False)
    out = pl.read_parquet(tmp_path / "f.parquet")
    names = feature_names(out.columns)
    assert names[:3] == ["item_impressions_2h", "item_clicks_2h", "item_ctr_2h"] and "item_clicks_48h" in names
    qa = by_key(out)[("q", "a")]
    assert (qa["item_impressions_2h"], qa["item_impressions_48h"], qa["item_clicks_48h"]) == (0, 4, 2)
    assert qa["ctx_popularity_rank"] == 1  # ranks use the longest window (48 h)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("recsys-features-")] == []  # scratch removed


def test_registry_documents_every_feature() -> None:
    assert len({f.name for f in FEATURES}) == len(FEATURES)
    assert all(f.description and f.group in FAMILIES for f in FEATURES)
    assert feature_names([Col.LABEL, "text_score", "item_clicks_all", "item_clicks_3h", "unknown"]) == [
        "item_clicks_3h", "item_clicks_all", "text_score"]
    columns = [Col.LABEL, "text_score", "item_clicks_all", "src_ease_rank", "src_text_score", "text_last_frozen", "trans_last"]
    assert ranker_features(columns, (BEHAVIOUR, TEXT)) == ["item_clicks_all", "text_score"]
    assert ranker_features(columns, (RETRIEVAL, PAIRS)) == ["src_ease_rank", "src_text_score", "trans_last", "text_last_frozen"]
    # The "without text" baseline drops every feature read from item text, whatever its family.
    assert ranker_features(columns, FAMILIES, text=False) == ["item_clicks_all", "src_ease_rank", "trans_last"]


def test_cli_writes_table_and_summary(tmp_path: Path) -> None:
    from cli import main

    ds = write_log(tmp_path / "ds", base_log())
    result = CliRunner().invoke(main, ["features", str(ds), "--out", str(tmp_path / "f.parquet"), "--memory-limit", "1GB"])
    assert result.exit_code == 0, result.output
    assert "14 rows, 6 impressions" in result.output and "null shares:" in result.output
    assert pl.read_parquet(tmp_path / "f.parquet").height == 14
    assert (tmp_path / "f.json").exists()


def test_text_feature_names_match_the_text_model() -> None:
    # Read, not imported: importing the text model pulls in torch, which costs seconds.
    source = ast.parse((Path(__file__).parents[1] / "recsys" / "text" / "features.py").read_text())
    written = [ast.literal_eval(node.value) for node in source.body
               if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "TEXT_FEATURES" for t in node.targets)]
    assert written == [TEXT_FEATURES]


def test_candidate_shown_twice_keeps_one_row_per_position(tmp_path: Path) -> None:
    ds = write_log(tmp_path / "ds", base_log())
    pl.DataFrame([impression("r", "u1", 30, ["b"], ["c", "a", "c"], None, "test")], schema=IMPRESSIONS_SCHEMA).write_parquet(tmp_path / "r.parquet")
    text = pl.DataFrame({Col.IMPRESSION: ["r", "r"], Col.ITEM: ["c", "c"], TEXT_FEATURES[0]: [0.5, 0.5]})
    text.write_parquet(tmp_path / "t.parquet")
    build_features(ds, tmp_path / "f.parquet", rows=tmp_path / "r.parquet", text_features=tmp_path / "t.parquet", show_progress=False)
    out = pl.read_parquet(tmp_path / "f.parquet")
    assert out[Col.POSITION].to_list() == [0, 1, 2] and out[Col.ITEM].to_list() == ["c", "a", "c"]
    assert out[TEXT_FEATURES[0]].to_list() == [0.5, None, 0.5]
    assert TEXT_FEATURES[1] not in out.columns  # only the text features the file provides
    assert out["ctx_n_candidates"].to_list() == [3, 3, 3]
