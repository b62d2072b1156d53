"""Shared fixtures: the embedded sample, loaded once per session (tests must not modify it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach for the network (the Hugging Face hub is not reachable; weights load from disk).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "data" / "sample"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "manifest.json").exists():
        pytest.fail(f"embedded sample missing at {SAMPLE_DIR}; regenerate it as data/README.md says")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_dataset(sample_dir: Path):
    from recsys.data import load_dataset

    return load_dataset(sample_dir)


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    path = SHARED_DATA / "amazon-scientific"
    if not path.exists():
        pytest.skip(f"real shop data not found at {path}")
    return path


from conftest_pg import pg_server, pg_tls_server, pg_url  # noqa: E402,F401  (the PostgreSQL fixtures, once per session)
