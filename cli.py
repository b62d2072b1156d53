"""The `recsys` command: a thin shell over library functions (the data commands are in recsys/cli_data.py).

Each command reads its options into a config, makes one library call and prints a short summary. Errors a user can
cause (RecsysError, bad options) print as one line and exit 1; `--debug` shows the traceback (recsys/cli_errors.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from recsys.cli_data import ingest, stats, synth
from recsys.cli_errors import OneLineErrors, given_flags


@click.group(cls=OneLineErrors)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(debug: bool, verbose: bool) -> None:
    """recsys: personalised ranked lists with a text-aware LightGBM ranker."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")


for command in (ingest, synth, stats):
    main.add_command(command)


# --- shared options ----------------------------------------------------------------------------

_DATASET = click.Path(exists=True, file_okay=False, path_type=Path)
_MODEL = click.Path(exists=True, file_okay=False, path_type=Path)
_CONFIG = click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                       help="Settings file (TOML, or JSON such as a model's model.json); flags override it.")


def _resource_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--temp-dir", type=click.Path(file_okay=False), default=None, help="Scratch directory for spills (resource).")(f)
    f = click.option("--threads", type=int, default=None, help="DuckDB threads of the feature sort (resource: never retrains).")(f)
    f = click.option("--memory-limit", default=None, help="Peak memory of feature building, e.g. 4GB (resource: never retrains).")(f)
    return f


def _cluster_options(f):  # type: ignore[no-untyped-def]
    """``--cluster`` and ``--scheduler-file``: where a job's data-parallel stages run (README: Running on a cluster)."""
    f = click.option("--scheduler-file", type=click.Path(exists=True, dir_okay=False), default=None, help="Join the Dask scheduler this file names.")(f)
    return click.option("--cluster", "cluster", default=None, help="Run on Dask: local:N (N workers here) or a scheduler address tcp://host:8786.")(f)


def _cluster(cluster: str | None, scheduler_file: str | None, temp_dir: str | None = None) -> object:
    from recsys.cluster.connect import parse_cluster

    return parse_cluster(cluster, scheduler_file, work_dir=temp_dir)


def _resources(memory_limit: str | None, threads: int | None, temp_dir: str | None) -> dict[str, object]:
    return {"features.memory_limit": memory_limit, "features.threads": threads, "features.temp_dir": temp_dir}


def _train_config(ds: object, config_file: Path | None, **flags: object) -> object:
    """The log kind's defaults, then the config file, then the flags (each flag changes only its own setting)."""
    from recsys.config import TrainConfig, load_config, override

    cfg = TrainConfig.for_dataset(ds.manifest)  # type: ignore[attr-defined]
    cfg = load_config(config_file, cfg) if config_file else cfg
    for key, value in flags.items():  # one at a time, so that an error names its flag (--windows sets windows_hours)
        cfg = override(cfg, "--" + key.rsplit(".", 1)[-1].replace("_", "-").replace("windows-hours", "windows"), **{key: value})
    return cfg


# --- text model: train-encoder, encode ------------------------------------------------------------


@main.command("train-encoder")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Text model directory to write.")
@click.option("--encoder", type=click.Path(exists=True, file_okay=False), help="A local Hugging Face BERT directory (default: packaged all-MiniLM-L6-v2).")
@click.option("--fields", default="title,abstract,category", show_default=True, help="Item columns the encoder reads, comma-separated.")
@click.option("--max-tokens", type=int, default=None, help="Token budget per item text.")
@click.option("--pooling", default=None, type=click.Choice(["mean", "cls"]))
@click.option("--projection-dim", type=int, help="Add a linear projection to this size.")
@click.option("--user-pooling", default=None, type=click.Choice(["attention", "mean"]))
@click.option("--history-len", type=int, default=None, help="Most recent history items per user.")
@click.option("--negatives", type=int, default=None, help="Non-clicked candidates per click (softmax over K+1).")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Encoder learning rate.")
@click.option("--epochs", type=int, default=None)
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps.")
@click.option("--freeze-layers", type=int, default=None, help="Freeze embeddings + the lowest N layers.")
@click.option("--lora-rank", type=int, default=None, help="Train LoRA adapters of this rank instead (0 = full fine-tune).")
@click.option("--accumulate", type=int, default=None, help="Gradient accumulation steps.")
@click.option("--precision", default=None, type=click.Choice(["auto", "bf16", "fp32"]))
@click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--devices", type=click.IntRange(min=1), default=None, help="Processes (CPU) or GPUs per node: more than one trains under Lightning DDP.")
@click.option("--num-nodes", type=click.IntRange(min=1), default=None, help="Machines of a multi-node DDP run (each runs this same command).")
@click.option("--val-fraction", type=float, default=None, help="Latest share of train impressions used for validation.")
@click.option("--max-train-impressions", type=int, help="Fine-tune on a seeded sample of this many impressions.")
@click.option("--seed", type=int, default=None)
@_CONFIG
def train_encoder_cmd(dataset: Path, out: Path, fields: str | None, config_file: Path | None, **options: object) -> None:
    """Fine-tune the text encoder on DATASET's train split (impression logs: on clicks, best validation AUC kept;
    interaction logs: on next items, best dev NDCG@10 kept); unset options come from --config's [text] table, else the
    log kind's defaults."""
    from recsys.data import Dataset, Split
    from recsys.io import read_json
    from recsys.pipeline import fine_tune
    from recsys.text.fine_tune import METRICS_FILE, kept_weights

    ds = Dataset.load(dataset)
    text_options = {f"text.{k}": v for k, v in options.items()}
    cfg = _train_config(ds, config_file, **text_options, **{"text.fields": tuple(f.strip() for f in fields.split(",")) if fields else None})
    fine_tune(ds, cfg, ds.split(Split.TRAIN), out, show_progress=True)
    metrics = read_json(out / METRICS_FILE)
    examples = f"{metrics['train_pairs']} next-item pairs" if "train_pairs" in metrics else f"{metrics['train_samples']} clicks"
    click.echo(f"{out}: {kept_weights(out)}; {examples}, {metrics['steps']} steps in {metrics['seconds']:.0f} s ({metrics['precision']})")


@main.command("encode")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Text model directory (default: the frozen pretrained encoder).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Item vectors to write (Parquet).")
@click.option("--batch-size", default=256, show_default=True, help="Items per forward pass.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Reuse vectors of an unchanged encoder and catalogue from here.")
def encode_cmd(dataset: Path, model_dir: Path | None, out: Path, batch_size: int, cache_dir: Path | None) -> None:
    """Encode every item of DATASET into a text vector."""
    from recsys.data import load_dataset
    from recsys.text.encode import encode_items
    from recsys.text.train import load_text_model, pretrained_text_model

    model = load_text_model(model_dir) if model_dir else pretrained_text_model()
    vectors = encode_items(model, load_dataset(dataset).items, batch_size=batch_size, cache_dir=cache_dir)
    vectors.save(out)
    click.echo(f"{out}: {len(vectors.ids)} items x {vectors.dim} dims (encoder {vectors.fingerprint[:12]})")


# --- features -----------------------------------------------------------------------------------


@main.command("features")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Feature table to write (Parquet).")
@click.option("--rows", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Impressions-format Parquet to featurise (default: the dataset's impressions).")
@click.option("--text", "text", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Text features (Parquet) to join by (impression, candidate).")
@click.option("--windows", default=None, help="Trailing windows of the item features, hours, comma-separated [default: 1,6,24].")
@click.option("--memory-limit", default=None, help="Peak memory of the build; beyond it work is streamed in smaller segments and sorts spill to --temp-dir [default: 4GB].")
@click.option("--temp-dir", type=click.Path(file_okay=False, path_type=Path), help="Scratch directory (default: system temp).")
@click.option("--threads", type=int, help="DuckDB threads of the out-of-core sort (default: all cores).")
@_CONFIG
def features_cmd(dataset: Path, out: Path, rows: Path | None, text: Path | None, windows: str | None, memory_limit: str | None,
                 temp_dir: Path | None, threads: int | None, config_file: Path | None) -> None:
    """Build the point-in-time feature table of DATASET: one row per (impression, candidate)."""
    from features.build import build_features
    from recsys.data import Dataset

    try:
        hours = tuple(int(h) for h in windows.split(",")) if windows else None
    except ValueError as exc:
        raise click.BadParameter(f"--windows must be comma-separated whole hours, got {windows!r}") from exc
    cfg = _train_config(Dataset.load(dataset), config_file, **{"features.windows_hours": hours},
                        **_resources(memory_limit, threads, str(temp_dir) if temp_dir else None))
    summary = build_features(dataset, out, cfg.features, rows=rows, text_features=text)  # type: ignore[attr-defined]
    click.echo(f"wrote {summary.out}: {summary.rows} rows, {summary.impressions} impressions, "
               f"{len(summary.features)} features in {summary.seconds:.1f} s")
    nulls = {name: share for name, share in summary.null_shares.items() if share > 0}
    if nulls:
        click.echo("null shares: " + ", ".join(f"{name} {share:.1%}" for name, share in nulls.items()))


# --- jobs: train, recommend, evaluate, export, demo ---------------------------------------------------

@main.command("train")
@click.argument("dataset", type=_DATASET)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model directory.")
@_CONFIG
@click.option("--force", is_flag=True, help="Redo every stage even if its inputs are unchanged.")
@click.option("--fine-tune/--frozen", default=None, help="Fine-tune the encoder or use it as pretrained [default: per log kind].")
@click.option("--text-fraction", type=float, default=None, help="Impression logs: earliest share of training impressions for the text fine-tune.")
@click.option("--encoder", type=click.Path(exists=True, file_okay=False), default=None, help="A local Hugging Face BERT directory (default: packaged all-MiniLM-L6-v2).")
@click.option("--epochs", type=int, default=None, help="Encoder fine-tuning epochs.")
@click.option("--max-train-impressions", "max_train", type=int, default=None, help="Fine-tune on a sample of this many impressions.")
@click.option("--max-tokens", type=int, default=None, help="Token budget per item text.")
@click.option("--ranker-users", type=int, default=None, help="The ranker learns from a seeded sample of this many users [default: 10000].")
@click.option("--devices", type=click.IntRange(min=1), default=None, help="Encoder fine-tune: processes (CPU) or GPUs per node; more than one trains under DDP.")
@click.option("--num-nodes", type=click.IntRange(min=1), default=None, help="Encoder fine-tune: machines of a multi-node DDP run.")
@click.option("--select/--no-select", default=None,
              help="Choose retrieval and ranker settings on the dev split within [select]'s time budget [default: on], or train with them as given.")
@_resource_options
@_cluster_options
def train_cmd(dataset: Path, out: Path, config_file: Path | None, force: bool, fine_tune: bool | None, text_fraction: float | None, encoder: str | None,
              epochs: int | None, max_train: int | None, max_tokens: int | None, ranker_users: int | None, select: bool | None, memory_limit: str | None,
              threads: int | None, temp_dir: str | None, cluster: str | None, scheduler_file: str | None, devices: int | None, num_nodes: int | None) -> None:
    """Train on DATASET: text -> candidates -> features -> ranker, the same path for every log kind.

    Before it starts, prints each expensive stage's budget (the setting that bounds it) and estimated time."""
    from recsys.api import Recommender
    from recsys.budget import describe, plan
    from recsys.data import Dataset
    from recsys.io import make_dir

    ds = Dataset.load(dataset)
    cfg = _train_config(ds, config_file, fine_tune=fine_tune, text_fraction=text_fraction, ranker_users=ranker_users, **{
        "text.encoder": encoder, "text.epochs": epochs, "text.max_train_impressions": max_train, "text.max_tokens": max_tokens,
        "text.devices": devices, "text.num_nodes": num_nodes, "select.enabled": select},
        **_resources(memory_limit, threads, temp_dir))
    make_dir(out)  # an unwritable model directory fails before the budget is printed
    click.echo(describe(plan(ds, cfg)))  # type: ignore[arg-type]
    rec = Recommender.fit(ds, cfg, out=out, force=force, cluster=_cluster(cluster, scheduler_file, temp_dir))  # type: ignore[arg-type]
    for stage, seconds in rec.meta["summary"]["stage_seconds"].items():
        click.echo(f"{stage:<16} {'up to date' if seconds == 0 else f'{seconds:8.1f} s'}")
    click.echo(f"model {rec.model_id} ({rec.kind} log, {rec.meta['candidates']} candidates) written to {out}")


def _load_model(model_dir: Path, dataset: Path | None, allow_other: bool, config_file: Path | None) -> object:
    from recsys.api import Recommender
    from recsys.config import with_resources
    from recsys.data import Dataset

    rec = Recommender.load(model_dir, Dataset.load(dataset) if dataset else None, allow_other_dataset=allow_other)
    if config_file:
        rec.config = with_resources(rec.config, config_file)
    return rec


_ALLOW_OTHER = click.option("--allow-other-dataset", is_flag=True, help="Use a log other than the training one (e.g. a newer log of the same site).")


@main.command("evaluate")
@click.argument("model_dir", type=_MODEL)
@click.argument("log", type=_DATASET, required=False)
@click.option("--split", default="dev", show_default=True, help="Which split to evaluate (interaction logs: usually test).")
@click.option("--protocol", type=click.Choice(["replay", "masked", "recbole", "catalogue"]), default=None,
              help="replay (logged candidates) or, over the catalogue, masked (the user's earlier items excluded; = catalogue) or recbole "
                   "(nothing excluded, as RecBole's full sort and the published UniSRec/MISSRec rows) [default: replay for logged candidates, else masked]")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Report directory (default MODEL_DIR/report-SPLIT[-recbole]).")
@click.option("--max-users", type=click.IntRange(min=0), default=None,
              help="Evaluate a seeded sample of this many users when the split has more (0 = every user) [default: 10000]; the report gives 95% intervals.")
@_ALLOW_OTHER
@_CONFIG
@_cluster_options
def evaluate_cmd(model_dir: Path, log: Path | None, split: str, protocol: str | None, report_dir: Path | None, max_users: int,
                 allow_other_dataset: bool, config_file: Path | None, cluster: str | None, scheduler_file: str | None) -> None:
    """Evaluate the model and its baselines on LOG (default: its training dataset); write a report (default MODEL_DIR/report-SPLIT,
    report-SPLIT-recbole under --protocol recbole)."""
    from recsys.evaluation.report import metric_table_text

    rec = _load_model(model_dir, log, allow_other_dataset, config_file)
    report_dir = report_dir or model_dir / (f"report-{split}" + (f"-{protocol}" if protocol == "recbole" else ""))
    sample = {} if max_users is None else {"max_users": max_users or None}
    table = rec.evaluate(split=split, protocol=protocol, report_dir=report_dir, allow_other_dataset=allow_other_dataset,  # type: ignore[attr-defined]
                         cluster=_cluster(cluster, scheduler_file), **sample)
    click.echo(metric_table_text(table) if table else f"unlabelled split: predictions written to {report_dir / 'prediction.txt'}")
    click.echo(f"report: {report_dir / 'report.md'}")


@main.command("monitor")
@click.argument("model_dir", type=_MODEL)
@click.argument("log", type=_DATASET, required=False)
@click.option("--split", default=None, help="The split whose rows are the run's requests [default: test if LOG has test rows, else dev].")
@click.option("--requests", "requests_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The run's requests (as recsys recommend reads them) instead of a split.")
@click.option("--recs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The ranked lists the run produced (recsys recommend's Parquet) [default: the model's own top-k of the requests].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Report directory [default: MODEL_DIR/monitor-SPLIT].")
@click.option("--max-users", type=click.IntRange(min=1), default=None, help="Score a seeded sample of this many users [default: as many as the reference].")
@click.option("--seed", default=0, show_default=True, help="Seed of the user sample and the bootstrap.")
@_CONFIG
def monitor_cmd(model_dir: Path, log: Path | None, split: str | None, requests_file: Path | None, recs: Path | None, out_dir: Path | None,
                max_users: int | None, seed: int, config_file: Path | None) -> None:
    """Compare a run on LOG (default: the training dataset) with the model's reference.json: feature drift, scores,
    retrieval sources, list coverage/diversity/novelty/popularity, replayed metrics. Writes monitor.json, report.md and
    report.html; exits 3 when an alert fires (thresholds: the [monitor] table of --config)."""
    from recsys.monitoring.config import load_monitor_config
    from recsys.monitoring.monitor import ALERT_EXIT, newest_split

    rec = _load_model(model_dir, log, True, config_file)
    cfg = load_monitor_config(config_file)
    if out_dir is None:
        out_dir = model_dir / ("monitor-requests" if requests_file else f"monitor-{split or newest_split(rec.dataset)}")  # type: ignore[attr-defined]
    result = rec.monitor(split=split, requests=requests_file, recs=recs, out_dir=out_dir, cfg=cfg, max_users=max_users, seed=seed)  # type: ignore[attr-defined]
    for alert in result.alerts:
        click.echo(f"alert {alert.check}: {alert.message}")
    click.echo(f"{len(result.alerts)} alert(s)" if result.alerts else "no alert")
    click.echo(f"report: {out_dir / 'report.html'}")
    if result.alerts:
        raise SystemExit(ALERT_EXIT)


@main.command("recommend")
@click.argument("model_dir", type=_MODEL)
@click.argument("requests", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--top-k", default=10, show_default=True, help="Items per list.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output Parquet file.")
@click.option("--chunk-size", default=20_000, show_default=True, help="Requests per chunk (bounds memory).")
@click.option("--dataset", type=_DATASET, default=None, help="The log to serve from [default: the training dataset].")
@_ALLOW_OTHER
@_CONFIG
@_cluster_options
def recommend_cmd(model_dir: Path, requests: Path, top_k: int, out: Path, chunk_size: int, dataset: Path | None, allow_other_dataset: bool,
                  config_file: Path | None, cluster: str | None, scheduler_file: str | None) -> None:
    """Write top-k lists for REQUESTS (Parquet/JSONL/CSV: user_id, optional request_id, history, candidates, timestamp)."""
    from recsys.recommend import RecommendConfig

    rec = _load_model(model_dir, dataset, allow_other_dataset, config_file)
    summary = rec.recommend_file(requests, out, RecommendConfig(top_k=top_k, chunk_size=chunk_size),  # type: ignore[attr-defined]
                                 cluster=_cluster(cluster, scheduler_file))
    click.echo(f"{summary['requests']} requests, {summary['rows']} rows written to {out} ({summary['short_lists']} lists shorter than {top_k})")


@main.command("export")
@click.argument("recs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "target", required=True,
              help="out.parquet | out.jsonl | out.csv | duckdb:///path.db?table=recs | postgresql://...?table=recs[&sslmode=verify-full&sslrootcert=CA.crt]")
@click.option("--pseudonymise-users", is_flag=True, help="Write hex(HMAC-SHA256(key, user_id)) instead of each user id (key from --key-env).")
@click.option("--key-env", default=None, help="With --pseudonymise-users: the environment variable holding the key [default: RECSYS_PSEUDONYM_KEY].")
def export_cmd(recs: Path, target: str, pseudonymise_users: bool, key_env: str | None) -> None:
    """Export ranked lists to a file or database table, atomically (re-runs replace)."""
    from recsys.export import write
    from recsys.pseudonym import DEFAULT_KEY_ENV, PseudonymKey

    if key_env is not None and not pseudonymise_users:
        raise click.UsageError("--key-env: only with --pseudonymise-users")
    pseudonym = PseudonymKey.from_env(key_env or DEFAULT_KEY_ENV) if pseudonymise_users else None  # before anything is written
    summary = write(recs, target, pseudonym=pseudonym)
    click.echo(f"exported {summary}")


@main.command("demo")
@click.option("--out", default=Path("runs/demo"), show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Retrain even if the model is up to date.")
@_CONFIG
def demo_cmd(out: Path, force: bool, config_file: Path | None) -> None:
    """Train on the embedded sample, evaluate on its dev split, write ranked lists."""
    from recsys.config import load_config
    from recsys.data import Dataset
    from recsys.demo import SAMPLE, demo, demo_config
    from recsys.evaluation.report import metric_table_text

    cfg = load_config(config_file, demo_config(Dataset.load(SAMPLE))) if config_file else None
    result = demo(out, force=force, cfg=cfg)
    click.echo("\nReplay of the sample's dev split (per-impression means):\n")
    click.echo(metric_table_text(result["table"]))
    click.echo(f"\nreport:        {result['report']}")
    click.echo(f"ranked lists:  {result['recs']['out']} ({result['recs']['rows']} rows)")
    click.echo("wall time:     " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()))


# --- benchmark --------------------------------------------------------------------------------------


@main.command("bench")
@click.option("--quick", "mode", flag_value="quick", help="Smoke run on tiny data (a few minutes); with --scale: 20k and 100k events.")
@click.option("--large", "mode", flag_value="large", help="Bigger sizes: sample, small, medium (one to two hours on 2 cores); with --scale: also 50M events.")
@click.option("--sizes", help="Synthetic sizes instead of the mode's, comma-separated (tiny,sample,small,medium,large; with --scale: 20k,100k,1M,10M,50M).")
@click.option("--scale", is_flag=True, help="The scale benchmark: shop logs of 1M and 10M events through ingest, train, evaluate, recommend.")
@click.option("--stages", help="With --scale: only these stages, comma-separated (synth,ingest,train,evaluate,recommend).")
@click.option("--stage-timeout", type=float, help="Kill a stage after this many seconds [default: 30 min; with --scale 6 h].")
@click.option("--amazon/--no-amazon", default=None, help="Train and evaluate on ../shared/data/amazon-scientific [default: on, except --quick].")
@click.option("--amazon-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the Amazon Scientific files are.")
@click.option("--compare", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="An older results JSON: print new/old per figure.")
@click.option("--new", "new", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="With --compare: compare this saved run instead of running.")
@click.option("--save-baseline", is_flag=True, help="Also write benchmarks/results/baseline.json/.md.")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), help="Where results go [default: benchmarks/results].")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Keep datasets, models and stage logs here [default: a temp dir].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data, added to every training seed (quality across draws).")
def bench_cmd(mode: str | None, sizes: str | None, scale: bool, stages: str | None, stage_timeout: float | None, amazon: bool | None, amazon_dir: Path | None,
              compare: Path | None, new: Path | None, save_baseline: bool, results_dir: Path | None, work_dir: Path | None, seed: int) -> None:
    """Benchmark quality, speed, memory and scaling; write benchmarks/results/<date>-<commit>.json/.md (--scale: scale-<date>-<sizes>)."""
    optional = {**({"results_dir": results_dir} if results_dir else {}), **({"stage_timeout_s": stage_timeout} if stage_timeout else {})}
    if scale:
        misplaced = given_flags("amazon", "amazon_dir", "compare", "new", "save_baseline", "seed")
        if misplaced:
            raise click.UsageError(f"{', '.join(misplaced)}: not with --scale")
        from benchmarks.scale import ScaleConfig, run_scale, to_markdown as scale_markdown

        scale_cfg = ScaleConfig(mode=mode or "default", sizes=tuple(sizes.split(",")) if sizes else None, work_dir=work_dir,
                                **({"stages": tuple(stages.split(","))} if stages else {}), **optional)
        scale_results, written = run_scale(scale_cfg)
        click.echo(scale_markdown(scale_results))
        click.echo("wrote " + ", ".join(str(p) for p in written))
        return
    if stages:
        raise click.UsageError("--stages: only with --scale")
    from benchmarks.suite import BenchConfig, run_benchmarks
    from benchmarks.tables import compare_files, to_markdown

    if new is not None:
        if compare is None:
            raise click.UsageError("--new needs --compare OLD.json")
        click.echo(compare_files(new, compare))
        return
    cfg = BenchConfig(mode=mode or "default", sizes=tuple(sizes.split(",")) if sizes else None, amazon=amazon, compare=compare, save_baseline=save_baseline, work_dir=work_dir,
                      seed=seed, **({"amazon_dir": amazon_dir} if amazon_dir else {}), **optional)
    results, written = run_benchmarks(cfg)
    click.echo(to_markdown(results))
    click.echo("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
