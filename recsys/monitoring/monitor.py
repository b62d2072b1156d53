"""`recsys monitor`: is tonight's run like the one the model was trained for? Checks before the lists are exported.

A run is a set of requests scored by the model (a split of a newer log, or a requests file), the ranked lists it
produced (``recsys recommend``'s output, or the model's own top-k of the same requests) and, when the requests are
labelled, their outcomes. :func:`monitor` scores the requests as serving does (:mod:`recsys.monitoring.run`),
compares them with ``MODEL/reference.json`` (:mod:`recsys.monitoring.checks`, thresholds in
:class:`~recsys.monitoring.config.MonitorConfig`) and writes into the output directory::

    monitor.json   the alerts, every check's table, the thresholds, the run and reference described (aggregates only),
                   ``tables`` and ``plots``: what the pages hold
    report.md      the same as tables and plots (drift.png, scores.png, sources.png)
    report.html    the same page, self-contained

``recsys monitor`` exits 3 when any alert fires, so a scheduler can hold the export back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recsys.config import TrainConfig
from recsys.data import Col, Dataset, Split
from recsys.errors import DataError, RecsysError
from recsys.evaluation.report import json_safe
from recsys.io import make_dir, write_json
from recsys.model import read_model_json
from recsys.monitoring.checks import Alert, Checks, run_checks
from recsys.monitoring.config import MonitorConfig
from recsys.monitoring.drift import bootstrap
from recsys.monitoring.reference import list_figures, load_reference
from recsys.monitoring.report import write_monitor_report
from recsys.monitoring.run import item_popularity, read_lists, score_run
from recsys.pipeline import FROZEN, LOGGED, Assets
from recsys.splits import sample_users, splits_before

log = logging.getLogger(__name__)

MONITOR_JSON = "monitor.json"
ALERT_EXIT = 3  # `recsys monitor`'s exit status when an alert fires (1 is a bad input)


@dataclass
class MonitorResult:
    """What :func:`monitor` found: the alerts, every check, and where the report is."""

    alerts: list[Alert]
    checks: Checks
    out_dir: Path | None

    @property
    def ok(self) -> bool:
        return not self.alerts


def newest_split(ds: Dataset) -> str:
    """The latest split with rows (test, else dev): what a run on a newer log serves."""
    for split in (Split.TEST, Split.DEV):
        if not ds.split(split).is_empty():
            return split
    raise RecsysError(f"{ds.path or 'the dataset'} has no dev or test rows to monitor (--split, or --requests FILE)")


def _request_rows(path: Path, ds: Dataset, logged: bool) -> pl.DataFrame:
    """A requests file (as ``recsys recommend`` reads it) as impression-format rows."""
    from recsys.recommend import latest_histories, read_requests, to_impressions

    requests = read_requests(path)
    if logged:
        lacking = requests.with_row_index("_r").filter(pl.col(Col.CANDIDATES).is_null()) if Col.CANDIDATES in requests.columns else requests.with_row_index("_r")
        if lacking.height:
            raise DataError(path, int(lacking["_r"][0]) + 1, Col.CANDIDATES, "no candidates: this model ranks the candidates a request brings")
    now = ds.impressions[Col.TIME].max() + dt.timedelta(seconds=1)
    return to_impressions(requests, ds, now, latest_histories(ds) if Col.HISTORY not in requests.columns else None)


def monitor(model_dir: str | Path, dataset: Dataset, *, split: str | None = None, requests: str | Path | None = None, recs: str | Path | None = None,
            out_dir: str | Path | None = None, cfg: MonitorConfig | None = None, config: TrainConfig | None = None, max_users: int | None = None,
            seed: int = 0) -> MonitorResult:
    """Compare a run on `dataset` with the model's reference; write ``monitor.json`` and the report.

    Args:
        model_dir: a trained model (with ``reference.json``).
        dataset: the log the run served from (the training one or a newer one).
        split: the split whose rows are the run's requests (default: the newest, test else dev); not with `requests`.
        requests: a requests file (Parquet/JSONL/CSV, as ``recsys recommend`` reads) instead of a split.
        recs: the ranked lists the run produced (Parquet: request_id, rank, item_id); default: the model's own top-k
            of the same requests.
        out_dir: where ``monitor.json``, ``report.md`` and ``report.html`` go (None = nothing written).
        cfg: the thresholds.
        config: the model's config with other resource settings (default: the one in ``model.json``).
        max_users: score a seeded sample of this many users (default: as many as the reference scored).
        seed: seed of the user sample and of the bootstrap.

    Returns:
        The :class:`MonitorResult`.

    Raises:
        RecsysError: a tampered model or one without a reference, both `split` and `requests`, an unknown or empty split,
            a bad requests or lists file (one line naming file, row and field).
    """
    cfg = cfg or MonitorConfig()
    model_dir = Path(model_dir)
    meta = read_model_json(model_dir)
    reference = load_reference(model_dir)
    if split is not None and requests is not None:
        raise RecsysError("give either --split or --requests: the run's requests are one or the other")
    if split is not None and split not in Split.ALL:
        raise RecsysError(f"unknown split {split!r} (--split); use one of {Split.ALL}")
    if out_dir is not None:
        make_dir(out_dir)  # before the work: an unwritable report fails at once
        (Path(out_dir) / MONITOR_JSON).unlink(missing_ok=True)  # no finished-looking report over a half-written one
    assets = Assets(model_dir, config or TrainConfig.from_dict(meta["config"]), dataset)
    if requests is not None:
        rows, fit, what = _request_rows(Path(requests), dataset, meta["candidates"] == LOGGED), list(Split.ALL), f"requests {requests}"
    else:
        split = split or newest_split(dataset)
        rows, fit, what = dataset.split(split), splits_before(split), f"split {split} of {dataset.path or 'the dataset'}"
        if rows.is_empty():
            raise RecsysError(f"{dataset.path or 'the dataset'} has no rows in split {split!r}")
    k = int(reference["top_k"])
    given = read_lists(recs, dataset.items[Col.ITEM].to_list(), k) if recs is not None else None  # a bad file fails before the work
    rows, n_users = sample_users(rows, max_users or int(reference["users"]), seed)
    run = score_run(assets, rows, fit, k)
    lists = run.lists if given is None else given
    popularity, pop_users = item_popularity(dataset, fit)
    counts = [int(c) for c in reference["lists"]["coverage"] if int(c) <= len(lists)]
    figures = list_figures(lists, popularity, pop_users, assets.pair_vectors.get(FROZEN), seed, counts)
    metrics = {m: bootstrap(v, seed) for m, v in run.metrics.items()}
    checks = run_checks(reference, run.features, run.scores, run.sources, figures, metrics, cfg)
    for alert in checks.alerts:
        log.info("monitor alert: %s", alert.message)
    if out_dir is not None:
        sampled = rows[Col.USER].n_unique()
        notes = {"model": f"{model_dir} (model_id {meta['model_id']}, {meta['kind']} log, {meta['candidates']} candidates)",
                 "run": f"{what}: {run.requests:,} requests of {sampled:,} users" + (f" (a seeded sample of {n_users:,}, seed {seed})" if sampled < n_users else ""),
                 "lists": f"{recs} ({len(lists):,} lists)" if recs is not None else f"the model's own top-{k} of these requests ({len(lists):,} lists)",
                 "reference": f"{reference['rows_from']} split, {reference['requests']:,} requests of {reference['users']:,} users (reference.json)",
                 "labelled requests": max((int(m["n"]) for m in metrics.values()), default=0)}
        _write(Path(out_dir), meta, notes, reference, run.scores, checks, cfg, figures, metrics)
    return MonitorResult(checks.alerts, checks, Path(out_dir) if out_dir is not None else None)


def _write(out_dir: Path, meta: dict[str, Any], notes: dict[str, Any], reference: dict[str, Any], scores: Any, checks: Checks,
           cfg: MonitorConfig, figures: dict[str, Any], metrics: dict[str, Any]) -> None:
    title = f"Monitor: {len(checks.alerts)} alert(s)" if checks.alerts else "Monitor: no alert"
    thresholds = dataclasses.asdict(cfg)
    tables, plots = write_monitor_report(out_dir, title=title, notes=notes, checks=checks, reference=reference, scores=scores, thresholds=thresholds)
    payload = {"title": title, "model_id": meta["model_id"], "notes": notes, "ok": not checks.alerts,
               "alerts": [a.to_dict() for a in checks.alerts], "checks": checks.rows, "thresholds": thresholds,
               "lists": figures, "metrics": metrics, "tables": tables, "plots": plots}
    write_json(json_safe(payload), out_dir / MONITOR_JSON)  # last: its presence means a finished report
