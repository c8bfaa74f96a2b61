"""Split labels of a dataset: per-user leave-last-out and a global time split, with warnings for empty parts.

Both label every event ``SPLIT_TRAIN``, ``SPLIT_VALID`` or ``SPLIT_TEST`` (:mod:`twotower.layout`), uint8 [E]:

* ``loo`` (leave-last-out): each user's last event is test (if the user has 2 or more), the one before it
  validation (3 or more), the rest training;
* ``time``: by the global time quantiles ``1 - valid_frac - test_frac`` and ``1 - test_frac``, events at
  or after the later cut-off are test, those between validation. Events at a cut-off go to the later part.

Both take events in (user, time) order (:meth:`~twotower.data.encoding.EventColumns.sort_by_user_time`).
"""

from __future__ import annotations

import logging

import numpy as np

from ..layout import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VALID

log = logging.getLogger(__name__)


def split_labels(
    offsets: np.ndarray, ts: np.ndarray, valid_frac: float, test_frac: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-event split labels for leave-last-out and the global time split. uint8 [E] each.

    ``offsets`` int64 [U + 1] and ``ts`` int64 [E] are in (user, time) order. No [E]-sized temporaries but
    booleans and one copy of ``ts`` (for the quantiles).
    """
    n, ends = np.diff(offsets), offsets[1:]
    loo = np.zeros(len(ts), np.uint8)
    loo[ends[n >= 2] - 1] = SPLIT_TEST  # each user's last event, if it has two or more
    loo[ends[n >= 3] - 2] = SPLIT_VALID  # and the one before, if it has three or more
    t_valid, t_test = np.quantile(ts, [1.0 - valid_frac - test_frac, 1.0 - test_frac], method="lower")
    tsplit = (ts >= t_valid).view(np.uint8) + (ts >= t_test).view(np.uint8)  # t_valid <= t_test: 0, 1 or 2
    if valid_frac == 0:
        tsplit[tsplit == SPLIT_VALID] = SPLIT_TRAIN
    return loo, tsplit


def split_sizes(loo: np.ndarray, time: np.ndarray) -> dict[str, dict[str, int]]:
    """``{"loo": {"train": n, "valid": n, "test": n}, "time": {...}}``: events per part of each scheme."""
    return {
        scheme: dict(zip(("train", "valid", "test"), np.bincount(arr, minlength=3).tolist()))
        for scheme, arr in (("loo", loo), ("time", time))
    }


def warn_degenerate_splits(
    sizes: dict[str, dict[str, int]], offsets: np.ndarray, ts: np.ndarray, valid_frac: float, test_frac: float
) -> None:
    """Log every empty part of a split scheme, and why: training or evaluation on that scheme cannot run.

    Leave-last-out always has training events; its validation needs a user with 3+ events, its test one with
    2+. The time split always has test events; its training and validation parts vanish when the cut-off
    quantiles fall on one timestamp shared by many events (all at a cut-off go to the later part).
    """
    most = int(np.diff(offsets).max())
    if sizes["loo"]["valid"] == 0:
        log.warning(
            "split loo (leave-last-out): validation is empty because no user has 3 or more events (the last "
            "event is test, the one before validation, and one must be left to train on; the most is %d). "
            "Training with split 'loo' has nothing to validate on; use split 'time' or a log with longer histories",
            most,
        )
    if sizes["loo"]["test"] == 0:
        log.warning("split loo (leave-last-out): test is empty because every user has 1 event only")
    empty = [part for part in ("train", "valid") if sizes["time"][part] == 0]
    if valid_frac == 0:
        empty = [part for part in empty if part != "valid"]
    if empty:
        lo, hi = 1.0 - valid_frac - test_frac, 1.0 - test_frac
        t_valid, t_test = np.quantile(ts, [lo, hi], method="lower")
        log.warning(
            "split time (global time split): %s empty because the cut-offs (the %.0f%% and %.0f%% time quantiles, "
            "%d and %d) fall on timestamps shared by many events, and events at a cut-off go to the later part "
            "(time range %d..%d, %d distinct timestamps). Use split 'loo', or a log with finer timestamps",
            " and ".join("validation" if p == "valid" else p for p in empty) + (" are" if len(empty) > 1 else " is"),
            100 * lo,
            100 * hi,
            t_valid,
            t_test,
            ts.min(),
            ts.max(),
            len(np.unique(ts)),
        )
