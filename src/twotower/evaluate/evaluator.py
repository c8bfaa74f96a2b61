"""Full-corpus evaluation: every item is ranked for every evaluated user (no sampled negatives).

Two variants, labelled in every report: ``all`` ranks the whole catalogue; ``filtered`` removes the items
already in the user's history before ranking (the protocol of the published ML-1M figures). The popularity
baseline goes through the same ranking code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import SequenceData
from ..features import Featurizer
from ..model import TwoTower
from ..model.layers import prefix_vectors
from .metrics import KS, summarize, target_ranks

PRIMARY = "filtered/ndcg@10"


def seen_mask(data: SequenceData, users: np.ndarray, target_rows: np.ndarray) -> torch.Tensor:
    """bool [U, N]: items in each user's history strictly before the target row."""
    start = data.user_offsets[users]
    n = target_rows - start
    local = np.repeat(np.arange(len(users)), n)
    rows = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(start, n)
    mask = torch.zeros(len(users), data.num_items, dtype=torch.bool)
    mask[torch.from_numpy(local), torch.from_numpy(data.event_item[rows].astype(np.int64))] = True
    return mask


def _ranks(
    score_fn, data: SequenceData, users: np.ndarray, rows: np.ndarray, batch: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    all_r, filt_r = [], []
    for lo in tqdm(range(0, len(users), batch), desc="evaluate", disable=not progress, leave=False):
        u, r = users[lo : lo + batch], rows[lo : lo + batch]
        scores = score_fn(u, r).float().cpu()
        target = torch.from_numpy(data.event_item[r].astype(np.int64))
        all_r.append(target_ranks(scores, target).numpy())
        filt_r.append(target_ranks(scores, target, seen_mask(data, u, r)).numpy())
    if not all_r:  # an empty split (e.g. no validation events): no ranks, reported as NaN metrics
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(all_r), np.concatenate(filt_r)


def _report(all_r: np.ndarray, filt_r: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Metrics of both variants plus ``num_users``; with no users every metric is NaN (not a crash)."""
    if len(all_r) == 0:
        nan = {k: float("nan") for k in summarize(np.zeros(1), ks)}
        return {
            **{f"all/{k}": v for k, v in nan.items()},
            **{f"filtered/{k}": v for k, v in nan.items()},
            "num_users": 0.0,
        }
    out = {f"all/{k}": v for k, v in summarize(all_r, ks).items()}
    out.update({f"filtered/{k}": v for k, v in summarize(filt_r, ks).items()})
    out["num_users"] = float(len(all_r))
    return out


def _select(data: SequenceData, scheme: str, which: str, max_users: int | None, seed: int):
    users, rows = data.eval_targets(scheme, which)
    if max_users is not None and len(users) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users, rows = users[keep], rows[keep]
    return users, rows


@torch.no_grad()
def evaluate_model(
    model: TwoTower,
    feat: Featurizer,
    scheme: str = "loo",
    which: str = "test",
    ks: tuple[int, ...] = KS,
    max_users: int | None = None,
    batch: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = False,
    seed: int = 0,
    protocol: str = "strict",
    dim: int | None = None,
) -> dict[str, float]:
    """Rank every item for each target of split ``which``; returns ``{"all/hr@10": …, "filtered/…": …}``.

    ``protocol`` (``strict`` | ``request_time``, see ``twotower.layout.PROTOCOLS``): what a hybrid tower's
    request features may take from the target event. Unsplit towers read only the history: both are the same.
    ``dim``: score with the first ``dim`` coordinates of both towers' vectors (a Matryoshka prefix).
    """
    _, _, all_r, filt_r = model_ranks(
        model, feat, scheme, which, max_users, batch, device, progress, seed, protocol, dim
    )
    return _report(all_r, filt_r, ks)


@torch.no_grad()
def model_ranks(
    model: TwoTower,
    feat: Featurizer,
    scheme: str = "loo",
    which: str = "test",
    max_users: int | None = None,
    batch: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = False,
    seed: int = 0,
    protocol: str = "strict",
    dim: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(users [U], target rows [U], 0-based ranks over all items [U], ranks with seen items removed [U]) of
    every evaluated target: what :func:`evaluate_model` summarises (and the report splits by segment)."""
    data = feat.data
    was_training = model.training
    score = model_scorer(model, feat, device, protocol, dim)
    users, rows = _select(data, scheme, which, max_users, seed)
    all_r, filt_r = _ranks(score, data, users, rows, batch, progress)
    model.train(was_training)
    return users, rows, all_r, filt_r


@torch.no_grad()
def model_scorer(
    model: TwoTower,
    feat: Featurizer,
    device: str | torch.device = "cpu",
    protocol: str = "strict",
    dim: int | None = None,
) -> Callable[[np.ndarray, np.ndarray], torch.Tensor]:
    """The model (switched to eval mode) as a scorer: (users [B], target rows [B]) -> scores [B, N] of the
    user vectors (``protocol``) against the whole corpus, encoded once; ``dim``: a Matryoshka prefix."""
    model.eval()
    cut = (lambda v: v) if dim is None else (lambda v: prefix_vectors(v, dim, model.cfg.similarity))
    items = cut(encode_corpus(model, feat, device))
    return lambda u, r: cut(encode_requests(model, feat, u, r, device=device, protocol=protocol).float()) @ items.T


@torch.no_grad()
def encode_requests(
    model: TwoTower,
    feat: Featurizer,
    users: np.ndarray,
    target_rows: np.ndarray,
    snapshot_rows: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    protocol: str = "strict",
) -> torch.Tensor:
    """User vectors [B, D] for requests at ``target_rows`` (hybrid towers: state at ``snapshot_rows``), with
    the request features of ``protocol``."""
    hist, ctx = feat.request(users, target_rows, snapshot_rows, protocol=protocol)
    return model.encode_user(hist.to(device), None if ctx is None else ctx.to(device))


@torch.no_grad()
def encode_corpus(
    model: TwoTower, feat: Featurizer, device: str | torch.device = "cpu", batch: int = 65536
) -> torch.Tensor:
    """Candidate tower over every item of the featurizer's corpus: [N, D] float32 on ``device``."""
    n = feat.data.num_items
    parts = [
        model.encode_items(feat.items(np.arange(lo, min(n, lo + batch))).to(device)).float()
        for lo in range(0, n, batch)
    ]
    return torch.cat(parts)


def evaluate_popularity(
    data: SequenceData,
    scheme: str = "loo",
    which: str = "test",
    ks: tuple[int, ...] = KS,
    max_users: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Most-popular baseline (training counts), ranked by the same code as the model."""
    _, _, all_r, filt_r = popularity_ranks(data, scheme, which, max_users, seed)
    return _report(all_r, filt_r, ks)


@torch.no_grad()
def popularity_ranks(
    data: SequenceData, scheme: str = "loo", which: str = "test", max_users: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`model_ranks` of the most-popular baseline."""
    counts = torch.from_numpy(data.item_train_counts(scheme).astype(np.float32))
    users, rows = _select(data, scheme, which, max_users, seed)
    all_r, filt_r = _ranks(lambda u, r: counts.expand(len(u), -1), data, users, rows, 1024, False)
    return users, rows, all_r, filt_r
