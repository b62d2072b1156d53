"""Text model parts: device/precision choice, length buckets, the time split, the packaged MiniLM."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
import torch

from conftest_text import topic_items
from recsys.text import device as dev
from recsys.data import IMPRESSIONS_SCHEMA, Col, Split
from recsys.errors import RecsysError
from recsys.text.data import BucketBatchSampler, pad


def test_precision_choice_follows_setting_and_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert dev.lightning_precision(cpu, "fp32") == "32-true"
    assert dev.lightning_precision(cpu, "bf16") == "bf16-mixed"
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: True)
    assert dev.lightning_precision(cpu, "auto") == "bf16-mixed" and dev.inference_weight_dtype(cpu) == torch.bfloat16
    monkeypatch.setattr(dev, "cpu_supports_bf16", lambda: False)
    assert dev.lightning_precision(cpu, "auto") == "32-true" and dev.inference_weight_dtype(cpu) == torch.float32
    # On a GPU the weights stay fp32 (autocast does the bf16 work) and batches are pinned.
    assert dev.inference_weight_dtype(torch.device("cuda"), "bf16") == torch.float32
    assert dev.pin_memory(torch.device("cuda")) and not dev.pin_memory(cpu)
    with pytest.raises(RecsysError):
        dev.use_bf16(cpu, "half")


def test_inference_context_autocasts_only_when_bf16() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 4)
    with dev.inference_context(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with dev.inference_context(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32 and torch.is_inference_mode_enabled()


def test_device_resolution() -> None:
    assert dev.resolve_device("cpu").type == "cpu"
    assert dev.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RecsysError, match="no CUDA"):
            dev.resolve_device("cuda")


def test_bucket_sampler_covers_every_sample_once_and_shards_evenly() -> None:
    lengths = np.random.default_rng(0).integers(0, 30, size=1003)
    single = list(BucketBatchSampler(lengths, 10, seed=1))
    flat = sorted(i for b in single for i in b)
    assert flat == list(range(1003))
    # Buckets: the length spread inside a batch is far below that of a random batch.
    spread = np.mean([np.ptp(lengths[b]) for b in single if len(b) > 1])
    assert spread < 5
    shards = [list(BucketBatchSampler(lengths, 10, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))
    again = BucketBatchSampler(lengths, 10, seed=1)
    assert list(again) != list(again)  # a fresh order each epoch


def test_pad_marks_presence() -> None:
    ids, mask = pad([np.array([3, 4]), np.array([], dtype=np.int64)], fill=9)
    assert ids.tolist() == [[3, 4], [9, 9]] and mask.tolist() == [[True, True], [False, False]]


@pytest.mark.slow
def test_packaged_minilm_loads_offline_and_separates_topics() -> None:
    from recsys.text.encode import encode_items
    from recsys.text.train import pretrained_text_model

    items = topic_items(n_per_topic=3)
    model = pretrained_text_model()
    assert model.dim == 384 and model.user_encoder.pooling == "mean"
    vecs = encode_items(model, items, show_progress=False)  # bf16 where the CPU has it
    model.config.precision = "fp32"
    exact = encode_items(model, items, show_progress=False)
    assert np.min(np.sum(vecs.vectors * exact.vectors, axis=1)) > 0.99
    sims = exact.vectors @ exact.vectors.T
    topic = np.repeat(np.arange(4), 3)
    same = sims[(topic[:, None] == topic[None, :]) & ~np.eye(len(topic), dtype=bool)].mean()
    other = sims[topic[:, None] != topic[None, :]].mean()
    assert same > other + 0.1
