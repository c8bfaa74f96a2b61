"""Synthetic interaction logs for scale tests: Zipf item popularity, power-law user activity, topics.

Each user has a favourite topic (item ``i`` belongs to topic ``i mod T``); a ``topic_affinity`` share of
their events is drawn from that topic, the rest from the global Zipf law, so there is structure to learn.
Generated and written chunk by chunk (Parquet or CSV by the file suffix): memory stays bounded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

T0 = 1_600_000_000  # 2020-09-13, the synthetic log's first second


def _zipf_sampler(n: int, a: float, rng: np.random.Generator):
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** a)
    cdf /= cdf[-1]
    return lambda size: np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def generate(
    users: int,
    items: int,
    events: int,
    out: str | Path,
    seed: int = 0,
    topics: int = 50,
    topic_affinity: float = 0.6,
    zipf_a: float = 1.05,
    days: int = 180,
    chunk_users: int = 200_000,
    progress: bool = True,
) -> dict:
    """Write a log with columns ``user_id, item_id, timestamp, click, like, surface``; return counts."""
    if min(users, items, events) < 1:
        raise ValueError("users, items and events must all be >= 1")
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    activity = rng.pareto(1.5, users) + 1.0  # power-law activity
    per_user = rng.multinomial(events, activity / activity.sum())
    user_topic = rng.integers(0, topics, users)
    global_item = _zipf_sampler(items, zipf_a, rng)
    per_topic = max(1, items // topics)
    topic_item = _zipf_sampler(per_topic, zipf_a, rng)
    span = days * 86400
    tmp = out.with_name(f".{out.name}.tmp")
    writer = None
    written = 0
    try:
        for lo in tqdm(range(0, users, chunk_users), desc="synth", unit="chunk", disable=not progress):
            hi = min(users, lo + chunk_users)
            counts = per_user[lo:hi]
            n = int(counts.sum())
            if n == 0:
                continue
            u = np.repeat(np.arange(lo, hi), counts)
            it = global_item(n)
            on_topic = rng.random(n) < topic_affinity
            t = user_topic[u[on_topic]]
            it[on_topic] = np.minimum(topic_item(int(on_topic.sum())) * topics + t, items - 1)
            gaps = rng.exponential(1.0, n) * np.repeat(span / np.maximum(counts, 1) / 4, counts)
            csum = np.cumsum(gaps)
            first = np.cumsum(counts) - counts
            base = np.repeat(csum[first] - gaps[first], counts)
            start = np.repeat(rng.random(hi - lo) * span * 0.75, counts)
            ts = (T0 + start + csum - base).astype(np.int64)
            click = np.ones(n, np.int8)
            like = (rng.random(n) < 0.2).astype(np.int8)
            surface = np.array(["home", "search", "related"])[rng.integers(0, 3, n)]
            table = pa.table(
                {
                    "user_id": pa.array(np.char.add("u", u.astype(str))),
                    "item_id": pa.array(np.char.add("i", it.astype(str))),
                    "timestamp": ts,
                    "click": click,
                    "like": like,
                    "surface": surface,
                }
            )
            if out.suffix in (".parquet", ".pq"):
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            else:
                writer = writer or pacsv.CSVWriter(tmp, table.schema)
                writer.write_table(table)
            written += n
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(out)
    return {"events": written, "users": int((per_user > 0).sum()), "items_max": items, "path": str(out)}
