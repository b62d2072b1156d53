"""recsys: personalised ranked lists with a text-aware LightGBM ranker.

The public API (see the README)::

    from recsys import Dataset, Recommender, TrainConfig
"""

from __future__ import annotations

from typing import Any

from recsys.data import Dataset
from recsys.errors import RecsysError

__all__ = ["Dataset", "Recommender", "RecsysError", "TrainConfig", "load_config"]


def __getattr__(name: str) -> Any:
    # The model side imports torch and LightGBM: only when it is asked for.
    if name == "Recommender":
        from recsys.api import Recommender

        return Recommender
    if name in ("TrainConfig", "load_config"):
        from recsys import config

        return getattr(config, name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")
