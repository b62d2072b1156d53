"""The data commands of ``recsys``: ``ingest`` (MIND, items + events, the UniSRec layout), ``synth`` and ``stats``.

Registered on the root group by ``cli.py``; like every command, each reads its options, makes one library call and
prints a short summary.
"""

from __future__ import annotations

from pathlib import Path

import click

from recsys.cli_errors import given_flags


def _ingested(path: Path, manifest: dict) -> None:
    skipped, missing = manifest["skipped"], manifest["missing_item_ids"]
    per_split = ", ".join(f"{name} {row['impressions']}" for name, row in manifest["splits"].items())
    click.echo(
        f"{path}: {manifest['items']} items, {manifest['impressions']} {manifest['kind']} ({per_split}); "
        f"skipped {skipped['total']} rows; {missing['distinct']} item ids missing from items"
    )


@click.group()
def ingest() -> None:
    """Turn raw logs (MIND, or items + events) into a dataset directory."""


@ingest.command("mind")
@click.option("--train", "train", type=click.Path(exists=True, file_okay=False, path_type=Path), help="MIND train directory.")
@click.option("--dev", "dev", type=click.Path(exists=True, file_okay=False, path_type=Path), help="MIND dev directory.")
@click.option("--test", "test", type=click.Path(exists=True, file_okay=False, path_type=Path), help="MIND test directory (labels optional).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset directory to write.")
@click.option("--skip-bad-rows", is_flag=True, help="Skip and count bad rows (rejects.parquet) instead of stopping.")
def ingest_mind(train: Path | None, dev: Path | None, test: Path | None, out: Path, skip_bad_rows: bool) -> None:
    """Ingest MIND news.tsv/behaviors.tsv directories, one per split."""
    from recsys.loaders import MindSource, load

    splits = {name: d for name, d in (("train", train), ("dev", dev), ("test", test)) if d is not None}
    result = load(MindSource(splits, "skip" if skip_bad_rows else "raise"), out)
    _ingested(result.path, result.manifest)


@ingest.command("events")
@click.option("--items", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Items table (CSV/TSV/Parquet).")
@click.option("--events", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Events log (CSV/TSV/Parquet).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset directory to write.")
@click.option("--session-gap", default=30.0, show_default=True, help="Minutes of silence that end an impression (no request_id).")
@click.option("--dev-fraction", default=0.1, show_default=True, help="Latest share of impressions for dev (no split column).")
@click.option("--test-fraction", default=0.0, show_default=True, help="Latest share for test, after dev (no split column).")
@click.option("--max-history", default=50, show_default=True, help="Most recent clicks kept as history: what a model reads (masking and history lengths use the whole log).")
@click.option("--skip-bad-rows", is_flag=True, help="Skip and count bad rows (rejects.parquet) instead of stopping.")
def ingest_events(items: Path, events: Path, out: Path, session_gap: float, dev_fraction: float, test_fraction: float, max_history: int, skip_bad_rows: bool) -> None:
    """Ingest an items table and an events log (impression/click/purchase events)."""
    from recsys.loaders import EventsConfig, EventsSource, load

    cfg = EventsConfig(session_gap, dev_fraction, max_history, "skip" if skip_bad_rows else "raise", test_fraction)
    result = load(EventsSource(items, events, cfg), out)
    _ingested(result.path, result.manifest)


@ingest.command("amazon")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset directory to write.")
@click.option("--name", default=None, help="Dataset name NAME of NAME.item2index etc. [default: the only one in SRC].")
def ingest_amazon_cmd(src: Path, out: Path, name: str | None) -> None:
    """Ingest an interaction-only shop log in the UniSRec layout (e.g. Amazon Scientific): .inter, .text, .item2index."""
    from recsys.loaders.amazon import ingest_amazon

    _ingested(out, ingest_amazon(src, out, name).manifest)


@click.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--kind", default="news", show_default=True, type=click.Choice(["news", "shop"]),
              help="news: an impression log whose clicks depend on item text; shop: an items table + events log for `recsys ingest events`.")
@click.option("--size", default="tiny", show_default=True, type=click.Choice(["tiny", "sample", "small", "medium", "large"]), help="News: the preset size.")
@click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same data).")
@click.option("--format", "fmt", default="dataset", show_default=True, type=click.Choice(["dataset", "mind"]), help="News: a dataset directory or MIND files.")
@click.option("--test-fraction", default=0.0, show_default=True, help="News: latest share of impressions held out unlabelled as test.")
@click.option("--users", default=10_000, show_default=True, help="Shop: users (each has an event).")
@click.option("--items", default=5_000, show_default=True, help="Shop: catalogue items.")
@click.option("--events", default=100_000, show_default=True, help="Shop: events.")
@click.option("--days", default=60, show_default=True, help="Shop: days the events span.")
def synth(out: Path, kind: str, size: str, seed: int, fmt: str, test_fraction: float, users: int, items: int, events: int, days: int) -> None:
    """Generate a synthetic log: news impressions whose clicks depend on text, or a shop's items + events."""
    misplaced = given_flags("size", "fmt", "test_fraction") if kind == "shop" else given_flags("users", "items", "events", "days")
    if misplaced:
        raise click.UsageError(f"{', '.join(misplaced)}: only for --kind {'news' if kind == 'shop' else 'shop'}")
    if kind == "shop":
        from recsys.synth_shop import EVENTS_FILE, ITEMS_FILE, ShopConfig, write_shop

        summary = write_shop(ShopConfig(n_users=users, n_items=items, n_events=events, days=days, seed=seed), out)
        click.echo(f"{out}: {summary['items']} items, {summary['users']} users, {summary['events']} events (shop, seed {seed}); "
                   f"next: recsys ingest events --items {out / ITEMS_FILE} --events {out / EVENTS_FILE} --out DATASET")
        return
    from recsys.synth import SynthConfig, synthesize

    ds = synthesize(SynthConfig.preset(size, seed, test_fraction=test_fraction), out, fmt)
    click.echo(f"{out}: {ds.items.height} items, {ds.impressions.height} impressions ({fmt}, size {size}, seed {seed})")


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(dataset: Path, as_json: bool) -> None:
    """Counts, time range, CTR, list lengths and id coverage of a dataset."""
    from recsys.stats import compute_stats, render_stats

    figures = compute_stats(dataset)
    if as_json:
        import json

        click.echo(json.dumps(figures, indent=2, default=str))
    else:
        click.echo(render_stats(figures))
