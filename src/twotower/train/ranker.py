"""Training and evaluating the ranker (:class:`twotower.model.ranker.Ranker`) on the retriever's own candidates.

The candidates of a training example are what the trained retriever would hand the ranker: its mined
neighbours of that example (``twotower mine-negatives --run RETRIEVER --from 1 --to K'``: the user's own
training items already removed), plus the positive and ``random`` uniform items, in a random order. The loss
is the listwise softmax over them. The ranker's embeddings start from the retriever's.

A ranker directory holds one checkpoint (safetensors + JSON, :mod:`twotower.train.checkpoint`) whose config
records the retriever's model version; :func:`~twotower.model.ranker.load_ranker` refuses another retriever
unless told.

:func:`rerank_metrics` measures the funnel: for each evaluated user the retriever's top ``K'`` (strict user
vector, seen items removed), re-scored by the ranker; a target outside the shortlist keeps its retrieval rank,
so HR@K' is the same for both and the gain shows at the top.
"""

from __future__ import annotations

import logging
import shutil
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
from ..model import checkpoint as ckpt_read
from ..model.ranker import Ranker, load_ranker
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
    history: int = 50  # the user's last events the ranker reads (its cost grows with history + candidates)
    prior: bool = True  # add the retriever's score (learned scale): the ranker learns a correction of retrieval
    warm_start: bool = False  # history tokens and blocks start from the retriever's user encoder (not only its tables)
    steps: int = 2000  # optimizer steps (the time budget may end it first)
    batch: int = 128  # examples per step
    lr: float = 1e-3
    weight_decay: float = 0.01
    time_budget_s: float = 0.0  # 0 = no limit
    seed: int = 0
    log_every: int = 50
    save_every: int = 200  # steps between resumable checkpoints (OUT/resume; 0 = none)

    def __post_init__(self) -> None:
        for name in ("num_layers", "steps", "batch", "log_every", "history"):
            cfgmod.check_int(self, name, 1)
        cfgmod.check_int(self, "save_every", 0)
        cfgmod.check_int(self, "random", 0)
        cfgmod.check_int(self, "seed", 0)
        cfgmod.check_float(self, "lr", 0.0, lo_open=True)
        cfgmod.check_float(self, "weight_decay", 0.0)
        cfgmod.check_float(self, "time_budget_s", 0.0)


def candidate_inputs(feat: Featurizer, ids: np.ndarray) -> ItemInputs:
    """Item inputs of a [B, K] id matrix: ItemInputs of [B, K, ·]."""
    flat = feat.items(ids.reshape(-1))
    return ItemInputs(*(t.view(*ids.shape, -1) for t in (flat.item, flat.author, flat.feat)))


class RetrieverScores:
    """The retriever's score of candidates for training examples: user vector (strict) . item vector, [B, K]."""

    def __init__(self, model, feat: Featurizer) -> None:
        self.model, self.feat = model, feat
        with torch.no_grad():
            self.items = encode_corpus(model, feat)  # [N, D]

    @torch.no_grad()
    def __call__(self, users: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> torch.Tensor:
        q = encode_requests(self.model, self.feat, users, rows).float()  # [B, D]
        return torch.einsum("bd,bkd->bk", q, self.items[torch.from_numpy(ids)])


def warm_start(ranker: Ranker, model) -> None:
    """Copy the retriever's user encoder into the ranker where shapes agree: the history token projections,
    time-gap and position embeddings (the first ``max_len`` positions), and its blocks into the ranker's."""
    src, dst = model.user_encoder.state_dict(), ranker.tokens.state_dict()
    for key, value in src.items():
        if key in dst and dst[key].shape == value.shape:
            dst[key] = value
        elif key == "pos_emb.weight" and key in dst:
            dst[key] = value[: dst[key].shape[0]]
    ranker.tokens.load_state_dict(dst)
    for mine, theirs in zip(ranker.blocks, model.user_encoder.blocks):
        if all(a.shape == b.shape for a, b in zip(mine.state_dict().values(), theirs.state_dict().values())):
            mine.load_state_dict(theirs.state_dict())


# Settings that may change between a killed run and its resumption: they do not change what a step computes.
RESUMABLE_CHANGES = ("steps", "time_budget_s", "log_every", "save_every")


def _save_resume(path: Path, ranker: Ranker, opt, rng: np.random.Generator, config: dict, state: dict) -> None:
    """The periodic checkpoint ``OUT/resume``: weights, optimizer moments, both RNG states and the step."""
    ckpt.save(path, ranker, config, {**state, "numpy_rng": rng.bit_generator.state}, opt,
              {"torch_rng": torch.get_rng_state()})  # fmt: skip


def _restore(path: Path, ranker: Ranker, opt, rng: np.random.Generator, config: dict) -> dict:
    """Load ``OUT/resume`` into the ranker, optimizer and RNGs; its state (step, seconds, losses). Refuses one
    written for another retriever, other candidates or other training settings."""
    weights, saved, state, extra = ckpt_read.load(path)
    mine = {k: v for k, v in config["ranker"].items() if k not in RESUMABLE_CHANGES}
    theirs = {k: v for k, v in saved.get("ranker", {}).items() if k not in RESUMABLE_CHANGES}
    differ = [k for k in ("retriever_version", "mined") if saved.get(k) != config[k]]
    differ += [f"ranker.{k}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if differ:
        raise ArtifactError(
            f"{path} is a ranker training interrupted with other settings ({', '.join(differ)} differ); rerun "
            f"with the same ones to resume it, or start afresh (`twotower train-ranker ... --fresh`)"
        )
    ranker.load_state_dict(weights)
    ckpt.restore_optimizer(opt, extra, state)
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(extra["extra.torch_rng"])
    return state


def train_ranker(
    run: str | Path,
    mined: str | Path,
    out: str | Path,
    cfg: RankerConfig | None = None,
    data: SequenceData | None = None,
    progress: bool = True,
    resume: bool = True,
) -> dict:
    """Train a ranker for retriever ``run`` on the candidates mined with it (``mined``); write it to ``out``.
    Returns the summary (steps, seconds, final loss, the ranker and retriever versions).

    Every ``cfg.save_every`` steps the training state goes to ``out/resume``; a run killed mid-way and
    started again with the same arguments continues from there (``resume=False``: start afresh) and ends
    with the weights the uninterrupted run ends with. ``out/resume`` is removed once ``out/checkpoint`` is
    written."""
    cfg = cfg or RankerConfig()
    out = Path(out)
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
    mc = replace(
        rc.model,
        num_layers=cfg.num_layers,
        online_head=False,
        user_token=False,
        max_len=min(cfg.history, rc.model.max_len),
    )
    torch.manual_seed(cfg.seed)
    prior_scale = 1.0 / rc.train.temperature if cfg.prior else None
    ranker = Ranker(mc, prior_scale)
    ranker.embed.load_state_dict(model.embed.state_dict())  # start from the retriever's id tables
    if cfg.warm_start:
        warm_start(ranker, model)
    feat = Featurizer(data, mc)
    retriever = RetrieverScores(model, Featurizer(data, rc.model)) if cfg.prior else None
    opt = torch.optim.AdamW(ranker.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    rows_all, items_all = cands.rows.numpy(), cands.items.numpy()
    user_of = data.user_of_event()
    config = {"ranker": asdict(cfg), "model": asdict(mc), "retriever_version": version,
              "mined": str(Path(mined).resolve()), "prior_scale": prior_scale}  # fmt: skip
    saved, start, elapsed, losses = out / "resume", 0, 0.0, []
    if not resume:
        shutil.rmtree(saved, ignore_errors=True)
    elif ckpt_read.resolve(saved) is not None:
        st = _restore(saved, ranker, opt, rng, config)
        start, elapsed, losses = int(st["step"]), float(st["train_seconds"]), list(st["losses"])
        log.info("ranker: resuming %s at step %d (%.0f s trained)", out, start, elapsed)
    ranker.train()
    t0, step = time.perf_counter() - elapsed, start
    for step in range(start + 1, cfg.steps + 1):
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
        prior = None if retriever is None else retriever(user_of[rows], rows, ids)
        logits = ranker(feat.histories_before(user_of[rows], rows), candidate_inputs(feat, ids), prior)
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
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            state = {"step": step, "train_seconds": time.perf_counter() - t0, "losses": losses[-cfg.log_every :]}
            _save_resume(saved, ranker, opt, rng, config, state)
    secs = time.perf_counter() - t0
    loss = float(np.mean(losses[-cfg.log_every :])) if losses else float("nan")
    state = {"step": step, "train_seconds": round(secs, 1), "loss": loss}
    ranker_version = ckpt.save(out / "checkpoint", ranker, config, state)
    shutil.rmtree(saved, ignore_errors=True)
    width = int(items_all.shape[1]) + 1 + cfg.random
    return {**state, "ranker_version": ranker_version, "retriever_version": version, "candidates": width}


@torch.no_grad()
def rerank_metrics(
    run: str | Path,
    ranker_dir: str | Path,
    which: str = "test",
    shortlist: int | tuple[int, ...] = 100,
    max_users: int | None = None,
    data: SequenceData | None = None,
    batch: int = 64,
) -> dict:
    """``{"retrieval": metrics, "rerank": metrics}`` (filtered, strict) over ``which``'s targets; see the
    module docstring for how a target outside the shortlist counts. A tuple of shortlists gives
    ``{"retrieval": metrics, "rerank": {K': metrics}}`` from one ranker pass over the longest: a candidate's
    score does not depend on the other candidates (isolation), so a shorter shortlist's scores are a prefix's."""
    model, rc, version = load_run(run)
    ranker, rconf, _ = load_ranker(ranker_dir, expect_retriever=version)
    if data is None:
        from .run import load_dataset, recorded_dataset

        data = load_dataset(recorded_dataset(Path(run), None))
    lists = (shortlist,) if isinstance(shortlist, int) else tuple(shortlist)
    longest = min(max(lists), data.num_items)
    feat = Featurizer(data, rc.model)
    rfeat = Featurizer(data, ranker.cfg)
    items = encode_corpus(model, feat)
    users, rows = data.eval_targets(rc.train.split, which)
    if max_users is not None and len(users) > max_users:
        keep = np.sort(np.random.default_rng(0).choice(len(users), max_users, replace=False))
        users, rows = users[keep], rows[keep]
    base: list[np.ndarray] = []
    reranked: dict[int, list[np.ndarray]] = {k: [] for k in lists}
    for lo in range(0, len(users), batch):
        u, r = users[lo : lo + batch], rows[lo : lo + batch]
        scores = encode_requests(model, feat, u, r).float() @ items.T  # [B, N]
        seen = seen_mask(data, u, r)
        target = torch.from_numpy(data.event_item[r].astype(np.int64))
        rank = target_ranks(scores, target, seen)  # [B]
        top = torch.topk(scores.masked_fill(seen, float("-inf")), longest, dim=1).indices  # retrieval order
        prior = scores.gather(1, top) if ranker.prior_scale is not None else None
        logits = ranker(rfeat.histories_before(u, r), candidate_inputs(rfeat, top.numpy()), prior)
        # a shortlist longer than the unseen items holds seen ones (a seen target is a miss, as in retrieval)
        masked = seen.gather(1, top)
        logits = logits.masked_fill(masked, float("-inf"))
        base.append(rank.numpy())
        for key in lists:
            k = min(key, longest)
            new = torch.argsort(logits[:, :k], dim=1, descending=True, stable=True)
            hit = (top[:, :k] == target[:, None]) & ~masked[:, :k]
            hit = hit.gather(1, new)  # [B, K'] in the reranked order
            pos = hit.float().argmax(1)  # the target's place after re-ranking
            reranked[key].append(torch.where(hit.any(1), pos, rank).numpy())
    retrieval = summarize(np.concatenate(base), KS)
    out = {k: summarize(np.concatenate(v), KS) for k, v in reranked.items()}
    if isinstance(shortlist, int):
        return {"retrieval": retrieval, "rerank": out[shortlist]}
    return {"retrieval": retrieval, "rerank": out}
