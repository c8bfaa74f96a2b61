"""Synthetic interaction logs for scale tests: Zipf item popularity, power-law user activity, topics.

Each user has a favourite topic (item ``i`` belongs to topic ``i mod T``); a ``topic_affinity`` share of
their events is drawn from that topic, the rest from the global Zipf law, so there is structure to learn.
With ``successor_prob`` > 0 the order matters too: every item has ``SUCCESSORS`` fixed successors in its topic
and each event after a user's first is, with that probability, a successor of the user's previous event
(a sequence a next-item model can learn and popularity cannot).
With ``family_size`` > 1 items come in families of near-duplicates (items ``f·F .. f·F + F - 1``: one family,
one topic) and every user has a *style*, the member they engage with; with ``dislike_prob`` an event instead
shows the user another member of the family, which they dislike (column ``dislike`` = 1). Telling the right
member from its siblings needs the negatives (issue 18's log): as positives the siblings look like more of
what the user wants. A user's last two events (the validation and test targets) are never dislikes.
Generated and written chunk by chunk (Parquet, TSV or CSV by the file suffix): memory stays bounded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from ..errors import DataError

T0 = 1_600_000_000  # 2020-09-13, the synthetic log's first second
SUCCESSORS = 4  # successors per item when successor_prob > 0


def _zipf_sampler(n: int, a: float, rng: np.random.Generator):
    cdf = np.cumsum(1.0 / np.arange(1, n + 1) ** a)
    cdf /= cdf[-1]
    return lambda size: np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def _successors(items: int, topics: int, per_topic: int, zipf_a: float, rng: np.random.Generator) -> np.ndarray:
    """int64 [items, SUCCESSORS]: each item's successors, drawn from its own topic by the topic's Zipf law."""
    draw = _zipf_sampler(per_topic, zipf_a, rng)
    topic = np.arange(items) % topics
    return np.minimum(draw(items * SUCCESSORS).reshape(items, SUCCESSORS) * topics + topic[:, None], items - 1)


def _follow_successors(
    it: np.ndarray, counts: np.ndarray, successors: np.ndarray, prob: float, rng: np.random.Generator
) -> None:
    """In place: event ``j > 0`` of each user (``it`` user-major, ``counts`` events per user) becomes, with
    probability ``prob``, a random successor of event ``j - 1``'s item. One vectorised step per position."""
    start = np.cumsum(counts) - counts
    for j in range(1, int(counts.max(initial=0))):
        rows = start[counts > j] + j  # event j of every user that has one
        take = rows[rng.random(len(rows)) < prob]
        it[take] = successors[it[take - 1], rng.integers(0, SUCCESSORS, len(take))]


def _families(
    it: np.ndarray,
    u: np.ndarray,
    counts: np.ndarray,
    style: np.ndarray,
    size: int,
    dislike_prob: float,
    items: int,
    rng: np.random.Generator,
) -> tuple[pa.Array, np.ndarray]:
    """Each event's item becomes its family's member of the user's style; a ``dislike_prob`` share (never a
    user's last two events) becomes another member, disliked. Returns (item id strings, dislike int8 [n])."""
    n = len(it)
    family = it // size
    member = style[u]
    last_two = np.zeros(n, bool)
    ends = np.cumsum(counts)
    for back in (1, 2):
        idx = ends[counts >= back] - back
        last_two[idx] = True
    dislike = (rng.random(n) < dislike_prob) & ~last_two
    other = (member + rng.integers(1, size, n)) % size  # a sibling, never the user's own member
    member = np.where(dislike, other, member)
    new = np.minimum(family * size + member, items - 1)
    dislike &= new != np.minimum(family * size + style[u], items - 1)  # the clipped last family may collide
    return pa.array(np.char.add("i", new.astype(str))), dislike.astype(np.int8)


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
    successor_prob: float = 0.0,
    family_size: int = 1,
    dislike_prob: float = 0.0,
) -> dict:
    """Write a log with columns ``user_id, item_id, timestamp, click, like, surface`` (and ``dislike`` with
    ``family_size`` > 1); return counts.

    ``out`` ending in ``.parquet`` / ``.pq`` is Parquet, ``.tsv`` / ``.tab`` tab-separated, anything else CSV.
    The file appears whole or not at all (written to a temporary sibling, then renamed).
    """
    sizes = {"users": users, "items": items, "events": events, "topics": topics, "chunk_users": chunk_users}
    if any(v < 1 for v in sizes.values()):
        given = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise DataError(f"synth needs --users, --items and --events (and topics, chunk_users) >= 1; got {given}")
    out = Path(out)
    if out.is_dir():
        raise DataError(f"--out {out} is a directory; give a file name ending in .parquet, .csv or .tsv")
    if not 0.0 <= successor_prob <= 1.0:
        raise DataError(f"successor_prob must be within [0, 1], got {successor_prob}")
    if not 1 <= family_size <= items or not 0.0 <= dislike_prob < 1.0:
        raise DataError(
            f"family_size must be within [1, items] and dislike_prob within [0, 1); got {family_size}, {dislike_prob}"
        )
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    activity = rng.pareto(1.5, users) + 1.0  # power-law activity
    per_user = rng.multinomial(events, activity / activity.sum())
    user_topic = rng.integers(0, topics, users)
    global_item = _zipf_sampler(items, zipf_a, rng)
    per_topic = max(1, items // topics)
    topic_item = _zipf_sampler(per_topic, zipf_a, rng)
    # a separate stream: with successor_prob = 0 the log is byte-identical to what it always was
    seq_rng = np.random.default_rng([seed, 1])
    successors = _successors(items, topics, per_topic, zipf_a, seq_rng) if successor_prob > 0 else None
    fam_rng = np.random.default_rng([seed, 2])  # families: their own stream too
    style = fam_rng.integers(0, family_size, users) if family_size > 1 else None
    span = days * 86400
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    parquet = out.suffix in (".parquet", ".pq")
    tab = out.suffix.lower() in (".tsv", ".tab")  # read back with a tab delimiter, unquoted
    csv_options = (
        pacsv.WriteOptions(delimiter="\t", quoting_style="none", quoting_header="none") if tab else pacsv.WriteOptions()
    )
    writer = None
    written = 0
    done = False
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
            if successors is not None:
                _follow_successors(it, counts, successors, successor_prob, seq_rng)
            gaps = rng.exponential(1.0, n) * np.repeat(span / np.maximum(counts, 1) / 4, counts)
            csum = np.cumsum(gaps)
            first = np.minimum(np.cumsum(counts) - counts, n - 1)  # a user with no events may start at n
            base = np.repeat(csum[first] - gaps[first], counts)
            start = np.repeat(rng.random(hi - lo) * span * 0.75, counts)
            ts = (T0 + start + csum - base).astype(np.int64)
            click = np.ones(n, np.int8)
            like = (rng.random(n) < 0.2).astype(np.int8)
            surface = np.array(["home", "search", "related"])[rng.integers(0, 3, n)]
            columns = {
                "user_id": pa.array(np.char.add("u", u.astype(str))),
                "item_id": pa.array(np.char.add("i", it.astype(str))),
                "timestamp": ts,
                "click": click,
                "like": like,
                "surface": surface,
            }
            if style is not None:
                columns["item_id"], columns["dislike"] = _families(
                    it, u, counts, style, family_size, dislike_prob, items, fam_rng
                )
                columns["like"] = np.where(columns["dislike"] == 1, np.int8(0), like)
            table = pa.table(columns)
            if parquet:
                writer = writer or pq.ParquetWriter(tmp, table.schema)
            else:
                writer = writer or pacsv.CSVWriter(tmp, table.schema, write_options=csv_options)
            writer.write_table(table)
            written += n
        done = True
    finally:
        if writer is not None:
            writer.close()
        if not done:
            tmp.unlink(missing_ok=True)
    tmp.replace(out)
    return {"events": written, "users": int((per_user > 0).sum()), "items_max": items, "path": str(out)}
