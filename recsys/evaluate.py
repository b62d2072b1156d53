"""`recsys evaluate`: one entry point for both protocols, with the report people read.

* ``replay``     rank each logged impression's shown candidates (impression logs; MIND's metrics);
* ``catalogue``  rank each held-out item among the whole catalogue (interaction logs; Recall/NDCG@k), in one of
  two protocols: ``masked`` (the default; ``catalogue`` names it too) excludes every item the user had before the
  target, ``recbole`` excludes nothing, as the published UniSRec / VQ-Rec / MISSRec figures were measured
  (:mod:`recsys.evaluation.catalogue`).

The default protocol follows the model's candidate source. The report (Markdown, JSON, plots) holds the
metric table against the baselines, feature importance, metrics by history length and the encoder's
training curve when it was fine-tuned.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recsys.cluster.connect import ClusterConfig
from recsys.config import TrainConfig
from recsys.data import Col, Dataset, Split
from recsys.io import make_dir
from recsys.errors import RecsysError
from recsys.evaluation.catalogue import MASKED, MASKINGS, RECBOLE, catalogue
from recsys.evaluation.replay import replay
from recsys.evaluation.report import write_report
from recsys.model import RANKER_DIR, TEXT_DIR, check_dataset, read_model_json
from recsys.pipeline import LOGGED, Assets
from recsys.selection.record import report_section
from recsys.splits import sample_users

REPLAY, CATALOGUE = "replay", "catalogue"
DEFAULT_MAX_USERS = 10_000  # on the 1M-event shop log ~40k test rows: 95% half-width of Recall@10 ~0.005 at 0.4; more users buy time only
PROTOCOLS = (REPLAY, CATALOGUE, MASKED, RECBOLE)  # catalogue = masked
REPLAY_NOTE = "replay: each impression's logged candidates ranked"


def evaluate(model_dir: str | Path, dataset: Dataset, split: str = Split.DEV, protocol: str | None = None, report_dir: str | Path | None = None,
             *, allow_other_dataset: bool = False, seed: int = 0, config: TrainConfig | None = None,
             max_users: int | None = DEFAULT_MAX_USERS, cluster: ClusterConfig | None = None) -> dict[str, dict[str, float]]:
    """Evaluate a trained model on one split of `dataset` against its baselines; write the report.

    Args:
        model_dir: a model directory written by :func:`recsys.pipeline.train`.
        dataset: the dataset the model was trained on (another one only with `allow_other_dataset`).
        split: the split to evaluate.
        protocol: ``"replay"``, or for retrieved candidates ``"masked"`` (= ``"catalogue"``) or ``"recbole"``; None = the
            model's own (replay for logged candidates, else masked).
        report_dir: where ``report.md``, ``metrics.json`` and the plots go (None = no report).
        allow_other_dataset: evaluate on a log other than the training one (a newer log of the same site).
        seed: seed of the random baseline.
        config: the model's config with other resource settings (default: the one in ``model.json``).
        max_users: evaluate a seeded sample of this many of the split's users (all their rows) when it has more;
            None = every user. The report states the sample and a 95% interval for every metric.
        cluster: rank the catalogue protocol's chunks of rows on this Dask cluster (replay runs in process).

    Returns:
        Model or baseline name -> metric -> value; empty for an unlabelled split (MIND predictions written).

    Raises:
        RecsysError: unknown split or protocol, a tampered model, or another dataset without `allow_other_dataset`.
    """
    if split not in Split.ALL:
        raise RecsysError(f"unknown split {split!r} (--split); use one of {Split.ALL}")
    model_dir = Path(model_dir)
    meta = read_model_json(model_dir)
    check_dataset(meta, dataset, allow_other=allow_other_dataset)
    own = REPLAY if meta["candidates"] == LOGGED else MASKED
    protocol = MASKED if protocol == CATALOGUE else protocol or own
    if protocol not in PROTOCOLS:
        raise RecsysError(f"unknown protocol {protocol!r}; use one of {PROTOCOLS}")
    if (protocol == REPLAY) != (own == REPLAY):
        raise RecsysError(f"this model's ranker learned on {meta['candidates']} candidates: evaluate it with the {own} protocol, "
                          f"which ranks the same kind of candidates")
    rows = dataset.split(split)
    if rows.is_empty():
        raise RecsysError(f"{dataset.path or 'the dataset'} has no impressions in split {split!r}")
    labelled = rows[Col.LABELS].null_count() < rows.height  # an unlabelled split is predicted whole (MIND's submission)
    rows, n_users = sample_users(rows, max_users if labelled else None, seed)
    sampled = rows[Col.USER].n_unique()
    sample = {"users evaluated": f"{sampled:,} of {n_users:,}" + (f" (a seeded sample, seed {seed})" if sampled < n_users else " (all)")}
    if report_dir is not None:
        make_dir(report_dir)  # before the work: an unwritable report fails at once
    assets = Assets(model_dir, config or TrainConfig.from_dict(meta["config"]), dataset)
    start = time.perf_counter()
    if protocol == REPLAY:
        table, extra = replay(assets, rows, Path(report_dir) if report_dir else None, seed)
    else:
        table, extra = catalogue(assets, rows, split, seed, protocol=protocol, cluster=cluster)
    if table and report_dir is not None:
        extra["notes"] = {**sample, **extra.get("notes", {})}
        _report(Path(report_dir), meta, model_dir, dataset, split, protocol, table, extra, time.perf_counter() - start)
    return table


def _report(report_dir: Path, meta: dict[str, Any], model_dir: Path, ds: Dataset, split: str, protocol: str,
            table: dict[str, dict[str, float]], extra: dict[str, Any], seconds: float) -> None:
    from ranker.lambdarank import load_ranker
    from recsys.evaluation.curves import CURVES_PNG, plot_curves, read_curves
    from recsys.text.fine_tune import kept_weights

    described = REPLAY_NOTE if protocol == REPLAY else MASKINGS[protocol]
    notes = {"model": f"{model_dir} (model_id {meta['model_id']}, {meta['kind']} log, {meta['candidates']} candidates)",
             "dataset": str(ds.path), "split": split, "protocol": described, **extra.get("notes", {}),
             "train stage seconds": meta["summary"].get("stage_seconds"), "evaluate seconds": round(seconds, 1)}
    kept = kept_weights(model_dir / TEXT_DIR)
    if kept:
        notes["text encoder kept"] = kept
    make_dir(report_dir)
    figures = []
    curves = read_curves(model_dir / TEXT_DIR) if (model_dir / TEXT_DIR).is_dir() else None
    if curves is not None and curves.height:
        figures.append(("Text encoder training curve", plot_curves(curves, report_dir / CURVES_PNG).name))
    metric_rows = {k: v for k, v in table.items() if not k.startswith("retrieval: ")}
    kind = "Replay" if protocol == REPLAY else f"Catalogue ({protocol})"
    chosen = report_section(model_dir)  # the settings chosen on dev, when the model chose any
    write_report(report_dir, title=f"{kind} evaluation of {ds.path.name if ds.path else 'dataset'} ({split})", table=metric_rows,
                 importance=load_ranker(model_dir / RANKER_DIR).importance(), by_group=extra.get("by_group"), notes=notes, figures=figures,
                 ci95=extra.get("ci95"), protocol=described, sections=[chosen] if chosen else [])
