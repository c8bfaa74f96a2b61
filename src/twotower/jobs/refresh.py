"""The refresh job: run the offline encoder for users with new activity and write their states to the store.

A daily (or hourly) job in the hybrid split (seed 001); for an unsplit tower it caches the user vector. As
of time ``as_of`` a user's history is every event with timestamp < ``as_of``; the user is *stale* when that
history ends later than the state the store holds for this model version (or no state exists). Only stale
users are encoded, in a fixed order, and each batch is one atomic ``put_many``. A killed job therefore
resumes for free: running it again recomputes the stale set, which no longer contains the users of finished
batches, and nothing is encoded twice.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank computes the same stale set, waits for the others (so no
rank's writes change another's view of it), then encodes and writes the batches ``rank, rank + W, ...``; the
report counts every rank's users. Each batch is still one atomic write, so the result is the single-process
job's and a killed sharded job resumes like any other.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import SequenceData
from ..errors import RefreshError
from ..features import Featurizer
from ..model.checkpoint import load_model
from ..store import FeatureStore, open_store
from ..train import distributed

log = logging.getLogger(__name__)


class RefreshStopped(Exception):
    """Raised by ``stop_after_batches`` (tests use it to simulate a kill)."""


@dataclass
class RefreshReport:
    """What one refresh did. ``stale`` users needed a new state; ``encoded`` got one in this run."""

    model_version: str
    as_of: int
    users_with_history: int
    stale: int
    encoded: int
    batches: int
    seconds: float

    @property
    def users_per_s(self) -> float:
        return self.encoded / max(self.seconds, 1e-9)


def history_as_of(data: SequenceData, as_of: int) -> tuple[np.ndarray, np.ndarray]:
    """(events per user before ``as_of`` int64 [U], timestamp of the last of them, -1 if none, int64 [U]).

    Events are time-sorted within each user, so the count is a per-user ``searchsorted``; vectorised by
    counting, for every event, whether it is earlier than ``as_of``.
    """
    before = data.event_ts < as_of
    n = np.add.reduceat(before.astype(np.int64), data.user_offsets[:-1]) if data.num_events else np.zeros(0)
    n = np.where(np.diff(data.user_offsets) > 0, n, 0)  # reduceat of an empty slice returns the next value
    last_row = data.user_offsets[:-1] + n - 1
    last_ts = np.where(n > 0, data.event_ts[np.maximum(last_row, 0)], -1)
    return n.astype(np.int64), last_ts.astype(np.int64)


@torch.no_grad()
def refresh_states(
    run: str | Path,
    store: FeatureStore | str,
    as_of: int | None = None,
    since: int | None = None,
    data_dir: str | Path | None = None,
    batch: int = 512,
    device: str = "cpu",
    progress: bool = True,
    stop_after_batches: int | None = None,
) -> RefreshReport:
    """Encode the stale users of ``run``'s model as of ``as_of`` (default: after the last event): the hybrid
    tower's encoder state, or the unsplit tower's user vector (``TwoTower.encode_state``).

    ``since``: consider only users whose last event before ``as_of`` is at or after ``since`` (the daily
    job's "users with new activity"); others are not even looked up in the store. ``batch``: users per encoder
    forward and per store write, >= 1.
    """
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise RefreshError(f"batch must be a whole number of users >= 1 (e.g. --batch 512), got {batch!r}")
    shards = distributed.from_env(device)
    if shards is not None and device.startswith("cuda"):
        device = f"cuda:{shards.local_rank}"
    progress = progress and (shards is None or shards.main)
    model, model_cfg, version = load_model(run, device=device)
    if data_dir is None:
        rec = Path(run) / "data_path.txt"
        if not rec.is_file():
            raise FileNotFoundError(f"{run} does not record its dataset; pass --data DIR")
        data_dir = rec.read_text().strip()
    data = SequenceData.load(data_dir)
    feat = Featurizer(data, model_cfg)
    st = open_store(store) if isinstance(store, str) else store
    t0 = time.perf_counter()
    as_of = int(data.event_ts.max()) + 1 if as_of is None and data.num_events else int(as_of or 0)
    n, last_ts = history_as_of(data, as_of)
    cand = np.flatnonzero((n > 0) & (last_ts >= (since if since is not None else -1)))
    user_ids = data.user_ids().astype(str)
    stale_parts = []
    for lo in range(0, len(cand), 5000):
        c = cand[lo : lo + 5000]
        found, _, stored_last = st.get_meta(list(user_ids[c]), version)
        stale_parts.append(c[~found | (stored_last < last_ts[c])])
    stale = np.concatenate(stale_parts) if stale_parts else np.zeros(0, np.int64)
    starts = list(range(0, len(stale), batch))
    if shards is not None:
        shards.barrier()  # every rank has its stale set before any rank writes
        starts = starts[shards.rank :: shards.world]
    done = batches = 0
    try:
        for lo in tqdm(starts, desc="refresh states", unit="batch", disable=not progress):
            u = stale[lo : lo + batch]
            end = data.user_offsets[u] + n[u]
            state = model.encode_state(feat.histories_before(u, end).to(device)).float().cpu().numpy()
            st.put_many(list(user_ids[u]), state, np.full(len(u), as_of, np.int64), last_ts[u], version)
            done += len(u)
            batches += 1
            if stop_after_batches is not None and batches >= stop_after_batches:
                raise RefreshStopped
    finally:
        if isinstance(store, str):
            st.close()
    if shards is not None:  # every rank's work
        done, batches = int(shards.total(done)), int(shards.total(batches))
    report = RefreshReport(version, as_of, int((n > 0).sum()), len(stale), done, batches, time.perf_counter() - t0)
    log.info(
        "refresh as of %d: %d stale of %d users with history, %d encoded (%.0f users/s)",
        as_of,
        report.stale,
        report.users_with_history,
        done,
        report.users_per_s,
    )
    return report
