"""Tiny shop logs for the H-shop tests (imported explicitly): the UniSRec directory layout and a Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAME = "Tiny"


def sequences(n_users: int = 60, n_items: int = 30, length: int = 7, seed: int = 0) -> list[list[int]]:
    """Each user walks a chain i, i+1, i+2, ... (mod n_items) from a random start, with an occasional jump.

    The chain makes "what follows my last item" learnable, so a sequence-aware model beats popularity.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        start = int(rng.integers(n_items))
        seq = [(start + k) % n_items for k in range(length)]
        if rng.random() < 0.2:  # a jump keeps transitions from being a perfect oracle
            seq[rng.integers(1, length - 2)] = int(rng.integers(n_items))
        out.append(list(dict.fromkeys(seq)))  # no repeats inside a sequence
    return [s for s in out if len(s) >= 4]


def write_unisrec(root: Path, seqs: list[list[int]], n_items: int) -> Path:
    """Write NAME.{item2index,user2index,text,train.inter,valid.inter,test.inter} as UniSRec does."""
    root.mkdir(parents=True, exist_ok=True)
    asin = [f"B{i:05d}" for i in range(n_items)]
    (root / f"{NAME}.item2index").write_text("".join(f"{a}\t{i}\n" for i, a in enumerate(asin)))
    (root / f"{NAME}.user2index").write_text("".join(f"U{u:04d}\t{u}\n" for u in range(len(seqs))))
    lines = ["item_id:token\ttext:token_seq"]
    for i, a in enumerate(asin):
        category = "" if i % 7 == 3 else f"Industrial & Scientific Group {i % 5}"
        brand = "" if i % 11 == 5 else f"Brand{i % 3}"
        lines.append(f"{a}\tWidget No. {i} part. {category}. {brand}. ")
    (root / f"{NAME}.text").write_text("\n".join(lines) + "\n")
    header = "user_id:token\titem_id_list:token_seq\titem_id:token"
    train, valid, test = [header], [header], [header]
    for u, s in enumerate(seqs):
        for end in range(len(s) - 3, 0, -1):  # longest prefix first, as the real files
            train.append(f"{u}\t{' '.join(map(str, s[:end]))}\t{s[end]}")
        valid.append(f"{u}\t{' '.join(map(str, s[:-2]))}\t{s[-2]}")
        test.append(f"{u}\t{' '.join(map(str, s[:-1]))}\t{s[-1]}")
    for split, rows in (("train", train), ("valid", valid), ("test", test)):
        (root / f"{NAME}.{split}.inter").write_text("\n".join(rows) + "\n")
    return root
