"""Defaults scaled to the dataset: what ``twotower train`` uses when no ``--config`` is given.

The one hand-tuned configuration (``configs/ml1m.toml``) fits MovieLens-1M: 6k users, 3.7k items, a median
history of ~100 events. A user's log differs in every one of those, so the defaults are rules over the
dataset's shape rather than constants, each with the reason it exists (``twotower train`` prints the reasons;
the chosen config is saved as the run's ``config.json`` like any other):

* **history length** ``max_len``: the 90th percentile of the training histories, rounded up to a multiple of
  8, within [16, 200] — longer windows only pad, shorter ones cut what most users have;
* **hash buckets**: items, users and features each get ~4x their count (rounded up to a power of two), so
  collisions stay rare without tables that dwarf the data;
* **regularisation**: dropout 0.2 where items are well observed (>= 40 training events per item), up to 0.5
  where they are sparse (Amazon-like logs, < 10 per item), as SASRec's authors set it per dataset;
* **negatives**: in-batch + uniform (the uniform sample covers the catalogue's tail that in-batch
  popularity misses); logQ correction only once the catalogue is large against a batch (> 4x the targets
  of a batch), where in-batch negatives stop covering it;
* **batch and schedule**: ~2k targets per batch (fewer on small logs, so an epoch still has >= 80 steps),
  warm-up 5 % of the first epoch's steps (at most 100), a cosine that ends with the time budget
  (``lr_follows_budget``), early stopping on validation NDCG@10 (``patience`` 5, counted once 80 % of the
  budget is spent: the low-rate tail of the cosine is where the last gains come) and validation on at most
  2,000 users so it costs a few seconds;
* **the tower**: the unsplit one, cosine scores at temperature 0.1, no user-id token (a user's id is one more
  table row to fit from a few dozen events; the history says more), a linear item tower (one ``Linear(D)``
  over the item's embeddings instead of the seed's two-layer MLP). The service serves it from the user
  vectors the refresh job caches (:mod:`twotower.serve.unsplit`); events sent after a vector's snapshot are
  excluded from the answer but not folded in. The hybrid split folds them in: ``twotower train --hybrid``
  (``auto_config(hybrid=True)``) trains it on the same rules (dev log: 0.0910, see :func:`auto_config`).

How the constant choices were made: ``benchmarks/defaults_dev.py`` scores variants on the **validation** split
of a dev log (``ml-1m-last30``: each ML-1M user's last 30 events), never a log the transfer benchmark checks
and never a test split. At 120 s on 2 cores (NDCG@10, strict, one seed): the hybrid split 0.0771 against the
unsplit 0.1008 (the hybrid trained 18k examples/s against the unsplit tower's 27k, 13 epochs against 19);
temperature 0.05 / 0.1 / 0.2: 0.1008 / 0.1083 / 0.0915; without the user token 0.1115; 2k-target batches
0.1159 against 4k; a linear item tower 0.1215 (seeds 1-2: 0.1274 against 0.1177, so it won on all three seeds;
on ML-1M validation at 450 s, one seed: HR@10 0.3212 against 0.2962 for the MLP). Not taken: dot-product
scores (0.0907), the full softmax (0.0761), tied input tokens (0.1083), dropout 0.3 (0.1058), learning rate
1e-3 (0.0925). One seed per variant: differences under ~0.005 are within what a seed moves, so only the
hybrid, the temperature, the batch size and the item tower are clear wins; the user token's removal is a tie
kept because it is the simpler model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.dataset import SequenceData
from ..layout import SPLIT_TRAIN
from ..model.config import ModelConfig
from .config import RunConfig, TrainConfig

DEFAULT_TIME_BUDGET_S = 600.0  # training seconds when neither a config nor --time-budget says otherwise


@dataclass
class DataShape:
    """The statistics the rules read (training split only: validation and test stay unseen)."""

    users: int
    items: int
    train_events: int
    history_p50: float
    history_p90: float
    features: int  # distinct hashed feature tokens of items and users (an upper bound for the buckets)

    @property
    def events_per_item(self) -> float:
        return self.train_events / max(1, self.items)


def data_shape(data: SequenceData, split: str = "loo") -> DataShape:
    """Measure ``data``'s training split."""
    train = data.split(split) == SPLIT_TRAIN
    per_user = np.bincount(data.user_of_event()[train], minlength=data.num_users)
    per_user = per_user[per_user > 0]
    feats = np.unique(np.concatenate([data.item_feat_hash.ravel(), data.user_feat_hash.ravel()]))
    return DataShape(
        users=int(data.num_users),
        items=int(data.num_items),
        train_events=int(train.sum()),
        history_p50=float(np.percentile(per_user, 50)) if len(per_user) else 0.0,
        history_p90=float(np.percentile(per_user, 90)) if len(per_user) else 0.0,
        features=int((feats != 0).sum()),
    )


def _buckets(count: int, lo: int, hi: int) -> int:
    """~4x ``count`` rounded up to a power of two, within [lo, hi]."""
    return int(min(hi, max(lo, 1 << math.ceil(math.log2(max(1, 4 * count))))))


def auto_config(
    data: SequenceData, time_budget_s: float | None = None, split: str = "loo", hybrid: bool = False
) -> tuple[RunConfig, list[str]]:
    """A :class:`RunConfig` for ``data`` by the rules of the module docstring, and one line per choice.

    ``hybrid`` (``twotower train --hybrid``): the hybrid split (served vectors take fresh events), same rules,
    with the encoder's own loss at every position and the online head on a quarter of the targets (a quarter of
    those with a fresh state and no context). On the dev log: valid NDCG@10 0.0910, against 0.0771 for the
    stop-14 hybrid recipe (user token, temperature 0.05, 4k-target batches) and 0.1159 for the unsplit defaults.
    """
    s = data_shape(data, split)
    why: list[str] = []
    max_len = int(min(200, max(16, 8 * math.ceil(s.history_p90 / 8))))
    why.append(f"max_len {max_len}: 90 % of training histories have <= {s.history_p90:.0f} events")
    if s.events_per_item >= 40:
        dropout = 0.2
    elif s.events_per_item >= 10:
        dropout = 0.3
    else:
        dropout = 0.5
    why.append(f"dropout {dropout}: {s.events_per_item:.1f} training events per item")
    model = ModelConfig(
        dim=64,
        num_hashes=2,
        item_buckets=_buckets(s.items, 1 << 10, 1 << 22),
        author_buckets=_buckets(s.items, 1 << 8, 1 << 20),
        user_buckets=_buckets(s.users, 1 << 10, 1 << 22),
        feature_buckets=_buckets(s.features, 1 << 8, 1 << 20),
        max_len=max_len,
        num_layers=2,
        num_heads=2,
        dropout=dropout,
        positions="learned+time",
        user_token=False,
        item_tower="linear",
        online_head=hybrid,
    )
    why.append(
        f"buckets: items {model.item_buckets:,}, users {model.user_buckets:,}, features {model.feature_buckets:,} "
        f"(~4x {s.items:,} items, {s.users:,} users, {s.features:,} feature tokens)"
    )
    # Targets per batch: ~2k, fewer on a small log so that an epoch keeps >= 80 optimizer steps.
    batch_tokens = int(min(2048, max(256, 2 ** math.floor(math.log2(max(256, s.train_events // 80))))))
    steps = max(1, s.train_events // batch_tokens)
    why.append(f"batch_tokens {batch_tokens}: ~{steps} steps per epoch over {s.train_events:,} training events")
    logq = "streaming" if s.items > 4 * batch_tokens else "none"
    why.append(
        f"logq {logq}: {s.items:,} items against {batch_tokens:,} in-batch candidates"
        + (" (in-batch negatives no longer cover the catalogue)" if logq != "none" else " (they cover it)")
    )
    budget = DEFAULT_TIME_BUDGET_S if time_budget_s is None else float(time_budget_s)
    train = TrainConfig(
        epochs=200,
        batch_tokens=batch_tokens,
        lr=3e-3,
        warmup_steps=int(min(100, max(10, steps // 20))),
        temperature=0.1,
        negatives=["in_batch", "uniform"],
        num_uniform=int(min(1024, s.items)),
        logq=logq,
        split=split,
        patience=5,
        patience_from=0.8,
        eval_users=min(2000, s.users),
        time_budget_s=budget,
        lr_follows_budget=True,
    )
    if hybrid:  # the encoder learns from its own loss at every position; the head trains on a quarter of targets
        train.encoder_loss_weight, train.head_fraction, train.fresh_prob = 1.0, 0.25, 0.25
    why.append(
        "tower: the hybrid split (--hybrid: cached state + online head), cosine at temperature 0.1, no "
        "user-id token, a linear item tower, the encoder's own loss, the head on a quarter of the targets"
        if hybrid
        else "tower: unsplit (served from cached user vectors; --hybrid folds a request's fresh events in), cosine at "
        "temperature 0.1, no user-id token, a linear item tower (chosen on a dev log's validation: "
        "benchmarks/defaults_dev.py)"
    )
    why.append(
        f"schedule: cosine over the {budget:.0f} s time budget; early stop after 5 validations without gain, "
        "counted once 80 % of the budget is spent"
    )
    return RunConfig(model=model, train=train), why
