"""Per-key totals of events strictly before a time: the point-in-time core of the behaviour features.

A :class:`Timeline` follows one kind of key (items, categories, users) through the log in time order,
one segment of rows at a time. A segment's rows are events (weights > 0), queries (weights 0, asking
what happened before their time), or both; :meth:`Timeline.add` returns a :class:`Segment` that answers,
for every row at time t, sums over the key's events with timestamp < t: all time, or in a trailing
window [t - w, t). Events at t itself, the row's own included, never count.

What carries over between segments is small: per key, the totals of events already past every window
(``state``), plus the events of the longest window (``buffer``), which a window starting before the
segment still reaches. Memory therefore follows the segment, the number of keys and the events of the
longest window, never the length of the log.

How a segment is answered, in vectorised numpy: the buffer and the segment, in time order, are sorted
stably by key (a radix sort); a running sum over that order, read at the first row of a row's
(key, timestamp) group less its value at the key's first row, counts the key's events before t (plus
the state); read instead at the key's first row at or after t - w, it gives the window's sum.
"""

from __future__ import annotations

import numpy as np

from features.keys import radix_order, run_starts

HOUR_US = 3_600_000_000
NEVER = np.iinfo(np.int64).max  # "no event yet" in the first-time state
NONE = np.iinfo(np.int64).min  # "no event yet" in the last-time state


class Timeline:
    """Events of one kind of key, with their weights, streamed in time order.

    Args:
        n_weights: weight columns per event (say impressions and clicks).
        window_us: the longest trailing window that will be asked for, in microseconds (0: all time only).
        first: track each key's first event, for :meth:`Segment.first_time`.
        last_of: a weight column whose latest positive event time :meth:`Segment.last_time` reports, or None.
    """

    def __init__(self, n_weights: int, window_us: int = 0, first: bool = False, last_of: int | None = None) -> None:
        self.window_us = int(window_us)
        self.track_first, self.last_of = first, last_of
        self._state = np.zeros((0, n_weights), np.int64)  # per key: sums of the events that left the buffer
        self._last = np.zeros(0, np.int64)  # per key: latest time of a positive `last_of` event that left the buffer
        self._first = np.zeros(0, np.int64)  # per key: time of the first event added so far
        self._key = np.zeros(0, np.int64)  # the buffer, in time order
        self._ts = np.zeros(0, np.int64)
        self._weights = np.zeros((0, n_weights), np.int64)

    def add(self, key: np.ndarray, ts: np.ndarray, weights: np.ndarray) -> Segment:
        """Add a segment's rows (time-ordered, none earlier than any row added before) and return its answers.

        Args:
            key: key code per row (non-negative integers, dense enough to index an array).
            ts: microseconds per row.
            weights: (rows, n_weights) non-negative integers, all zero for a row that is only a query.
        """
        key, ts = np.asarray(key, np.int64), np.asarray(ts, np.int64)
        weights = np.asarray(weights, np.int64).reshape(len(key), self._state.shape[1])
        self._grow(int(key.max()) + 1 if len(key) else 0)
        is_event = weights[:, 0] > 0
        for col in range(1, weights.shape[1]):
            is_event |= weights[:, col] > 0
        if self.track_first:
            np.minimum.at(self._first, key[is_event], ts[is_event])
        segment = Segment(self, np.concatenate([self._key, key]), np.concatenate([self._ts, ts]),
                          np.concatenate([self._weights, weights]), len(self._key))
        if len(ts):
            self._keep(segment, np.concatenate([np.ones(len(self._key), bool), is_event]), int(ts.max()) + 1 - self.window_us)
        return segment

    def _grow(self, n_keys: int) -> None:
        if n_keys > len(self._state):
            extra = max(n_keys, 2 * len(self._state)) - len(self._state)
            self._state = np.concatenate([self._state, np.zeros((extra, self._state.shape[1]), np.int64)])
            self._last = np.concatenate([self._last, np.full(extra, NONE, np.int64)])
            self._first = np.concatenate([self._first, np.full(extra, NEVER, np.int64)])

    def _keep(self, segment: Segment, is_event: np.ndarray, cutoff: int) -> None:
        """The new buffer: the events that the next segment's windows reach (time >= cutoff); the rest go to the state."""
        old = is_event & (segment.ts < cutoff)
        key = segment.key[old]
        for col in range(self._state.shape[1]):
            self._state[:, col] += np.bincount(key, weights=segment.weights[:, col][old], minlength=len(self._state)).astype(np.int64)
        if self.last_of is not None:
            flagged = segment.weights[:, self.last_of][old] > 0
            np.maximum.at(self._last, key[flagged], segment.ts[old][flagged])
        keep = is_event & ~old
        self._key, self._ts, self._weights = segment.key[keep], segment.ts[keep], np.take(segment.weights, np.flatnonzero(keep), axis=0)


class Segment:
    """Answers for the rows of one :meth:`Timeline.add`, each at its own time t, in the order they were added."""

    def __init__(self, timeline: Timeline, key: np.ndarray, ts: np.ndarray, weights: np.ndarray, n_buffered: int) -> None:
        self.key, self.ts, self.weights = key, ts, weights  # buffer rows first, then the segment's rows
        self._window_us, self._last_of = timeline.window_us, timeline.last_of
        n = len(key)
        # Sorted by key, stably: positions follow time, so each key's rows stay in time order.
        self._order = order = radix_order(key)
        k, t = key[order], ts[order]
        key_start, time_start = run_starts(k, t)  # first sorted row of the key, of (key, t)
        self._cum = np.zeros((n + 1, weights.shape[1]), np.int64)
        np.cumsum(np.take(weights, order, axis=0), axis=0, out=self._cum[1:])
        self._sorted_key, self._sorted_time = k, t
        self._positions = k * n + order if timeline.window_us else None  # sorted (key, position) pairs, as numbers
        sorted_at = np.empty(n, np.int64)
        sorted_at[order] = np.arange(n)
        # The segment's own rows (buffer rows only count): where each sits in the sorted order.
        rows = sorted_at[n_buffered:]
        self._rows_key, self._rows_ts = key[n_buffered:], ts[n_buffered:]
        self._key_start, self._time_start, self._sorted_at = key_start[rows], time_start[rows], rows
        # What the timeline knew before these rows, read now: adding the next segment changes it.
        self._state = np.take(timeline._state, self._rows_key, axis=0)
        self._last = timeline._last[self._rows_key] if timeline.last_of is not None else None
        self._first = timeline._first[self._rows_key]

    def before(self) -> np.ndarray:
        """(rows, n_weights): sums of the key's event weights with timestamp < t, over all time."""
        return self._state + np.take(self._cum, self._time_start, axis=0) - np.take(self._cum, self._key_start, axis=0)

    def window(self, hours: int) -> np.ndarray:
        """(rows, n_weights): sums of the key's event weights with t - `hours` <= timestamp < t."""
        width = int(hours) * HOUR_US
        if width > self._window_us:
            raise ValueError(f"a {hours} h window is longer than the timeline keeps ({self._window_us} us)")
        # In sorted order: the first position (in time) at or after t - w, then the key's first row from there on.
        assert self._positions is not None
        first = np.searchsorted(self._positions, self._sorted_key * len(self.key) + self._time_position(width)[self._order])
        return np.take(self._cum, self._time_start, axis=0) - np.take(self._cum, first[self._sorted_at], axis=0)

    def _time_position(self, width: int) -> np.ndarray:
        """Per row (in time order): the first position whose time is >= the row's time - `width`."""
        new = np.ones(len(self.ts), bool)  # searched once per distinct time: a timestamp has many rows
        new[1:] = self.ts[1:] != self.ts[:-1]
        starts = np.flatnonzero(new)
        times = self.ts[starts]
        return starts[np.searchsorted(times, times - width)][np.cumsum(new) - 1]

    def first_time(self) -> np.ndarray:
        """Per row: time of the key's first event, if before t; else :data:`NEVER`."""
        return np.where(self._first < self._rows_ts, self._first, NEVER)

    def last_time(self) -> np.ndarray:
        """Per row: time of the key's latest event with a positive ``last_of`` weight before t; else :data:`NONE`."""
        if self._last_of is None or self._last is None:
            raise ValueError("this timeline was built without last_of")
        flag = self.weights[self._order, self._last_of] > 0
        count = np.zeros(len(flag) + 1, np.int64)
        np.cumsum(flag, out=count[1:])
        flagged_at = np.flatnonzero(flag)
        before = count[self._time_start]  # flagged rows before (key, t) in sorted order
        if not len(flagged_at):
            return self._last
        latest = self._sorted_time[flagged_at[np.maximum(before - 1, 0)]]
        return np.where(before > count[self._key_start], latest, self._last)
