"""The cold-start protocol's report: test targets that are cold items scored apart from the warm ones.

A dataset prepared with ``--cold-items F`` (:func:`twotower.data.prepare.hold_out_cold_items`) has no event of
its cold items but users' last ones, so every model trained on it has never seen them. Three rankings, each
with the user's seen items removed (the ``filtered`` variant of :mod:`.evaluator`):

* ``warm/``: targets that are warm items, ranked among all items;
* ``cold/``: targets that are cold items, ranked among all items (what a user of the service gets);
* ``cold_only/``: cold targets ranked among the cold items only (how well the content places a new item
  against the other new items, free of the warm items' head start).

Recall@K equals HR@K here (one target per user). Any scorer goes through the same code: the model
(:func:`~twotower.evaluate.evaluator.model_scorer`), the random baseline (:func:`random_scores`) and popularity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data.dataset import SequenceData
from ..errors import DataError
from .evaluator import model_scorer, seen_mask
from .metrics import KS, summarize, target_ranks

__all__ = ["Scorer", "cold_items", "cold_start_report", "model_scorer", "random_scores"]

Scorer = Callable[[np.ndarray, np.ndarray], torch.Tensor]  # (users [B], target rows [B]) -> scores [B, N]


def cold_items(data: SequenceData) -> np.ndarray:
    """bool [N]: the items the cold-start protocol held out; a DataError when the dataset has none."""
    if data.item_cold is None:
        raise DataError(
            f"{data.root} was not prepared with the cold-start protocol; re-run `twotower prepare --cold-items 0.1`"
        )
    return np.asarray(data.item_cold).astype(bool)


@torch.no_grad()
def cold_start_report(
    score: Scorer, data: SequenceData, scheme: str = "loo", which: str = "test", ks=KS, batch: int = 512
) -> dict[str, float]:
    """``{"warm/hr@10": ..., "cold/hr@10": ..., "cold_only/hr@10": ..., "warm/num_users": ...}``."""
    cold = cold_items(data)
    users, rows = data.eval_targets(scheme, which)
    target = data.event_item[rows].astype(np.int64)
    is_cold = cold[target]
    not_cold = torch.from_numpy(~cold)[None, :]
    ranks: dict[str, list[np.ndarray]] = {"warm": [], "cold": [], "cold_only": []}
    for lo in range(0, len(users), batch):
        u, r = users[lo : lo + batch], rows[lo : lo + batch]
        c = is_cold[lo : lo + batch]
        s = score(u, r).float().cpu()
        t = torch.from_numpy(target[lo : lo + batch])
        seen = seen_mask(data, u, r)
        filt = target_ranks(s, t, seen).numpy()
        ranks["warm"].append(filt[~c])
        ranks["cold"].append(filt[c])
        if c.any():
            cc = torch.from_numpy(c)
            ranks["cold_only"].append(target_ranks(s[cc], t[cc], seen[cc] | not_cold).numpy())
    out: dict[str, float] = {}
    for part, chunks in ranks.items():
        r = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        metrics = summarize(r, ks) if len(r) else {k: float("nan") for k in summarize(np.zeros(1), ks)}
        out.update({f"{part}/{k}": v for k, v in metrics.items()})
        out[f"{part}/num_users"] = float(len(r))
    out["cold_items"] = float(cold.sum())
    return out


def random_scores(num_items: int, seed: int = 0) -> Scorer:
    """The random baseline as a scorer: i.i.d. uniform scores per request (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda u, r: torch.rand(len(u), num_items, generator=gen)
