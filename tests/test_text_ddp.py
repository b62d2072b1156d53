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
from recsys.text.gather import gather_clicks
from recsys.text.train import METRICS_FILE

ROOT = Path(__file__).resolve().parents[1]


def _train_encoder(ds: Path, encoder: Path, out: Path, devices: int) -> dict:
    cmd = [sys.executable, "-m", "cli", "train-encoder", str(ds), "--out", str(out), "--encoder", str(encoder), "--fields", "title",
           "--max-tokens", "16", "--history-len", "8", "--epochs", "3", "--batch-size", "16", "--lr", "2e-3", "--precision", "fp32",
           "--device", "cpu", "--val-fraction", "0.25", "--devices", str(devices)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / METRICS_FILE).read_text())


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
    assert two["steps"] < one["steps"] and two["train_samples"] == one["train_samples"]
    assert two["val_impressions"] == one["val_impressions"]  # validation summed over both ranks' shards
    assert two["best_val_auc"] > first + 0.05  # the two-process run learned
    # 40 validation impressions of 4 non-clicks: one impression's AUC moves the mean by up to .025; noise = two of them.
    assert abs(two["best_val_auc"] - one["best_val_auc"]) < 0.05


def test_one_process_gathers_nothing() -> None:
    clicks, rows = torch.randn(3, 4), torch.tensor([5, 7, 5])
    vectors, got, valid, offset = gather_clicks(object(), clicks, rows)
    assert vectors is clicks and got is rows and valid.all() and offset == 0
    assert np.array_equal(got.numpy(), [5, 7, 5])
