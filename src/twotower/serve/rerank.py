"""The funnel's second stage inside a request: the ranker re-scores the retrieved shortlist.

A request with ``"rerank": {"candidates": K'}`` retrieves ``max(k, K')`` items with the index (its exclusions
and filters as usual), then the ranker (:class:`twotower.model.ranker.Ranker`) scores each of them against the
user's history, each candidate in isolation, with the retriever's score as its prior; the top ``k`` by the
ranker's score are returned with both scores. It runs in the same micro-batch as the retrieval.

**The history the ranker reads** (``[B, S]``, ``S`` = the ranker's ``max_len``): the user's events in the
served dataset (``Bundle.data``), then the events sent with the request that are later than the dataset's
last event of that user (earlier ones are taken to be in the dataset already), oldest first, the last ``S``
kept; the gap of an event is its time minus the previous event's (0 for the user's first). For a user who
sends nothing this is exactly what :meth:`twotower.features.Featurizer.histories_before` builds at the end of
their history, which is what ``rerank_metrics`` and ``benchmarks/rerank.py`` score (a test holds them equal).

**Artifacts.** ``ROOT/rankers/<ranker version>/checkpoint`` (+ ``publish.json``) and ``ROOT/rankers/CURRENT``
naming the served one (``twotower publish-ranker``). It is loaded with every bundle, so ``/admin/reload``
hot-swaps it with the rest; a ranker trained against another retriever than the served model is refused
(the load fails, a reload answers 409 and the old bundle keeps serving) unless it was published with
``--allow-mismatch``. Without a published ranker, a rerank request is answered from retrieval alone with a
warning, and counted (``twotower_rerank_total{result="no_ranker"}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ArtifactError
from ..features import gap_buckets
from ..features.inputs import ItemInputs, UserInputs
from ..model.ranker import Ranker, load_ranker
from .items import ItemTable

RANKERS = "rankers"


@dataclass
class ServedRanker:
    """A loaded ranker and where it came from."""

    module: Ranker
    version: str
    retriever_version: str
    allow_mismatch: bool

    @property
    def history(self) -> int:
        """S: at most this many of the user's last events reach the ranker."""
        return self.module.cfg.max_len

    def describe(self) -> dict:
        """What ``/readyz`` reports."""
        return {"version": self.version, "retriever_version": self.retriever_version,
                "allow_mismatch": self.allow_mismatch, "history": self.history}  # fmt: skip


TABLE_FIELDS = ("num_hashes", "item_buckets", "author_buckets", "feature_buckets", "num_actions", "time_buckets")


def load_served_ranker(root: Path, model_version: str, model_cfg) -> ServedRanker | None:
    """The ranker ``ROOT/rankers/CURRENT`` names (None when there is none), checked against ``model_version``
    (the retriever it was trained for) and the served model's item tables (``model_cfg``), which it reads."""
    current = root / RANKERS / "CURRENT"
    if not current.is_file():
        return None
    version = current.read_text().strip()
    where = root / RANKERS / version
    if not (where / "checkpoint").is_dir():
        raise ArtifactError(
            f"{current} names ranker {version!r}, but {where}/checkpoint does not exist; re-run "
            "`twotower publish-ranker`, or delete the CURRENT file to serve without rerank"
        )
    meta_file = where / "publish.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    allow = bool(meta.get("allow_mismatch", False))
    try:
        module, config, loaded = load_ranker(where, expect_retriever=model_version, allow_mismatch=allow)
    except ArtifactError as exc:
        raise ArtifactError(
            f"{exc}. The served model is {model_version}: publish a ranker trained for it (`twotower train-ranker "
            f"--run RUN ...`, then `twotower publish-ranker`), publish this one with --allow-mismatch, or delete "
            f"{current} to serve without rerank"
        ) from exc
    differ = [f for f in TABLE_FIELDS if getattr(module.cfg, f) != getattr(model_cfg, f)]
    if differ:  # even with --allow-mismatch: its embedding tables would be indexed with another model's buckets
        raise ArtifactError(
            f"ranker {version} reads item tables of another shape than model {model_version} ({', '.join(differ)}); "
            f"train a ranker for this model, or delete {current} to serve without rerank"
        )
    if loaded != version:
        raise ArtifactError(f"{where} holds ranker {loaded}, {current} names {version}; re-run publish-ranker")
    module.requires_grad_(False)
    return ServedRanker(module, version, str(config.get("retriever_version")), allow)


def ranker_histories(
    table: ItemTable,
    data,
    lo: np.ndarray,
    hi: np.ndarray,
    sent: list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]],
    S: int,
    num_actions: int,
    time_buckets: int,
) -> UserInputs:
    """The ranker's history of ``B`` users (see the module docstring): dataset rows ``[lo[b], hi[b])`` and the
    sent events ``(items, action bits, ts, surface)`` of each. UserInputs of [B, S', ·], S' <= S."""
    B = len(lo)
    H, F = table.hash.shape[1], table.feat.shape[1]
    A = max(num_actions, 1)
    per = []
    for b in range(B):
        items, bits, ts, surf = sent[b]
        rows = np.arange(max(int(lo[b]), int(hi[b]) - S), int(hi[b]))
        last = int(data.event_ts[hi[b] - 1]) if hi[b] > lo[b] else None
        later = np.flatnonzero(ts > last) if last is not None else np.arange(len(ts))
        later = later[np.argsort(ts[later], kind="stable")]
        ev_ts = np.concatenate([data.event_ts[rows].astype(np.int64), ts[later]])
        prev = np.empty_like(ev_ts)
        if len(ev_ts):  # the event before the first one: the dataset's previous row of this user, if any
            first = int(rows[0]) if len(rows) else int(hi[b])
            prev[0] = data.event_ts[first - 1] if first > lo[b] else ev_ts[0]
            prev[1:] = ev_ts[:-1]
        cut = max(0, len(ev_ts) - S)  # the last S of dataset + sent, gaps taken before the cut
        rows = rows[min(cut, len(rows)) :]
        later = later[max(0, cut - (len(ev_ts) - len(later))) :]
        d_items = data.event_item[rows].astype(np.int64)
        s_ids = [items[i] for i in later]
        s_item, s_author, s_feat = table.hashed(s_ids, table.dense(s_ids))
        per.append(
            (
                np.concatenate([table.hash[d_items], s_item]),
                np.concatenate([table.author[d_items], s_author]),
                np.concatenate([table.feat[d_items], s_feat]),
                np.concatenate([data.event_actions[rows].astype(np.int64), bits[later]]),
                np.concatenate([data.event_surface[rows].astype(np.int64), surf[later]]),
                (ev_ts - prev)[cut:],
            )
        )
    L = max(1, max((len(p[0]) for p in per), default=1))
    item, author = np.zeros((B, L, H), np.int64), np.zeros((B, L, H), np.int64)
    feat = np.zeros((B, L, F), np.int64)
    actions = np.zeros((B, L, A), np.float32)
    surface, gap, length = np.zeros((B, L), np.int64), np.zeros((B, L), np.int64), np.zeros(B, np.int64)
    for b, (it, au, fe, bi, su, ga) in enumerate(per):
        n = len(it)
        length[b] = n
        item[b, :n], author[b, :n], feat[b, :n] = it, au, fe
        if num_actions:
            actions[b, :n] = (bi[:, None] >> np.arange(A)) & 1
        surface[b, :n] = su
        gap[b, :n] = gap_buckets(ga, time_buckets)
    return UserInputs.events_only(item, author, feat, actions, surface, gap, length)  # the ranker reads no user


def candidate_inputs(table: ItemTable, ids: np.ndarray) -> ItemInputs:
    """Candidate features of dense ids int64 [B, K] (-1 = none: padding): ItemInputs of [B, K, ·]."""
    safe = np.where(ids >= 0, ids, 0)
    pad = (ids < 0)[..., None]
    return ItemInputs(
        torch.from_numpy(np.where(pad, 0, table.hash[safe])),
        torch.from_numpy(np.where(pad, 0, table.author[safe])),
        torch.from_numpy(np.where(pad, 0, table.feat[safe])),
    )


@torch.no_grad()
def rerank_scores(ranker: Ranker, hist: UserInputs, cands: ItemInputs, prior: np.ndarray) -> np.ndarray:
    """Ranker logits float32 [B, K] of the candidates; ``prior``: the retriever's scores float32 [B, K]."""
    p = torch.from_numpy(prior.astype(np.float32)) if ranker.prior_scale is not None else None
    return ranker(hist, cands, p).float().numpy()
