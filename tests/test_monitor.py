"""`recsys monitor` against a tiny trained model: the same log raises nothing; a log with one feature moved, a
retrieval source emptied, lists collapsed onto popular items, or outcomes gone bad raises exactly the matching alert
and exits 3; the reports hold every table and plot their JSON names, offline, and never a user id."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from cli import main
from conftest_shop import sequences, write_unisrec
from conftest_text import make_tiny_encoder, small_toml
from recsys.candidates.retrieval import Retriever
from recsys.config import TrainConfig, load_config
from recsys.data import Col, Dataset, save_dataset
from recsys.errors import RecsysError
from recsys.evaluation.report import write_report
from recsys.loaders.amazon import ingest_amazon
from recsys.monitoring.checks import EXPLAINED, FEATURE_DRIFT, LISTS, METRICS, RETRIEVAL
from recsys.monitoring.config import MonitorConfig, load_monitor_config
from recsys.monitoring.drift import compare, summarise
from recsys.monitoring.monitor import ALERT_EXIT, monitor
from recsys.pipeline import train
from recsys.synth import SynthConfig, synthesize


def cli(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny interaction log (items in a chain, 400 users) and a model trained on it with the frozen tiny encoder."""
    root = tmp_path_factory.mktemp("monitor")
    (root / "small.toml").write_text(small_toml(make_tiny_encoder(root / "encoder")) + "\n[retrieval]\nper_source = 8\n")
    ingest_amazon(write_unisrec(root / "src", sequences(n_users=400, n_items=40, length=8, seed=2), 40), root / "data")
    ds = Dataset.load(root / "data")
    train(ds, root / "model", load_config(root / "small.toml", TrainConfig.for_dataset(ds.manifest)), show_progress=False)
    return {"root": root, "data": root / "data", "model": root / "model", "ds": ds}


def newer_log(world: dict[str, Any], name: str, items: pl.DataFrame | None = None, impressions: pl.DataFrame | None = None) -> Dataset:
    """The world's log with its items or impressions replaced: a newer log after an upstream change."""
    ds = world["ds"]
    new = Dataset(ds.items if items is None else items, ds.impressions if impressions is None else impressions, {**ds.manifest, "source": name})
    save_dataset(new, world["root"] / name)
    return Dataset.load(world["root"] / name)


def alert_set(result: Any) -> set[tuple[str, str]]:
    return {(a.check, a.subject) for a in result.alerts}


class Page(HTMLParser):
    """Tables (by id, with their cell texts), images (data-file -> src) and every URL-valued attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[str]] = {}
        self.images: dict[str, str] = {}
        self.urls: list[str] = []
        self._table: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        if tag == "img":
            self.images[a.get("data-file") or ""] = a.get("src") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._table is not None and data.strip():
            self.tables[self._table].append(data.strip())


def read_page(report_dir: Path, listing: dict[str, Any]) -> Page:
    """Parse report.html and check it holds every table and plot `listing` (the report's JSON) names, embedded, offline."""
    page = Page()
    page.feed((report_dir / "report.html").read_text())
    assert listing["tables"] and set(listing["tables"]) <= set(page.tables), (listing["tables"], list(page.tables))
    assert listing["plots"] and set(listing["plots"]) <= set(page.images)
    for name in listing["plots"]:
        src = page.images[name]
        assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]) == (report_dir / name).read_bytes()
    assert not [u for u in page.urls if not u.startswith("data:")], "the page must load nothing from anywhere"
    return page


def user_ids_in(ds: Dataset, *files: Path) -> list[str]:
    text = "\n".join(f.read_text() for f in files)
    return [u for u in ds.impressions[Col.USER].unique().to_list() if u in text]


def test_reference_is_an_artifact_with_every_distribution(world: dict[str, Any]) -> None:
    meta = json.loads((world["model"] / "model.json").read_text())
    ref = json.loads((world["model"] / "reference.json").read_text())
    assert "reference.json" in meta["artifacts"] and "reference" in meta["stages"]
    ranker = json.loads((world["model"] / "ranker" / "ranker.json").read_text())
    assert set(ref["features"]) == set(ranker["features"])
    assert set(ref["sources"]) == {"ease", "transitions", "cooccurrence", "text", "popularity"}
    assert all(s["mean"] > 0 for s in ref["sources"].values())
    assert len(ref["score"]["quantiles"]) == 100 and ref["score"]["n"] > 1000
    assert {"coverage", "ild@10", "novelty@10", "pop_percentile"} <= set(ref["lists"])
    # The ranker learned from dev targets: the metrics count only the users whose targets it never saw.
    assert set(ref["metrics"]) == {"recall@10", "ndcg@10"} and 50 <= ref["metrics"]["recall@10"]["n"] < ref["requests"]
    assert not user_ids_in(world["ds"], world["model"] / "reference.json")


def test_a_feature_without_values_drifts_only_when_values_appear() -> None:
    """A feature that is null for every reference candidate (say, how long ago the user had an item, when no
    candidate is one of the user's items) is stable while it stays null, and drifts when values appear."""
    empty = summarise(np.full(40, np.nan))
    assert empty["shares"] == [0.0, 1.0]  # the bins compare() cuts: one bin of values, then the nulls
    assert compare(empty, np.full(25, np.nan)).psi == 0.0
    appeared = compare(empty, np.r_[np.ones(10), np.full(15, np.nan)])
    assert appeared.psi > MonitorConfig().feature_psi and appeared.wasserstein == math.inf


def test_the_same_log_raises_nothing(world: dict[str, Any], tmp_path: Path) -> None:
    code, out = cli("monitor", world["model"], "--split", "dev", "--out", tmp_path / "same")
    assert code == 0 and "no alert" in out, out
    report = json.loads((tmp_path / "same" / "monitor.json").read_text())
    assert report["ok"] and report["alerts"] == []
    page = read_page(tmp_path / "same", report)
    assert page.tables["alerts"] == ["check", "subject", "statistic", "value", "threshold", "message"]  # the table is there, empty
    assert max(r["psi"] for r in report["checks"][FEATURE_DRIFT]) < 1e-6, [r for r in report["checks"][FEATURE_DRIFT] if r["psi"] > 1e-6]  # the same rows: the reference exactly
    # Another sample of the same users' distribution stays under every threshold too ...
    other = monitor(world["model"], world["ds"], split="dev", max_users=200, seed=1)
    assert other.ok, [a.message for a in other.alerts]
    assert 0 < max(r["psi"] for r in other.checks.rows[FEATURE_DRIFT]) < MonitorConfig().feature_psi
    # ... and the thresholds are what holds it back: near-zero ones (from a config file) fire on it.
    (tmp_path / "tight.toml").write_text("[monitor]\nfeature_psi = 0.001\nfeature_wasserstein = 0.001\n")
    tight = monitor(world["model"], world["ds"], split="dev", max_users=200, seed=1, cfg=load_monitor_config(tmp_path / "tight.toml"))
    assert {a.check for a in tight.alerts} == {FEATURE_DRIFT}
    base = TrainConfig.for_dataset(world["ds"].manifest)
    assert load_config(tmp_path / "tight.toml", base) == base  # one config file serves train too: [monitor] is the monitor's


def test_a_shifted_feature_raises_its_drift_alone(world: dict[str, Any], tmp_path: Path) -> None:
    """The catalogue feed lost every brand: the two brand features move, nothing else does."""
    newer_log(world, "no-brand", items=world["ds"].items.with_columns(pl.lit(None, dtype=pl.List(pl.String())).alias(Col.TAGS)))
    code, out = cli("monitor", world["model"], world["root"] / "no-brand", "--split", "dev", "--out", tmp_path / "r")
    assert code == ALERT_EXIT, out
    report = json.loads((tmp_path / "r" / "monitor.json").read_text())
    assert {(a["check"], a["subject"]) for a in report["alerts"]} == {(FEATURE_DRIFT, "brand_share"), (FEATURE_DRIFT, "same_brand_last")}
    assert all(a["value"] >= a["threshold"] for a in report["alerts"]) and "alert feature_drift: brand_share" in out
    page = read_page(tmp_path / "r", report)
    assert {"brand_share", "same_brand_last"} <= set(page.tables["alerts"])
    assert {r["feature"] for r in report["checks"][FEATURE_DRIFT]} <= set(page.tables["feature-drift"])
    assert not user_ids_in(world["ds"], *(tmp_path / "r").glob("*.json"), *(tmp_path / "r").glob("*.md"), tmp_path / "r" / "report.html")


@pytest.mark.parametrize("source", ["ease", "transitions"])
def test_an_emptied_source_raises_its_retrieval_alert_alone(world: dict[str, Any], source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One retrieval source returns nothing (a broken index, an empty model file): its alert, not the drift it causes."""
    views = Retriever._views

    class Empty:
        def __init__(self, view: Any) -> None:
            self.view = view

        def hit_keys(self) -> np.ndarray:
            return self.view.hit_keys()[:0]

        def __getattr__(self, name: str) -> Any:
            return getattr(self.view, name)

    monkeypatch.setattr(Retriever, "_views", lambda self, *args: {**views(self, *args), source: Empty(views(self, *args)[source])})
    result = monitor(world["model"], world["ds"], split="dev")
    assert alert_set(result) == {(RETRIEVAL, source)}, [a.message for a in result.alerts]
    assert "gave no candidate" in result.alerts[0].message
    row = next(r for r in result.checks.rows[RETRIEVAL] if r["source"] == source)
    assert row["mean (new)"] == 0 and row["mean (reference)"] > 0
    if source == "ease":
        # The main source: fewer sources agree on each candidate, and n_sources moves (PSI ~0.2 here). With thresholds
        # low enough for it to pass them, its drift is explained by the source's alert, not an alert of its own.
        tight = monitor(world["model"], world["ds"], split="dev", cfg=MonitorConfig(feature_psi=0.1, feature_wasserstein=0.1))
        n_sources = next(r for r in tight.checks.rows[FEATURE_DRIFT] if r["feature"] == "n_sources")
        assert n_sources["status"] == EXPLAINED and n_sources["psi"] >= 0.1 and alert_set(tight) == {(RETRIEVAL, source)}


def test_lists_collapsed_onto_popular_items_raise_list_alerts(world: dict[str, Any], tmp_path: Path) -> None:
    """The run served the 10 most popular items to everyone (a fallback gone wrong): coverage and popularity bias."""
    ds = world["ds"]
    popular = ds.split("train")[Col.CANDIDATES].explode().value_counts(sort=True)[Col.CANDIDATES].head(10).to_list()
    requests = ds.split("dev")[Col.IMPRESSION].to_list()
    pl.DataFrame({"request_id": np.repeat(requests, 10), "rank": np.tile(np.arange(1, 11), len(requests)),
                  Col.ITEM: popular * len(requests)}).write_parquet(tmp_path / "recs.parquet")
    code, out = cli("monitor", world["model"], "--split", "dev", "--recs", tmp_path / "recs.parquet", "--out", tmp_path / "r")
    assert code == ALERT_EXIT, out
    report = json.loads((tmp_path / "r" / "monitor.json").read_text())
    assert {a["check"] for a in report["alerts"]} == {LISTS}
    subjects = {a["subject"] for a in report["alerts"]}
    assert "popularity bias" in subjects and any(s.startswith("coverage") for s in subjects), subjects
    read_page(tmp_path / "r", report)


def test_outcomes_gone_bad_raise_the_metric_alert_alone(world: dict[str, Any]) -> None:
    """The labelled day's clicks went to other items than the lists': the replayed metrics fall, with their interval."""
    ds = world["ds"]
    rng = np.random.default_rng(0)
    dev = ds.impressions.filter(pl.col(Col.SPLIT) == "dev")
    others = [f"B{i:05d}" for i in rng.integers(0, 40, dev.height)]
    moved = dev.with_columns(pl.Series(Col.CANDIDATES, [[o] for o in others], dtype=pl.List(pl.String())))
    log = newer_log(world, "bad-day", impressions=pl.concat([ds.impressions.filter(pl.col(Col.SPLIT) != "dev"), moved]))
    result = monitor(world["model"], log, split="dev")
    assert {a.check for a in result.alerts} == {METRICS}, [a.message for a in result.alerts]
    recall = next(r for r in result.checks.rows[METRICS] if r["metric"] == "recall@10")
    assert recall["new"] < 0.5 * recall["reference"] and recall["drop (lower 95%)"] > 0


def test_impression_logs_monitor_their_logged_candidates(tmp_path: Path) -> None:
    synthesize(SynthConfig.preset("tiny", 3), tmp_path / "data", "dataset")
    (tmp_path / "small.toml").write_text(small_toml(make_tiny_encoder(tmp_path / "encoder")))
    ds = Dataset.load(tmp_path / "data")
    cfg = dataclasses.replace(load_config(tmp_path / "small.toml", TrainConfig.for_dataset(ds.manifest)), fine_tune=False)
    train(ds, tmp_path / "model", cfg, show_progress=False)
    ref = json.loads((tmp_path / "model" / "reference.json").read_text())
    assert set(ref["sources"]) == {"logged"} and {"auc", "mrr", "ndcg@10"} <= set(ref["metrics"])
    assert "ctx_n_candidates" in ref["features"]
    result = monitor(tmp_path / "model", ds, split="dev", out_dir=tmp_path / "r")
    assert result.ok and (tmp_path / "r" / "report.html").exists()
    (tmp_path / "requests.csv").write_text("user_id\n" + "\n".join(ds.split("dev")[Col.USER].head(3)) + "\n")
    with pytest.raises(RecsysError, match=r"requests.csv, row 1, field 'candidates'"):  # this model ranks the candidates a request brings
        monitor(tmp_path / "model", ds, requests=tmp_path / "requests.csv")


def test_a_requests_file_is_a_run_too(world: dict[str, Any], tmp_path: Path) -> None:
    """The nightly job's own requests (users only: retrieval gives the candidates, the log the histories), unlabelled."""
    users = world["ds"].split("test")[Col.USER].unique().sort()
    pl.DataFrame({Col.USER: users}).write_parquet(tmp_path / "requests.parquet")
    result = monitor(world["model"], world["ds"], requests=tmp_path / "requests.parquet", out_dir=tmp_path / "r")
    report = json.loads((tmp_path / "r" / "monitor.json").read_text())
    assert report["checks"][METRICS] == [] and report["lists"]["lists"] == users.len()
    assert {r["source"] for r in report["checks"][RETRIEVAL]} == {"ease", "transitions", "cooccurrence", "text", "popularity"}
    assert all(r["mean (new)"] > 0 for r in report["checks"][RETRIEVAL])
    assert "No labelled request" in (tmp_path / "r" / "report.md").read_text() and result.checks.rows[FEATURE_DRIFT]


def test_the_evaluate_report_page_holds_its_tables_and_plots(tmp_path: Path) -> None:
    table = {"full model": {"auc": 0.71, "ndcg@10": 0.45, "impressions": 10.0}, "random": {"auc": 0.5, "ndcg@10": 0.25, "impressions": 10.0}}
    by_group = pl.DataFrame({"bucket": ["0", "1-4"] * 2, "model": ["full model"] * 2 + ["random"] * 2, "auc": [0.6, 0.7, 0.5, 0.5]})
    write_report(tmp_path, title="Replay", table=table, importance={"f1": 3.0, "f2": 1.0}, by_group=by_group, ci95={"full model": {"auc": 0.01}})
    listing = json.loads((tmp_path / "metrics.json").read_text())
    page = read_page(tmp_path, listing)
    assert set(listing["plots"]) == {"metrics.png", "importance.png", "by_group.png"}
    assert {"full model", "random"} <= set(page.tables["metrics"]) and {"f1", "f2"} <= set(page.tables[listing["tables"][2]])


def test_bad_inputs_are_one_line(world: dict[str, Any], tmp_path: Path) -> None:
    pl.DataFrame({"request_id": ["r"], "item_id": ["B00001"]}).write_parquet(tmp_path / "recs.parquet")
    for args, expected in [(("--recs", tmp_path / "recs.parquet"), "recs.parquet, field 'rank': column is missing"),
                           (("--split", "bogus"), "unknown split 'bogus'"),
                           (("--split", "dev", "--requests", tmp_path / "recs.parquet"), "either --split or --requests")]:
        res = CliRunner().invoke(main, ["monitor", str(world["model"]), *map(str, args), "--out", str(tmp_path / "r")])
        assert res.exit_code == 1 and res.output.count("\n") == 1 and expected in res.output, res.output
        assert not (tmp_path / "r" / "monitor.json").exists()
    (tmp_path / "bad.toml").write_text("[monitor]\nfeature_pis = 0.2\n")
    with pytest.raises(RecsysError, match=r"bad.toml \[monitor\]: unknown setting\(s\) \['feature_pis'\]"):
        load_monitor_config(tmp_path / "bad.toml")
    old = tmp_path / "old-model"
    shutil.copytree(world["model"], old)
    meta = json.loads((old / "model.json").read_text())
    del meta["artifacts"]["reference.json"]  # a model trained before monitoring existed
    (old / "model.json").write_text(json.dumps(meta))
    (old / "reference.json").unlink()
    with pytest.raises(RecsysError, match="has no reference.json"):
        monitor(old, world["ds"], split="dev")


def test_the_page_loads_in_a_headless_browser(world: dict[str, Any], tmp_path: Path) -> None:
    """Rendered by Chromium (Debian: apt-get install chromium-headless-shell), offline: every table and plot, no console error."""
    from matplotlib.image import imread

    browser = next((b for b in ("chromium-headless-shell", "chromium", "chromium-browser") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser (apt-get install chromium-headless-shell) on this machine")
    result = monitor(world["model"], world["ds"], split="dev", out_dir=tmp_path)
    listing = json.loads((tmp_path / "monitor.json").read_text())
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    run = subprocess.run([shutil.which(browser) or browser, *flags, "--dump-dom", (tmp_path / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=True)
    assert all(f'id="{t}"' in run.stdout for t in listing["tables"]) and all(f'data-file="{p}"' in run.stdout for p in listing["plots"])
    assert "CONSOLE" not in run.stderr, run.stderr[-2000:]
    subprocess.run([shutil.which(browser) or browser, *flags, "--window-size=1000,2000", f"--screenshot={tmp_path / 'shot.png'}",
                    (tmp_path / "report.html").as_uri()], capture_output=True, timeout=120, check=True)
    assert imread(tmp_path / "shot.png").std() > 0.05 and result.ok  # something was drawn
