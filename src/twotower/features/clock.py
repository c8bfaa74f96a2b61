"""Time features shared by training (dataset timestamps) and serving (request times): gap and clock buckets.

Both sides must bucket time the same way or the served user vector drifts from the trained one, so the
service's request parser (``serve/context.py``) and the :class:`~twotower.features.Featurizer` call these.
"""

from __future__ import annotations

import numpy as np

SECONDS_PER_DAY = 86400
SECONDS_PER_HOUR = 3600
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


def gap_buckets(gap_seconds: np.ndarray, buckets: int) -> np.ndarray:
    """Time-gap bucket: ``min(buckets - 1, ceil(log2(1 + gap)))``; 0 for no gap. int64, same shape.

    Log buckets: the difference between 1 minute and 1 hour matters for intent, that between 30 and 31 days
    does not. Negative gaps (clock skew) count as none.
    """
    g = np.maximum(np.asarray(gap_seconds, dtype=np.float64), 0.0)
    return np.minimum(np.ceil(np.log2(1.0 + g)), buckets - 1).astype(np.int64)


def clock_features(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hour 0..23, weekday 0..6 with Monday = 0) of unix timestamps in seconds, UTC. int64, same shape."""
    ts = np.asarray(ts, dtype=np.int64)
    days = np.floor_divide(ts, SECONDS_PER_DAY)
    return np.floor_divide(ts - days * SECONDS_PER_DAY, SECONDS_PER_HOUR), (days + EPOCH_WEEKDAY) % 7
