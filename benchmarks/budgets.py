"""Learning curves behind the default budgets of :mod:`recsys.budget`: quality against the data a stage is given.

* ``text``    impression logs: the fine-tune's ``text.max_train_impressions`` (one epoch) against the dev AUC
              of the fine-tuned text score alone and of the full model (synthetic log, ``--size``);
* ``ranker``  any log: ``ranker_users`` against the model's dev metric (AUC for impression logs, NDCG@10 over
              the catalogue for interaction logs), the text encoder frozen so that only the ranker's data moves.
* ``ranker-table``  the ranker alone, on a trained model's ``features.parquet``: for each ``ranker_users``, the
              ranker fitted on that seeded sample of users' groups and scored on one fixed held-out share of the
              table (the later groups, as training holds them out): nDCG@10 and AUC of the clicked candidates
              among each group's candidates, with 95% intervals, and the fit time. Minutes, where ``ranker``
              retrains and re-evaluates the whole model per point.
* ``calibrate``  the estimates :func:`recsys.budget.plan` prints beside what each stage took (``stages.json``)
              for trained models (``--model M --dataset D`` pairs): the check on the rates behind the estimates.

A budget is where the curve flattens: past it, more data buys less than the metric's own 95% interval.
Each point trains a fresh model into a temporary directory; the table goes to ``benchmarks/results/``.

Run::

    .venv/bin/python -m benchmarks.budgets text --size small --points 1000 2000 4000 8000
    .venv/bin/python -m benchmarks.budgets ranker --dataset runs/amazon/data --points 1000 2000 4000 0
    .venv/bin/python -m benchmarks.budgets ranker-table --model runs/amazon/model --points 2500 5000 10000 0
    .venv/bin/python -m benchmarks.budgets calibrate --model runs/amazon/model --dataset runs/amazon/data
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recsys.api import Recommender
from recsys.config import TrainConfig, override
from recsys.data import Dataset, Split

RESULTS = Path(__file__).parent / "results"


def _point(ds: Dataset, cfg: TrainConfig, split: str, rows: tuple[str, ...]) -> dict[str, Any]:
    """Train with `cfg`, evaluate `split`; the metric and its 95% interval for each of `rows`."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        rec = Recommender.fit(ds, cfg, out=Path(tmp) / "model", show_progress=False)
        seconds = time.perf_counter() - start
        rec.evaluate(split=split, report_dir=Path(tmp) / "report", max_users=None)
        report = json.loads((Path(tmp) / "report" / "metrics.json").read_text())
    metric = "auc" if "auc" in report["metrics"]["full model"] else "ndcg@10"
    out: dict[str, Any] = {"train seconds": round(seconds, 1), "metric": metric}
    for name in rows:
        if name in report["metrics"]:
            out[name] = f"{report['metrics'][name][metric]:.4f} ± {report['ci95'][name][metric]:.4f}"
    return out


def text_curve(size: str, points: list[int], seed: int = 0) -> Iterator[dict[str, Any]]:
    """Dev AUC of the text score and of the full model for each fine-tune budget, on ``recsys synth --size``."""
    from recsys.synth import SynthConfig, synthesize

    with tempfile.TemporaryDirectory() as tmp:
        synthesize(SynthConfig.preset(size, seed=seed), Path(tmp) / "data")
        ds = Dataset.load(Path(tmp) / "data")
        base = TrainConfig.for_dataset(ds.manifest)
        for n in points:
            cfg = override(base, **{"text.max_train_impressions": n, "text.epochs": 1})
            yield {"text.max_train_impressions": n, **_point(ds, cfg, Split.DEV, ("text only", "frozen text", "full model", "without text"))}


def ranker_curve(dataset: str, points: list[int], split: str | None = None) -> Iterator[dict[str, Any]]:
    """The model's metric for each ``ranker_users`` (0 = every user), encoder frozen."""
    ds = Dataset.load(dataset)
    base = override(TrainConfig.for_dataset(ds.manifest), fine_tune=False)
    split = split or (Split.DEV if ds.kind == "impressions" else Split.TEST)
    for n in points:
        yield {"ranker_users": n or "all", **_point(ds, override(base, ranker_users=n or None), split, ("full model", "without text"))}


def ranker_table_curve(model_dir: str, points: list[int]) -> Iterator[dict[str, Any]]:
    """The ranker's held-out metrics for each ``ranker_users`` (0 = every user of the table), on `model_dir`'s
    training table, with the model's own settings."""
    import polars as pl

    from features.registry import ranker_features
    from ranker.lambdarank import fit
    from recsys.config import load_config
    from recsys.evaluation.metrics import AUC, impression_ci95, impression_metrics, ndcg_key
    from recsys.splits import held_out_users, sample_users, split_latest

    cfg = load_config(Path(model_dir) / "config.toml", TrainConfig())
    table = pl.read_parquet(Path(model_dir) / "features.parquet")
    if cfg.valid_by == "time":
        fit_part, held_out = split_latest(table, cfg.valid_fraction)
    else:
        fit_part, held_out = held_out_users(table, cfg.valid_fraction, cfg.seed)
    names = ranker_features(table.columns, cfg.features.families)
    for n in points:
        part = sample_users(fit_part, n, cfg.seed)[0] if n else fit_part
        start = time.perf_counter()
        ranker = fit(part, held_out, names, cfg.ranker)
        seconds = time.perf_counter() - start
        scored = held_out.with_columns(score=pl.Series(ranker.score(held_out)))
        metrics, ci = impression_metrics(scored, "score"), impression_ci95(scored, "score")
        yield {"ranker_users": n or "all", "rows": part.height, "fit seconds": round(seconds, 1),
               "best iteration": ranker.manifest.get("best_iteration"),
               **{m: f"{metrics[m]:.4f} ± {ci[m]:.4f}" for m in (ndcg_key(10), AUC)}}


# The stages.json entries behind each budget line (a budget may cover several pipeline stages).
BUDGET_STAGES = {"encode": ("encode_frozen", "encode"), "fine-tune": ("text_model",), "sequence": ("sequence",),
                 "select": ("select_retrieval", "select_ranker"), "features": ("features",), "ranker": ("ranker",)}


def calibration(model_dirs: list[str], dataset_dirs: list[str]) -> Iterator[dict[str, Any]]:
    """Each trained model's budget estimates (its own config, its dataset) beside the seconds its stages took."""
    from recsys.budget import plan
    from recsys.io import read_json
    from recsys.model import read_model_json

    for model_dir, dataset_dir in zip(model_dirs, dataset_dirs, strict=True):
        cfg = TrainConfig.from_dict(read_model_json(Path(model_dir), verify=False)["config"])
        took = read_json(Path(model_dir) / "stages.json")
        for budget in plan(Dataset.load(dataset_dir), cfg):
            seconds = [took[s]["seconds"] for s in BUDGET_STAGES.get(budget.stage, ()) if s in took]
            actual = sum(seconds) if seconds else "not run"
            yield {"model": model_dir, "stage": budget.stage, "estimated s": round(budget.seconds, 1),
                   "took s": actual, "took / estimated": f"{actual / budget.seconds:.2f}" if seconds and budget.seconds else "–"}


def _markdown(title: str, rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"# {title}", "", f"{dt.datetime.now():%Y-%m-%d %H:%M}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "–")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("curve", choices=("text", "ranker", "ranker-table", "calibrate"))
    parser.add_argument("--size", default="small", help="text: synthetic log size")
    parser.add_argument("--dataset", action="append", help="ranker: dataset directory; calibrate: one per --model")
    parser.add_argument("--model", action="append", help="ranker-table: a trained model directory (its features.parquet); calibrate: any number")
    parser.add_argument("--points", type=int, nargs="+")
    args = parser.parse_args(argv)
    if args.curve != "calibrate" and not args.points:
        parser.error(f"{args.curve} needs --points")
    if args.curve == "calibrate":
        points, title = calibration(args.model or [], args.dataset or []), "Budget estimates beside the time each stage took"
    elif args.curve == "text":
        points, title = text_curve(args.size, args.points), f"Fine-tune budget: synth {args.size}, one epoch"
    elif args.curve == "ranker":
        points, title = ranker_curve(args.dataset[0], args.points), f"Ranker users: {args.dataset[0]}"
    else:
        points, title = ranker_table_curve(args.model[0], args.points), f"Ranker users, the ranker alone: {args.model[0]}"
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"budgets-{args.curve}-{dt.date.today()}.md"
    rows: list[dict[str, Any]] = []
    for row in points:  # the table is rewritten after every point: a long run stopped midway keeps what it measured
        rows.append(row)
        path.write_text(_markdown(title, rows))
        print(row, flush=True)


if __name__ == "__main__":
    main()
