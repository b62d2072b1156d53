"""Training curves of the text encoder: read the Lightning log of a fine-tune, plot it as a PNG.

:func:`recsys.text.train.train_text_model` logs through Lightning's ``CSVLogger`` (and TensorBoard
when installed) into one fixed directory of the model, replaced on a re-run::

    <text model dir>/logs/metrics.csv   step, epoch, train_loss_step, train_loss_epoch, val_auc, ...

The next-item fine-tune of an interaction log (:mod:`recsys.text.next_item`) writes the same log with
``val_ndcg@10`` (the text source's dev NDCG@10 over the catalogue) in place of ``val_auc``.
:func:`read_curves` turns either into one row per optimiser step (``step``, ``train_loss`` and the
validation metric) and :func:`plot_curves` draws training loss and the validation metric against the step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from recsys.errors import RecsysError
from recsys.io import atomic_path

logger = logging.getLogger(__name__)

LOG_DIR, METRICS_CSV = "logs", "metrics.csv"
CURVES_PNG = "training_curves.png"
STEP, TRAIN_LOSS, VAL_AUC, VAL_NDCG = "step", "train_loss", "val_auc", "val_ndcg@10"
# Each fine-tune's validation metric: its axis label and panel title.
VALIDATIONS = {VAL_NDCG: ("dev NDCG@10", "Dev NDCG@10 of the text source over the catalogue"),
               VAL_AUC: ("validation AUC", "Validation AUC (mean per impression)")}
# Lightning names a metric logged both per step and per epoch "<name>_step" / "<name>_epoch".
_LOSS_COLUMNS = ("train_loss_step", "train_loss")

__all__ = ["read_curves", "plot_curves", "metrics_csv", "LOG_DIR", "METRICS_CSV", "CURVES_PNG"]


def _validation(columns: list[str]) -> str:
    """The validation metric among `columns` (``val_ndcg@10`` before ``val_auc``; ``val_auc`` when neither is)."""
    return next((c for c in VALIDATIONS if c in columns), VAL_AUC)


def metrics_csv(text_dir: Path) -> Path:
    """The CSV log of the fine-tune saved in ``text_dir``."""
    return Path(text_dir) / LOG_DIR / METRICS_CSV


def read_curves(text_dir: Path) -> pl.DataFrame | None:
    """The training loss and validation metric of a fine-tune, one row per logged optimiser step.

    Args:
        text_dir: A text model directory written by :func:`recsys.text.train.train_text_model`.

    Returns:
        Columns ``step`` (Int64, strictly increasing), ``train_loss`` and the validation metric
        (``val_ndcg@10`` where the log has it, else ``val_auc``; Float64, null at steps where that metric
        was not logged); None when the model has no log (a frozen encoder, or one trained before logging
        existed) or the log holds neither metric.

    Raises:
        RecsysError: the log has no ``step`` column (not a Lightning CSV log).
    """
    path = metrics_csv(text_dir)
    if not path.is_file():
        return None
    raw = pl.read_csv(path, infer_schema_length=None)
    if STEP not in raw.columns:
        raise RecsysError(f"{path} has no {STEP!r} column; it is not a Lightning CSV log (delete it, or train again)")
    loss = next((c for c in _LOSS_COLUMNS if c in raw.columns), None)
    val = _validation(raw.columns)
    frame = raw.select(
        pl.col(STEP).cast(pl.Int64),
        (pl.col(loss) if loss else pl.lit(None)).cast(pl.Float64).alias(TRAIN_LOSS),
        (pl.col(val) if val in raw.columns else pl.lit(None)).cast(pl.Float64).alias(val),
    )
    # Lightning writes one row per logging call (a step's loss and a validation at that step are two
    # rows; epoch means are rows of their own): keep one row per step, drop rows with neither metric.
    frame = (
        frame.filter(pl.col(TRAIN_LOSS).is_not_null() | pl.col(val).is_not_null())
        .group_by(STEP)
        .agg(pl.col(TRAIN_LOSS).drop_nulls().last(), pl.col(val).drop_nulls().last())
        .sort(STEP)
    )
    return frame if frame.height else None


def plot_curves(curves: pl.DataFrame, path: Path) -> Path:
    """Two panels over the optimiser step: training loss on top, the validation metric below (best marked).

    Args:
        curves: The frame of :func:`read_curves`.
        path: The PNG to write (atomically; its directory is created if needed).

    Returns:
        ``path``.

    Raises:
        ValueError: ``curves`` is empty or lacks a ``step``/``train_loss``/validation column.
    """
    metric = _validation(curves.columns)
    missing = {STEP, TRAIN_LOSS, metric} - set(curves.columns)
    if missing or curves.height == 0:
        raise ValueError(f"no training curves to plot (rows: {curves.height}, missing columns: {sorted(missing)}); use read_curves()")
    path = Path(path)
    fig = Figure(figsize=(7.0, 6.0))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    bottom.sharex(top)

    loss = curves.filter(pl.col(TRAIN_LOSS).is_not_null())
    top.plot(loss[STEP].to_list(), loss[TRAIN_LOSS].to_list(), color="tab:blue", marker="." if loss.height < 50 else None)
    top.set_ylabel("training loss (per step)")
    top.set_title("Training loss")
    top.grid(alpha=0.3)

    val = curves.filter(pl.col(metric).is_not_null() & pl.col(metric).is_not_nan())
    if val.height:
        bottom.plot(val[STEP].to_list(), val[metric].to_list(), color="tab:orange", marker="o")
        best = val.row(int(val[metric].arg_max() or 0), named=True)
        bottom.scatter([best[STEP]], [best[metric]], s=120, facecolors="none", edgecolors="tab:red", zorder=3,
                       label=f"best {best[metric]:.4f} at step {best[STEP]}")
        bottom.legend(fontsize=8, loc="lower right")
    else:
        bottom.text(0.5, 0.5, "no validation in this run", ha="center", va="center", transform=bottom.transAxes)
    bottom.set_xlabel("optimiser step")
    bottom.set_ylabel(VALIDATIONS[metric][0])
    bottom.set_title(VALIDATIONS[metric][1])
    bottom.grid(alpha=0.3)
    fig.suptitle("Text encoder fine-tune")

    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    logger.info("training curves plotted to %s", path)
    return path
