"""The one percentile definition every dspex report uses (history, batch statistics, health).

Linear interpolation between the closest ranks: the ``q``-th percentile of ``n`` sorted values
sits at rank ``(n - 1) * q / 100`` (0-based), and a fractional rank is interpolated between its
two neighbours. This is NumPy's default (``method="linear"``), Hyndman & Fan's type 7 and
``statistics.quantiles(method="inclusive")``. The 0th percentile is the minimum, the 100th the
maximum, and one value is every percentile of itself.

Example:
    >>> percentile([10.0, 20.0, 30.0, 40.0], 50)
    25.0
    >>> percentile([10.0, 20.0, 30.0, 40.0], 95)
    38.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "report_ms"]

_MS_DIGITS = 3  # reported durations are rounded to the microsecond


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float | None:
    """The ``q``-th percentile (``q`` in 0–100) of ``values``; ``None`` when there are none.

    Args:
        values: the sample, in any order (a list, tuple or ``array('d')``).
        q: which percentile, 0 to 100 (50 is the median, 95 the p95).
        presorted: the caller promises ``values`` is sorted ascending (skips a copy and a sort
            when one sample gives several percentiles).

    Raises:
        ValueError: ``q`` is outside 0–100.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    if not values:
        return None
    ordered = values if presorted else sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    lower = float(ordered[low])
    return lower + (float(ordered[high]) - lower) * (rank - low)


def report_ms(value: float | None) -> float | None:
    """A duration in ms as reports show it (rounded to the microsecond); ``None`` stays ``None``.

    Every report of a percentile rounds the same way, so the p95 of the same durations is the same
    number in ``history``, batch statistics and ``health``.
    """
    return None if value is None else round(value, _MS_DIGITS)
