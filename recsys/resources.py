"""Resource settings: how much a run may use (threads, memory, scratch space, batch sizes), never what it computes.

A config field declared with :func:`resource` is left out of every stage fingerprint, so giving a run more
memory or other threads never retrains a finished stage. Everything else in a config is a result setting.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

RESOURCE_KEY = "recsys_resource"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*$", re.IGNORECASE)


def resource(default: Any) -> Any:
    """A dataclass field whose value may change between runs without changing any result."""
    return dataclasses.field(default=default, metadata={RESOURCE_KEY: True})


def result_settings(cfg: Any) -> Any:
    """A config as JSON-able data without its resource fields (recursively): what a fingerprint hashes."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: result_settings(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if not f.metadata.get(RESOURCE_KEY)}
    if isinstance(cfg, (list, tuple)):
        return [result_settings(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: result_settings(v) for k, v in cfg.items()}
    return cfg


def parse_bytes(size: str | int) -> int:
    """A memory size as bytes: a whole number, or "4GB" / "512MB" (powers of 1000, as DuckDB) / "4GiB" (of 1024).

    Raises:
        ValueError: anything else, or a size below one byte.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = _SIZE.match(str(size))
        if not m:
            raise ValueError(f"a memory size looks like '4GB', '512MB' or '4GiB', got {size!r}")
        number, unit, binary = m.groups()
        value = int(float(number) * (1024 if binary else 1000) ** "BKMGT".index(unit.upper() or "B"))
    if value < 1:
        raise ValueError(f"a memory size must be at least one byte, got {size!r}")
    return value
