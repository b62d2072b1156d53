"""Training curves: the fine-tune's CSV log, read_curves, plot_curves; third-party progress noise stays quiet."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from matplotlib.image import imread
from transformers.utils import logging as hf_logging

from conftest_text import make_tiny_encoder, tiny_config, topic_impressions, topic_items
from recsys.errors import RecsysError
from recsys.evaluation.curves import CURVES_PNG, STEP, TRAIN_LOSS, VAL_AUC, metrics_csv, plot_curves, read_curves
from recsys.text.encode import encode_items
from recsys.text.model import save_text_model
from recsys.text.train import load_text_model, train_text_model

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
NOISE = ("Loading weights", "Writing model shards", "GPU available", "TPU available", "💡 Tip", "`Trainer.fit` stopped", "LeafSpec")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("curves")
    items = topic_items()
    encoder = make_tiny_encoder(root / "encoder")
    # Leftovers of an earlier run in the log directory: a re-run replaces them, never adds to them.
    stale = root / "model" / "logs"
    (stale / "version_0").mkdir(parents=True)
    (stale / "metrics.csv").write_text("epoch,step,val_auc\n0,99,0.1\n")
    out = train_text_model(topic_impressions(items, n_users=24, per_user=3), items, tiny_config(encoder, epochs=2), root / "model",
                           show_progress=False)
    return {"root": root, "items": items, "encoder": encoder, "out": out, "metrics": json.loads((out / "train_metrics.json").read_text())}


def test_fine_tune_logs_loss_and_auc_to_one_fixed_csv(run: dict) -> None:
    path = metrics_csv(run["out"])
    assert path == run["out"] / "logs" / "metrics.csv" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.is_dir()]  # no version_N/ directories, the stale one is gone
    raw = pl.read_csv(path)
    assert raw["train_loss_step"].drop_nulls().len() >= 1 and raw["val_auc"].drop_nulls().len() >= 1
    assert 99 not in raw["step"].to_list()  # the earlier run's rows were replaced


def test_read_curves_gives_one_row_per_step_matching_train_metrics(run: dict) -> None:
    curves = read_curves(run["out"])
    assert curves is not None and curves.columns == [STEP, TRAIN_LOSS, VAL_AUC]
    steps = curves[STEP].to_list()
    assert steps == sorted(set(steps)) and len(steps) > 1  # strictly increasing
    # A short run logs its loss at every optimiser step: step k = the batch after k updates.
    loss = curves.filter(pl.col(TRAIN_LOSS).is_not_null())
    assert loss[STEP].to_list() == list(range(run["metrics"]["steps"]))
    assert all(math.isfinite(v) and v > 0 for v in loss[TRAIN_LOSS])
    # Validations sit at the step train_metrics.json records for them (the untrained model at step 0).
    val = curves.filter(pl.col(VAL_AUC).is_not_null())
    expected = [(h["step"], h["val_auc"]) for h in run["metrics"]["history"] if h["val_auc"] is not None]
    assert val[STEP].to_list() == [s for s, _ in expected] and val[STEP][0] == 0
    np.testing.assert_allclose(val[VAL_AUC].to_numpy(), [a for _, a in expected], rtol=1e-6)


def test_read_curves_known_answer_and_missing_or_foreign_logs(tmp_path: Path) -> None:
    assert read_curves(tmp_path) is None  # a model without a log (frozen encoder, older run)
    (tmp_path / "logs").mkdir()
    # Lightning's layout: a validation row, a loss row per step, an epoch-mean row (not a per-step loss).
    metrics_csv(tmp_path).write_text(
        "epoch,step,train_loss_epoch,train_loss_step,val_auc\n"
        ",0,,,0.5\n0,0,,2.0,\n0,1,,1.5,\n,2,,,0.75\n0,1,1.75,,\n1,2,,1.0,\n"
    )
    curves = read_curves(tmp_path)
    assert curves is not None and curves.rows() == [(0, 2.0, 0.5), (1, 1.5, None), (2, 1.0, 0.75)]
    metrics_csv(tmp_path).write_text("step,train_loss\n0,1.25\n3,0.5\n")  # logged on_step only: plain name
    curves = read_curves(tmp_path)
    assert curves is not None and curves.rows() == [(0, 1.25, None), (3, 0.5, None)]
    metrics_csv(tmp_path).write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(RecsysError, match="step"):
        read_curves(tmp_path)


def _has_colour(img: np.ndarray, hex_colour: str, tol: float = 0.06) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    return bool((np.abs(img[..., :3] - rgb).max(axis=-1) < tol).any())


def test_plot_curves_draws_both_curves(run: dict, tmp_path: Path) -> None:
    curves = read_curves(run["out"])
    assert curves is not None
    path = plot_curves(curves, tmp_path / "plots" / CURVES_PNG)
    assert path == tmp_path / "plots" / CURVES_PNG and path.stat().st_size > 0
    img = imread(path)
    assert (img != img[0, 0]).any()  # not one flat colour
    assert _has_colour(img, "#1f77b4") and _has_colour(img, "#ff7f0e")  # the loss (blue) and AUC (orange) lines
    no_val = plot_curves(curves.with_columns(pl.lit(None, pl.Float64).alias(VAL_AUC)), tmp_path / "no_val.png")
    assert not _has_colour(imread(no_val), "#ff7f0e")
    with pytest.raises(ValueError, match="no training curves"):
        plot_curves(curves.head(0), tmp_path / "empty.png")


class _Messages(logging.Handler):
    """Every record that gets past a logger's level (Lightning's own handler writes to the stream of import time,
    which capfd does not see under pytest)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_training_prints_no_third_party_noise(run: dict, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    bars_on, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    levels = [logging.getLogger(name).level for name in LIGHTNING_LOGGERS]
    records = _Messages()
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).addHandler(records)
    capfd.readouterr()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # not hidden by an earlier run's "once per location"
            out = train_text_model(topic_impressions(run["items"], n_users=12, per_user=3), run["items"],
                                   tiny_config(run["encoder"], epochs=1), tmp_path / "m", show_progress=False)
            model = load_text_model(out)
            save_text_model(model, tmp_path / "again")
    finally:
        for name in LIGHTNING_LOGGERS:
            logging.getLogger(name).removeHandler(records)
    captured = capfd.readouterr()
    text = "\n".join([captured.out, captured.err, *records.messages, *(str(w.message) for w in caught)])
    assert not [noise for noise in NOISE if noise in text], text
    # Scoped: the caller's settings are back afterwards ...
    assert hf_logging.is_progress_bar_enabled() == bars_on and hf_logging.get_verbosity() == verbosity
    assert [logging.getLogger(name).level for name in LIGHTNING_LOGGERS] == levels
    # ... and recsys's own progress bars still show.
    encode_items(model, run["items"], show_progress=True)
    assert "encode items" in capfd.readouterr().err
