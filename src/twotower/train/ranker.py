"""Training and evaluating the ranker (:class:`twotower.model.ranker.Ranker`) on the retriever's own candidates.

The candidates of a training example are what the trained retriever would hand the ranker: its mined
neighbours of that example (``twotower mine-negatives --run RETRIEVER --from 1 --to K'``: the user's own
training items already removed), plus the positive and ``random`` uniform items, in a random order. The loss
is the listwise softmax over them. The ranker's embeddings start from the retriever's.

A ranker directory holds one checkpoint (safetensors + JSON, :mod:`twotower.train.checkpoint`) whose config
records the retriever's model version; :func:`load_ranker` refuses another retriever unless told.

:func:`rerank_metrics` measures the funnel: for each evaluated user the retriever's top ``K'`` (strict user
vector, seen items removed), re-scored by the ranker; a target outside the shortlist keeps its retrieval rank,
so HR@K' is the same for both and the gain shows at the top.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import config as cfgmod
from ..data.dataset import SequenceData
from ..errors import ArtifactError
from ..evaluate.evaluator import encode_corpus, encode_requests, seen_mask
from ..evaluate.metrics import KS, summarize, target_ranks
from ..features import Featurizer
from ..features.inputs import ItemInputs
from ..model import ModelConfig
from ..model import checkpoint as ckpt_read
from ..model.ranker import Ranker
from . import checkpoint as ckpt
from .hard_negatives import MinedNegatives
from .load import load_run
from .run import dataset_fingerprint

log = logging.getLogger(__name__)


@dataclass
class RankerConfig:
    """How the ranker trains. Saved with it."""

    random: int = 4  # uniform random candidates per example, beside the mined ones and the positive
    num_layers: int = 2
    steps: int = 2000  # optimizer steps (the time budget may end it first)
    batch: int = 128  # examples per step
    lr: float = 1e-3
    weight_decay: float = 0.01
    time_budget_s: float = 0.0  # 0 = no limit
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("num_layers", "steps", "batch", "log_every"):
            cfgmod.check_int(self, name, 1)
        cfgmod.check_int(self, "random", 0)
        cfgmod.check_int(self, "seed", 0)
        cfgmod.check_float(self, "lr", 0.0, lo_open=True)
        cfgmod.check_float(self, "weight_decay", 0.0)
        cfgmod.check_float(self, "time_budget_s", 0.0)


def candidate_inputs(feat: Featurizer, ids: np.ndarray) -> ItemInputs:
    """Item inputs of a [B, K] id matrix: ItemInputs of [B, K, ·]."""
    flat = feat.items(ids.reshape(-1))
    return ItemInputs(*(t.view(*ids.shape, -1) for t in (flat.item, flat.author, flat.feat)))


def train_ranker(
    run: str | Path,
    mined: str | Path,
    out: str | Path,
    cfg: RankerConfig | None = None,
    data: SequenceData | None = None,
    progress: bool = True,
) -> dict:
    """Train a ranker for retriever ``run`` on the candidates mined with it (``mined``); write it to ``out``.
    Returns the summary (steps, seconds, final loss, the ranker and retriever versions)."""
    cfg = cfg or RankerConfig()
    model, rc, version = load_run(run)
    if data is None:
        from .run import load_dataset, recorded_dataset

        data = load_dataset(recorded_dataset(Path(run), None))
    cands = MinedNegatives.load(mined, dataset_fingerprint(data), rc.train.split)
    if cands.model_version != version:
        raise ArtifactError(
            f"{mined} was mined with model {cands.model_version}, the retriever {run} is {version}: mine its "
            f"candidates with `twotower mine-negatives --run {run} --from 1 --to 100`"
        )
    mc = replace(rc.model, num_layers=cfg.num_layers, online_head=False, user_token=False)
    torch.manual_seed(cfg.seed)
    ranker = Ranker(mc)
    ranker.embed.load_state_dict(model.embed.state_dict())  # start from the retriever's id tables
    feat = Featurizer(data, mc)
    opt = torch.optim.AdamW(ranker.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    rows_all, items_all = cands.rows.numpy(), cands.items.numpy()
    user_of = data.user_of_event()
    ranker.train()
    t0, losses, step = time.perf_counter(), [], 0
    for step in range(1, cfg.steps + 1):
        pick = rng.integers(0, len(rows_all), cfg.batch)
        rows = rows_all[pick]
        mined_ids = items_all[pick]
        rand = rng.integers(0, data.num_items, (cfg.batch, mined_ids.shape[1] + cfg.random))
        mined_ids = np.where(mined_ids >= 0, mined_ids, rand[:, : mined_ids.shape[1]])
        ids = np.concatenate(
            [data.event_item[rows][:, None].astype(np.int64), mined_ids, rand[:, mined_ids.shape[1] :]], 1
        )
        order = np.argsort(rng.random(ids.shape), axis=1)  # the positive lands anywhere
        ids = np.take_along_axis(ids, order, 1)
        labels = np.argmax(order == 0, axis=1)
        pos = data.event_item[rows].astype(np.int64)
        twin = (ids == pos[:, None]) & (np.arange(ids.shape[1])[None, :] != labels[:, None])  # a random hit
        logits = ranker(feat.histories_before(user_of[rows], rows), candidate_inputs(feat, ids))
        loss = F.cross_entropy(logits.masked_fill(torch.from_numpy(twin), float("-inf")), torch.from_numpy(labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ranker.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress and step % cfg.log_every == 0:
            log.info(
                "ranker step %d: loss %.4f (%.0f s)", step, np.mean(losses[-cfg.log_every :]), time.perf_counter() - t0
            )
        if cfg.time_budget_s and time.perf_counter() - t0 > cfg.time_budget_s:
            break
    secs = time.perf_counter() - t0
    config = {"ranker": asdict(cfg), "model": asdict(mc), "retriever_version": version, "mined": str(mined)}
    state = {"step": step, "train_seconds": round(secs, 1), "loss": float(np.mean(losses[-cfg.log_every :]))}
    ranker_version = ckpt.save(Path(out) / "checkpoint", ranker, config, state)
    return {**state, "ranker_version": ranker_version, "retriever_version": version, "candidates": int(ids.shape[1])}


def load_ranker(
    path: str | Path, expect_retriever: str | None = None, allow_mismatch: bool = False
) -> tuple[Ranker, dict, str]:
    """(ranker in eval mode, its saved config, its version); refuses one trained against another retriever."""
    weights, config, state, _ = ckpt_read.load(Path(path) / "checkpoint")
    if expect_retriever is not None and config.get("retriever_version") != expect_retriever and not allow_mismatch:
        raise ArtifactError(
            f"ranker {path} was trained against retriever {config.get('retriever_version')}, not {expect_retriever}: "
            "train a ranker for this retriever (`twotower train-ranker`), or allow the mismatch explicitly"
        )
    mc = cfgmod.from_dict(ModelConfig, config["model"], where=f"{path}/checkpoint/config.json [model]")
    ranker = Ranker(mc)
    ranker.load_state_dict(weights)
    return ranker.eval(), config, str(state["model_version"])


@torch.no_grad()
def rerank_metrics(
    run: str | Path,
    ranker_dir: str | Path,
    which: str = "test",
    shortlist: int = 100,
    max_users: int | None = None,
    data: SequenceData | None = None,
    batch: int = 64,
) -> dict[str, dict[str, float]]:
    """``{"retrieval": metrics, "rerank": metrics}`` (filtered, strict) over ``which``'s targets; see the
    module docstring for how a target outside the shortlist counts."""
    model, rc, version = load_run(run)
    ranker, rconf, _ = load_ranker(ranker_dir, expect_retriever=version)
    if data is None:
        from .run import load_dataset, recorded_dataset

        data = load_dataset(recorded_dataset(Path(run), None))
    feat = Featurizer(data, rc.model)
    rfeat = Featurizer(data, ranker.cfg)
    items = encode_corpus(model, feat)
    users, rows = data.eval_targets(rc.train.split, which)
    if max_users is not None and len(users) > max_users:
        keep = np.sort(np.random.default_rng(0).choice(len(users), max_users, replace=False))
        users, rows = users[keep], rows[keep]
    base, reranked = [], []
    for lo in range(0, len(users), batch):
        u, r = users[lo : lo + batch], rows[lo : lo + batch]
        scores = encode_requests(model, feat, u, r).float() @ items.T  # [B, N]
        seen = seen_mask(data, u, r)
        target = torch.from_numpy(data.event_item[r].astype(np.int64))
        rank = target_ranks(scores, target, seen)  # [B]
        top = torch.topk(scores.masked_fill(seen, float("-inf")), min(shortlist, data.num_items), dim=1).indices
        logits = ranker(rfeat.histories_before(u, r), candidate_inputs(rfeat, top.numpy()))
        new = torch.argsort(logits, dim=1, descending=True, stable=True)
        hit = top.gather(1, new) == target[:, None]  # [B, K']
        pos = hit.float().argmax(1)  # the target's place after re-ranking
        inside = hit.any(1)
        base.append(rank.numpy())
        reranked.append(torch.where(inside, pos, rank).numpy())
    return {"retrieval": summarize(np.concatenate(base), KS), "rerank": summarize(np.concatenate(reranked), KS)}
