"""Synthetic shop generator: determinism, sizes, heavy tails, transitions with signal, text that names the topic, ingest."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from recsys.data import Col, Split, load_dataset
from recsys.errors import RecsysError
from recsys.loaders import EventsConfig, load_events
from recsys.synth_shop import EVENTS_FILE, ITEMS_FILE, NEXT_ITEMS, SUCCESSORS_FILE, Shop, ShopConfig, generate_shop, write_shop
from recsys.synth_vocab import TOPICS

CFG = ShopConfig(n_users=3000, n_items=2000, n_events=40_000, seed=7)


@pytest.fixture(scope="module")
def shop() -> Shop:
    return generate_shop(CFG)


@pytest.fixture(scope="module")
def pairs(shop: Shop) -> pl.DataFrame:
    """Each event with the same user's previous item (``prev``) and the seconds since it."""
    return (
        shop.events.with_row_index("row")
        .sort(Col.USER, Col.TIME, "row")
        .with_columns(pl.col(Col.ITEM).shift().over(Col.USER).alias("prev"), pl.col(Col.TIME).diff().over(Col.USER).dt.total_seconds().alias("gap"))
        .drop_nulls("prev")
    )


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    small = ShopConfig(n_users=300, n_items=200, n_events=3000, seed=1)
    write_shop(small, tmp_path / "a")
    write_shop(small, tmp_path / "b")
    for name in (ITEMS_FILE, EVENTS_FILE, SUCCESSORS_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    write_shop(ShopConfig(n_users=300, n_items=200, n_events=3000, seed=2), tmp_path / "c")
    assert not pl.read_parquet(tmp_path / "a" / EVENTS_FILE).equals(pl.read_parquet(tmp_path / "c" / EVENTS_FILE))
    assert pl.read_parquet(tmp_path / "a" / ITEMS_FILE)[Col.TITLE].to_list() != pl.read_parquet(tmp_path / "c" / ITEMS_FILE)[Col.TITLE].to_list()


def test_written_files_hold_the_generated_tables(tmp_path: Path) -> None:
    small = ShopConfig(n_users=300, n_items=200, n_events=3000, seed=3)
    write_shop(small, tmp_path)
    mem = generate_shop(small)
    assert pl.read_parquet(tmp_path / EVENTS_FILE).equals(mem.events)
    assert pl.read_parquet(tmp_path / ITEMS_FILE).equals(mem.items)


def test_sizes_columns_and_times(shop: Shop, pairs: pl.DataFrame) -> None:
    assert shop.items.height == shop.items[Col.ITEM].n_unique() == CFG.n_items
    assert shop.events.height == CFG.n_events
    assert shop.events[Col.USER].n_unique() == CFG.n_users  # every user has an event
    assert shop.events[Col.ITEM].is_in(shop.items[Col.ITEM].implode()).all()
    assert shop.events.schema == pl.Schema({Col.USER: pl.String(), Col.ITEM: pl.String(), Col.TIME: pl.Datetime("us")})
    assert shop.events[Col.TIME].is_sorted()
    start = datetime.fromisoformat(CFG.start)
    assert start <= shop.events[Col.TIME].min() and shop.events[Col.TIME].max() < start + timedelta(days=CFG.days + 1)
    assert (pairs["gap"] >= 1).all()  # strictly increasing per user: the sequence order is the time order
    assert 0.5 < (pairs["gap"] < 1800).mean() < 0.95  # sessions: most steps minutes apart, some days apart  # type: ignore[operator]


def test_popularity_and_activity_are_heavy_tailed(shop: Shop) -> None:
    counts = shop.events[Col.ITEM].value_counts()["count"].sort(descending=True)
    assert counts.head(CFG.n_items // 100).sum() / CFG.n_events > 0.1  # the top 1% of items: 10 times their share
    assert counts.head(CFG.n_items // 10).sum() / CFG.n_events > 0.4
    per_user = shop.events[Col.USER].value_counts()["count"]
    assert per_user.median() < 0.6 * per_user.mean() and (per_user <= 5).mean() > 0.3  # type: ignore[operator]  # many light users
    assert per_user.max() > 20 * per_user.median()  # type: ignore[operator]


def test_transitions_carry_signal(shop: Shop, pairs: pl.DataFrame) -> None:
    """The next item is a successor of the previous one far more often than chance (or than after a random item)."""
    succ = shop.successors.rename({Col.ITEM: "prev"})
    hit = pairs.join(succ, on="prev").select(pl.col(NEXT_ITEMS).list.contains(pl.col(Col.ITEM))).to_series().mean()
    shuffled = pairs.with_columns(pl.col("prev").shuffle(seed=0))
    control = shuffled.join(succ, on="prev").select(pl.col(NEXT_ITEMS).list.contains(pl.col(Col.ITEM))).to_series().mean()
    assert hit > 0.2  # type: ignore[operator]
    assert hit > 20 * max(control, CFG.successors / CFG.n_items)  # type: ignore[operator]


def _repeat_share(events: pl.DataFrame) -> float:
    return events.select(~pl.struct(Col.USER, Col.ITEM).is_first_distinct()).to_series().mean()  # type: ignore[return-value]


def test_repeats_rare_and_interests_few(shop: Shop) -> None:
    # About 1% at 1M events; more in this small catalogue with its heavy users, and far more without redraws.
    assert _repeat_share(shop.events) < 0.08
    assert _repeat_share(shop.events) < 0.5 * _repeat_share(generate_shop(replace(CFG, repeat_redraws=0)).events)
    ev = shop.events.join(shop.items.select(Col.ITEM, Col.CATEGORY), on=Col.ITEM)
    heavy = ev.filter(pl.len().over(Col.USER) >= 30)
    top3 = heavy.group_by(Col.USER, Col.CATEGORY).len().sort("len", descending=True).group_by(Col.USER).agg(pl.col("len").head(3).sum() / pl.col("len").sum())
    assert heavy[Col.USER].n_unique() > 20 and top3["len"].mean() > 0.85  # type: ignore[operator]


def test_text_reveals_the_topic(shop: Shop) -> None:
    first = shop.items.select(Col.CATEGORY, Col.SUBCATEGORY, pl.col(Col.TITLE).str.split(" ").list.first().str.to_lowercase().alias("w")).rows()
    assert all(w in TOPICS[cat][0].split() for cat, _, w in first)
    assert all(sub in TOPICS[cat][1] for cat, sub, _ in first)
    assert shop.items[Col.CATEGORY].n_unique() == len(TOPICS)
    assert shop.items[Col.ABSTRACT].str.split(" ").list.len().min() >= 10  # type: ignore[operator]


def test_ingest_gives_an_interactions_dataset(tmp_path: Path) -> None:
    small = ShopConfig(n_users=300, n_items=200, n_events=3000, seed=4)
    write_shop(small, tmp_path / "raw")
    result = load_events(tmp_path / "raw" / ITEMS_FILE, tmp_path / "raw" / EVENTS_FILE, tmp_path / "ds", EventsConfig(dev_fraction=0.1, test_fraction=0.1))
    ds = load_dataset(result.path)
    assert ds.manifest["kind"] == "interactions"
    assert ds.items.height == 200 and ds.impressions.height == 3000
    assert ds.manifest["missing_item_ids"]["distinct"] == 0 and ds.manifest["skipped"]["total"] == 0
    assert set(ds.impressions[Col.SPLIT].unique()) == set(Split.ALL)
    assert ds.impressions[Col.HISTORY].list.len().max() > 0  # type: ignore[operator]


def test_cli_synth_shop_and_misplaced_options(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["synth", str(tmp_path / "shop"), "--kind", "shop", "--users", "50", "--items", "40", "--events", "400", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "40 items, 50 users, 400 events (shop, seed 2)" in res.output
    assert pl.read_parquet(tmp_path / "shop" / EVENTS_FILE).height == 400
    res = runner.invoke(main, ["synth", str(tmp_path / "x"), "--kind", "shop", "--size", "sample"])
    assert res.exit_code == 1 and "error: --size: only for --kind news" in res.output
    res = runner.invoke(main, ["synth", str(tmp_path / "x"), "--users", "5"])
    assert res.exit_code == 1 and "error: --users: only for --kind shop" in res.output
    res = runner.invoke(main, ["synth", str(tmp_path / "x"), "--kind", "shop", "--users", "50", "--events", "10"])
    assert res.exit_code == 1 and "--events must be >= --users" in res.output


def test_config_checks() -> None:
    with pytest.raises(RecsysError, match="--items must be >= 12"):
        ShopConfig(n_items=5)
    with pytest.raises(RecsysError, match="p_next"):
        ShopConfig(p_next=1.5)
