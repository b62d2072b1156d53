"""Speed of catalogue encoding and of the fine-tune step, each against a baseline in the same run.

Encoding (items per second):

* ``naive``: one ``AutoModel.from_pretrained`` in fp32 called item by item, catalogue order
  (timed on a sample of ``naive_items``; its rate does not depend on the catalogue size);
* ``batched_fp32``: :func:`recsys.text.encode.embed_rows`, length-sorted batches, fp32;
* ``batched_bf16_autocast``: the same under bf16 autocast over fp32 weights (the in-training cache path);
* ``batched_bf16``: the same with bf16 weights on a bf16 CPU (what :func:`encode_items` does),
  or autocast on a GPU; its vectors' minimum cosine to the fp32 ones is reported.

Training (samples per second, one sample = a click + K negatives): the fine-tune's own loss
(:meth:`TextModule.click_loss`) with AdamW, fp32 against bf16 autocast (Lightning's ``bf16-mixed``).
On a GPU the bf16 runs also report the share of the GPU's dense bf16 peak reached (model FLOPs).

Run::

    .venv/bin/python -m benchmarks.encode --items 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys.data import Col, Split, item_text, load_dataset
from recsys.text.device import resolve_device
from recsys.text.encode import embed_rows
from recsys.synth import SynthConfig, generate
from recsys.text.data import ClickSamples, ItemTokens, TrainCollate, candidate_rows, to_indices
from recsys.text.model import TextConfig, build_text_model, encoder_path
from recsys.text.train import TextModule

log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, for the share-of-peak figure.
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def _timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()  # CPU-GPU sync point: the kernels must have finished
    return out, time.perf_counter() - start


def _naive_rate(cfg: TextConfig, texts: list[str], device: torch.device) -> float:
    from transformers import AutoModel, AutoTokenizer

    path = encoder_path(cfg)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).to(device).eval()

    def loop(batch: list[str]) -> None:
        with torch.inference_mode():
            for text in batch:
                enc = tok(text, truncation=True, max_length=cfg.max_tokens, return_tensors="pt").to(device)
                hidden = model(**enc).last_hidden_state
                torch.nn.functional.normalize(hidden.mean(1), dim=-1).cpu()

    loop(texts[:2])  # warm-up
    _, seconds = _timed(lambda: loop(texts), device)
    return len(texts) / seconds


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_BF16_PEAK.items() if k in name), None)


def _flops_per_token(module: torch.nn.Module) -> float:
    """2 FLOPs per weight per token (matmuls; embeddings are lookups, not counted)."""
    return 2.0 * sum(p.numel() for n, p in module.named_parameters() if "embeddings" not in n)


def _train_rate(cfg: TextConfig, items: pl.DataFrame, impressions: pl.DataFrame, device: torch.device, bf16: bool,
                steps: int, batch_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_text_model(cfg)
    tokens = ItemTokens.from_items(items, model.tokenizer, cfg.fields, cfg.max_tokens)
    index = tokens.index()
    hist = to_indices(impressions[Col.HISTORY], index, cfg.history_len)
    samples = ClickSamples(hist, *candidate_rows(impressions, index), negatives=cfg.negatives, seed=0)
    collate = TrainCollate(tokens)
    module = TextModule(model, tokens, np.arange(len(tokens))).to(device)
    module.item_encoder.train()
    module._refresh_cache()
    optimizer = torch.optim.AdamW(module.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(0)
    batches = [collate([samples[i] for i in rng.integers(0, len(samples), batch_size)]) for _ in range(steps + 2)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def step(batch: dict[str, torch.Tensor]) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.click_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for b in batches[:2]:  # warm-up: allocator, kernels
        step(b)
    _, seconds = _timed(lambda: [step(b) for b in batches[2:]], device)
    tokens_done = sum(int(b["attention_mask"].sum()) for b in batches[2:])
    out = {"samples_per_s": round(steps * batch_size / seconds, 2), "unique_texts_per_step": round(np.mean([len(b["input_ids"]) for b in batches[2:]]), 1)}
    peak = _peak(device)
    if peak:  # forward + backward = 3x the forward FLOPs
        out["share_of_peak"] = round(3 * _flops_per_token(module.item_encoder) * tokens_done / seconds / peak, 4)
    return out


def run(dataset: str | None = None, n_items: int = 2000, naive_items: int = 200, batch_size: int = 128,
        train_steps: int = 6, train_batch: int = 32, max_tokens: int = 48, device: str = "auto") -> dict[str, Any]:
    """Encoding items/s (naive, batched fp32, batched bf16) and training samples/s (fp32, bf16).

    Args:
        dataset: A dataset directory to take items and train impressions from (default: synthetic).
        n_items: Items encoded by the batched paths (the catalogue's first ``n_items``).
        naive_items: Items encoded one by one by the naive baseline.
        batch_size: Items per batch of the batched paths.
        train_steps: Timed optimiser steps per training precision.
        train_batch: Samples per training step.
        max_tokens: Token budget per item.
        device: ``"auto"`` | ``"cpu"`` | ``"cuda"``.

    Returns:
        Figures: rates, speed-ups over the naive baseline and over fp32, minimum cosine bf16 vs fp32.
    """
    dev = resolve_device(device)
    if dataset is not None:
        ds = load_dataset(dataset)
    else:
        ds = generate(SynthConfig.preset("tiny", n_items=n_items, n_impressions=600))
    items = ds.items.head(n_items)
    cfg = TextConfig(max_tokens=max_tokens, device=dev.type, precision="fp32")
    model = build_text_model(cfg)
    model.item_encoder.to(dev)
    tokens = ItemTokens.from_items(items, model.tokenizer, cfg.fields, cfg.max_tokens)
    rows = np.arange(len(tokens))
    figures: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                               "threads": torch.get_num_threads(), "items": len(tokens), "max_tokens": max_tokens,
                               "mean_tokens": round(float(tokens.lengths.mean()), 1)}
    texts = item_text(items.head(naive_items), cfg.fields).to_list()
    figures["naive_items_per_s"] = round(_naive_rate(cfg, texts, dev), 1)
    variants = {"batched_fp32": ("fp32", False), "batched_bf16_autocast": ("bf16", False), "batched_bf16": ("bf16", True)}
    vectors = {}
    for name, (precision, cast) in variants.items():
        embed_rows(model.item_encoder, tokens, rows[:batch_size], device=dev, precision=precision, batch_size=batch_size, cast_weights=cast)
        vectors[name], seconds = _timed(lambda p=precision, c=cast: embed_rows(
            model.item_encoder, tokens, rows, device=dev, precision=p, batch_size=batch_size, cast_weights=c), dev)
        figures[f"{name}_items_per_s"] = round(len(rows) / seconds, 1)
        peak = _peak(dev)
        if peak and precision == "bf16":
            flops = _flops_per_token(model.item_encoder) * float(tokens.lengths.sum())
            figures[f"{name}_share_of_peak"] = round(flops / seconds / peak, 4)
    figures["bf16_min_cosine_to_fp32"] = round(float((vectors["batched_bf16"] * vectors["batched_fp32"]).sum(1).min()), 5)
    figures["speedup_batched_bf16_vs_naive"] = round(figures["batched_bf16_items_per_s"] / figures["naive_items_per_s"], 2)
    figures["speedup_batched_fp32_vs_naive"] = round(figures["batched_fp32_items_per_s"] / figures["naive_items_per_s"], 2)
    figures["speedup_bf16_vs_fp32"] = round(figures["batched_bf16_items_per_s"] / figures["batched_fp32_items_per_s"], 2)
    train = ds.split(Split.TRAIN)
    for name, bf16 in (("train_fp32", False), ("train_bf16", True)):
        for key, value in _train_rate(cfg, ds.items, train, dev, bf16, train_steps, train_batch).items():
            figures[f"{name}_{key}"] = value
    figures["speedup_train_bf16_vs_fp32"] = round(figures["train_bf16_samples_per_s"] / figures["train_fp32_samples_per_s"], 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="Dataset directory (default: synthetic items).")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--naive-items", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="Also write the figures here (JSON).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    figures = run(args.dataset, args.items, args.naive_items, args.batch_size, args.train_steps, max_tokens=args.max_tokens, device=args.device)
    text = json.dumps(figures, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
