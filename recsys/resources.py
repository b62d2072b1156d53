"""Resource settings: how much a run may use (threads, memory, scratch space, batch sizes), never what it computes.

A config field declared with :func:`resource` is left out of every stage fingerprint, so giving a run more
memory or other threads never retrains a finished stage. Everything else in a config is a result setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RESOURCE_KEY = "recsys_resource"


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
