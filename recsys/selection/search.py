"""The search loop shared by the retrieval and ranker searches: trials judged within a time budget, and a hill-climb.

A :class:`Search` runs trials one after another and records each (the settings, its dev score, the seconds it
took). Its first trial always runs (the configured settings, so every search has a score to beat and a choice to
fall back on); a later one starts only while the budget has time left (one under way finishes, so a search may end
up to a trial's length past its budget), and what was found so far is kept. Scores are higher-is-better; NaN never
wins.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Hashable)
Judge = Callable[[], tuple[float, dict[str, Any]]]  # -> (score, details recorded with the trial)


class Search:
    """Trials within a time budget, recorded in order.

    Args:
        budget_s: seconds the search may spend; the first trial runs whatever the budget.
        clock: seconds from an arbitrary origin (tests pass a fake one).
    """

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget_s, self.clock = budget_s, clock
        self.start = clock()
        self.trials: list[dict[str, Any]] = []
        self.stopped: str | None = None

    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    def open(self) -> bool:
        """Whether another trial may start: always before the first one, afterwards only while time is left."""
        if self.trials and self.elapsed >= self.budget_s:
            if self.stopped is None:
                self.stopped = f"the time budget ({self.budget_s:g} s) was spent after {len(self.trials)} trial(s); the best so far is kept"
                log.info("selection: %s", self.stopped)
            return False
        return True

    def trial(self, step: str, settings: dict[str, Any], judge: Judge) -> float | None:
        """Judge one setting and record it; None (nothing run) once the budget is spent."""
        if not self.open():
            return None
        start = self.clock()
        score, details = judge()
        self.trials.append({"step": step, "settings": dict(settings), "score": _plain(score), "seconds": round(self.clock() - start, 3), **details})
        log.info("selection %s %s: %.4f", step, settings, score)
        return score

    def summary(self) -> dict[str, Any]:
        """The budget, the time spent and why the search ended, for ``selection.json``."""
        return {"budget_seconds": self.budget_s, "seconds": round(self.elapsed, 2), "trials": len(self.trials),
                "stopped": self.stopped or "every step ran"}


def better(a: float, b: float) -> bool:
    """Whether score `a` beats `b` (strictly; NaN never wins, anything beats NaN)."""
    return not math.isnan(a) and (math.isnan(b) or a > b)


def climb(values: Sequence[T], start: T, start_score: float, judge: Callable[[T], float | None]) -> tuple[T, float]:
    """The best point of a sorted grid found by walking from `start` (added to `values` if missing) each way while the
    score does not fall: a hill-climb that also crosses plateaus (e.g. ``recent`` values longer than every history).
    Cheap where the score is unimodal along the grid: the points up to one past the best each way.

    Args:
        values: the grid (any order; sorted here).
        start: the point to start from, already judged.
        start_score: its score.
        judge: the score of a value, or None when the search must stop (the best so far is returned).

    Returns:
        The best value judged (the start wins ties, then the point judged first) and its score.
    """
    grid = sorted(set(values) | {start})  # type: ignore[type-var]
    seen: dict[T, float] = {start: start_score}
    i = grid.index(start)
    stop = False
    for direction in (-1, 1):
        j, previous = i + direction, start_score
        while not stop and 0 <= j < len(grid):
            score = judge(grid[j])
            if score is None:
                stop = True
                break
            seen[grid[j]] = score
            if better(previous, score):  # it fell: no further this way
                break
            previous, j = score, j + direction
    best = start
    for value in seen:  # in the order judged: the start, then nearer points first each way
        if better(seen[value], seen[best]):
            best = value
    return best, seen[best]


def _plain(value: Any) -> Any:
    """A float for JSON (NaN as None)."""
    value = float(value)
    return None if math.isnan(value) else round(value, 6)
