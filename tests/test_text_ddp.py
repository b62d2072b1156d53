"""The encoder fine-tune under Lightning DDP: two gloo processes on CPU reach the one-process validation AUC.

``recsys train-encoder --devices 2`` runs in a subprocess: Lightning's ``ddp`` starts the second rank as a copy
of the command, which a pytest process cannot be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest_text import make_tiny_encoder, topic_impressions, topic_items
from recsys.data import Dataset, build_manifest, save_dataset
from recsys.text.ddp import gather_clicks
from recsys.text.fine_tune import METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]


def _train_encoder(ds: Path, encoder: Path, out: Path, devices: int) -> dict:
    _recsys("train-encoder", str(ds), "--out", str(out), "--encoder", str(encoder), "--fields", "title", "--max-tokens", "16", "--history-len", "8",
            "--epochs", "3", "--batch-size", "16", "--lr", "2e-3", "--precision", "fp32", "--device", "cpu", "--val-fraction", "0.25",
            "--devices", str(devices))
    return json.loads((out / METRICS_FILE).read_text())


def _recsys(*args: str) -> str:
    """Run the CLI in a fresh process (Lightning's ddp launcher re-runs this same command for the other ranks)."""
    cmd = [sys.executable, "-m", "cli", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_ddp_processes_reach_the_one_process_validation_auc(tmp_path: Path) -> None:
    items = topic_items()
    imps = topic_impressions(items, n_users=40, per_user=4)
    save_dataset(Dataset(items, imps, build_manifest(items, imps, "test", "impressions")), tmp_path / "ds")
    encoder = make_tiny_encoder(tmp_path / "enc")
    one = _train_encoder(tmp_path / "ds", encoder, tmp_path / "one", 1)
    two = _train_encoder(tmp_path / "ds", encoder, tmp_path / "two", 2)
    first = next(h["val_auc"] for h in one["history"] if h["epoch"] == -1)
    # Each rank a disjoint half of the batches: half the optimiser steps per epoch, the same samples seen.
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["steps"] < one["steps"] and two["train_samples"] == one["train_samples"]
    assert two["val_impressions"] == one["val_impressions"]  # validation summed over both ranks' shards
    assert two["best_val_auc"] > first + 0.05  # the two-process run learned
    # 40 validation impressions of 4 non-clicks: one impression's AUC moves the mean by up to .025; noise = two of them.
    assert abs(two["best_val_auc"] - one["best_val_auc"]) < 0.05


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_recsys_train_fine_tunes_under_ddp_and_goes_on_in_one_process(tmp_path: Path) -> None:
    """``recsys train --devices 2``: the second rank only fine-tunes; rank 0 saves, encodes, builds features, ranks."""
    from conftest_text import small_toml

    items = topic_items()
    imps = topic_impressions(items, n_users=40, per_user=4)
    save_dataset(Dataset(items, imps, build_manifest(items, imps, "test", "impressions")), tmp_path / "ds")
    (tmp_path / "small.toml").write_text(small_toml(make_tiny_encoder(tmp_path / "enc")))
    out = _recsys("train", str(tmp_path / "ds"), "--out", str(tmp_path / "m"), "--config", str(tmp_path / "small.toml"), "--devices", "2")
    assert out.count("written to") == 1  # one summary: the other rank ended after the fine-tune
    stages = json.loads((tmp_path / "m" / "stages.json").read_text())
    assert {"text_model", "encode", "features", "ranker"} <= set(stages)
    metrics = json.loads((tmp_path / "m" / "text" / METRICS_FILE).read_text())
    assert metrics["processes"] == 2 and metrics["steps"] > 0


def test_one_process_gathers_nothing() -> None:
    clicks, rows = torch.randn(3, 4), torch.tensor([5, 7, 5])
    vectors, got, valid, offset = gather_clicks(object(), clicks, rows)
    assert vectors is clicks and got is rows and valid.all() and offset == 0
    assert np.array_equal(got.numpy(), [5, 7, 5])
