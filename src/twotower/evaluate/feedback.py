"""Does the model keep what a user dislikes out of their list? Recall of liked vs disliked test items.

Under a split whose test window holds several events per user (the ``time`` split), for each user with test
events: the request at their first test event (the ``strict`` protocol by default: history = every event
before it), the top-``k`` of the catalogue without the items seen before it, then

* ``liked_recall@k``: the share of the user's liked test items in the top-``k`` (mean over users with one);
* ``dislike@k``: the share of the user's disliked test items in the top-``k`` (mean over users with one).

A model that learns from negative feedback should lower ``dislike@k`` without lowering ``liked_recall@k``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import SequenceData
from ..features import Featurizer
from ..layout import SPLITS
from ..model import TwoTower
from .evaluator import encode_corpus, encode_requests, seen_mask


def share_in_top(top: np.ndarray, user_items: list[np.ndarray]) -> np.ndarray:
    """Per row: the share of ``user_items[b]`` (int [n_b], may be empty -> NaN) found in ``top[b]`` [K]."""
    out = np.full(len(top), np.nan)
    for b, items in enumerate(user_items):
        if len(items):
            out[b] = np.isin(items, top[b]).mean()
    return out


@torch.no_grad()
def feedback_recall(
    model: TwoTower,
    feat: Featurizer,
    data: SequenceData,
    scheme: str = "time",
    k: int = 100,
    liked: str = "liked",
    disliked: str = "disliked",
    protocol: str = "strict",
    batch: int = 256,
    part: str = "test",
) -> dict[str, float]:
    """``liked_recall@k`` and ``dislike@k`` (see the module docstring) with the users each was averaged over;
    ``part``: the window scored, ``test`` or ``valid`` (where settings are chosen)."""
    model.eval()
    split = data.split(scheme)
    users, first_rows = data.eval_targets(scheme, part)
    test = split == SPLITS[part]
    is_liked, is_disliked = data.action_mask([liked]), data.action_mask([disliked])
    user_of = data.user_of_event()
    rows = np.flatnonzero(test)
    by_user = {u: rows[user_of[rows] == u] for u in np.unique(user_of[rows])} if len(rows) else {}
    items = encode_corpus(model, feat)
    liked_share, disliked_share = [], []
    for lo in range(0, len(users), batch):
        u, r = users[lo : lo + batch], first_rows[lo : lo + batch]
        q = encode_requests(model, feat, u, r, protocol=protocol).float()
        scores = (q @ items.T).masked_fill(seen_mask(data, u, r), float("-inf"))
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices.numpy()
        ev = [by_user.get(int(x), np.zeros(0, np.int64)) for x in u]
        liked_share.append(share_in_top(top, [data.event_item[e[is_liked[e]]] for e in ev]))
        disliked_share.append(share_in_top(top, [data.event_item[e[is_disliked[e]]] for e in ev]))
    lk = np.concatenate(liked_share) if liked_share else np.zeros(0)
    dk = np.concatenate(disliked_share) if disliked_share else np.zeros(0)
    return {
        f"liked_recall@{k}": float(np.nanmean(lk)) if np.isfinite(lk).any() else float("nan"),
        f"dislike@{k}": float(np.nanmean(dk)) if np.isfinite(dk).any() else float("nan"),
        "users_liked": float(np.isfinite(lk).sum()),
        "users_disliked": float(np.isfinite(dk).sum()),
    }
