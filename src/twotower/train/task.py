"""The retrieval task: user vectors + positive items -> loss (after TFRS ``tasks/retrieval.py``).

The trainer hands the task the batch's queries and what it knows about their targets; the task owns every
choice that turns them into a loss::

    out = task(queries, Targets(items=pos_ids, weight=w, encode_items=embed))   # out.loss: scalar
    out.loss.backward(); optimizer.step(); task.observe(targets)

Pipeline (Yi et al. RecSys 2019; Yang et al. WWW 2020): sample candidates from the negative sources →
scores / temperature → − log q (logQ correction) → accidental hits masked → the objective (softmax
cross-entropy by default; BPR, hinge or NCE from :mod:`~twotower.train.objectives`), weighted by the
targets' event weights. When the candidates hold every positive (an in-batch source) the same loss is
one fused ``addmm`` (:func:`~twotower.train.losses.candidate_softmax_loss`); otherwise, or with
``fused=False``, the reference transform pipeline (:func:`~twotower.train.losses.sampled_softmax_loss`).

State: the temperature ``log_tau`` (a parameter, learnable or fixed), the negative sources' statistics
(frequency estimators, buffers) and the sampler's RNG are all in ``task.state_dict()``; the trainer saves
and restores that dict whole and never looks inside.

Extending the task — never the trainer:

* **a negative source** (mined hard negatives, a popularity sampler): subclass
  :class:`~twotower.train.negatives.NegativeSource` and add it in :func:`build_task`; the mixture sums its
  inclusion probability into logQ and its state joins the task's ``state_dict``.
* **a loss term** (Matryoshka prefixes, a ranker over the candidates, a regulariser): an ``nn.Module`` with
  ``forward(queries [T, D], targets: Targets, task: RetrievalTask) -> scalar``, passed in ``parts``. Its
  value is added to the loss and reported under its name; its parameters are trained with the task's and
  its buffers are checkpointed with them. It may reuse the task's temperature and sampler
  (``task.tau()``, ``task.negatives``, ``task.generator``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..data.dataset import SequenceData
from ..layout import SPLIT_TRAIN
from ..model.layers import prefix_vectors
from .config import TrainConfig
from .feedback import FeedbackNegatives, negative_events
from .frequency import ExactFrequency, StreamingFrequency
from .hard_negatives import MinedNegatives
from .logits import item_prior
from .losses import Logits, candidate_logits, candidate_softmax_loss, reference_logits, with_hard_negatives
from .negatives import FullCorpus, InBatchNegatives, MixedNegatives, NegativeSource, UniformNegatives
from .objectives import OBJECTIVES

TAU_RANGE = (0.01, 1.0)  # a learned temperature is kept in here (outside it the softmax degenerates)


@dataclass
class Targets:
    """The training targets of one batch, besides their queries.

    items: int64 [T] positive item ids (on the CPU, where sampling runs); weight: float [T] event weights
    (None = all 1); encode_items: the candidate tower over item ids, int64 [M] -> unit vectors [M, D];
    rows: int64 [T] the targets' dataset event rows (what mined negatives are keyed by; None = unknown);
    everyone: int64 [T_all] every rank's positives under torchrun, gathered once per batch (None: one process):
    the in-batch negatives and what the logQ estimators observe.
    """

    items: torch.Tensor
    weight: torch.Tensor | None
    encode_items: Callable[[torch.Tensor], torch.Tensor]
    rows: torch.Tensor | None = None
    everyone: torch.Tensor | None = None


@dataclass
class TaskOutput:
    """loss: the scalar to minimise; candidates: items the softmax ran over; terms: each part's loss."""

    loss: torch.Tensor
    candidates: int
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class _Once:
    """``encode_items`` that encodes a given id tensor once and hands the same vectors to later calls with
    equal ids (the full width and each Matryoshka prefix score the same candidates)."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor]):
        self.encode, self.memo = encode, []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        for seen, vecs in self.memo:
            if seen.shape == ids.shape and torch.equal(seen, ids):
                return vecs
        vecs = self.encode(ids)
        self.memo.append((ids, vecs))
        return vecs


class RetrievalTask(nn.Module):
    """Sampled-softmax retrieval loss with temperature, mixed negatives, logQ and accidental-hit removal."""

    def __init__(
        self,
        negatives: MixedNegatives,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        logq: bool = True,
        accidental_hits: bool = True,
        fused: bool = True,
        seed: int = 0,
        parts: dict[str, nn.Module] | None = None,
        objective: str = "softmax",
        margin: float = 1.0,
        hard: MinedNegatives | None = None,
        feedback: FeedbackNegatives | None = None,
        prefixes: dict[int, float] | None = None,
        similarity: str = "cosine",
        item_offset: torch.Tensor | None = None,
    ):
        """``item_offset``: float [N], added to every training logit of item i (:func:`logits.item_prior`):
        the towers learn scores lowered by it (None: no prior)."""
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; one of {sorted(OBJECTIVES)}")
        self.objective, self.margin = objective, margin
        # Mined hard negatives (plain data, not state) and whether the staged schedule has switched them on.
        self.hard, self.hard_active = hard, hard is not None
        self.feedback = feedback  # the user's explicit negatives near each target (always on)
        # Matryoshka (Kusupati et al. 2022): {prefix dim: weight}; each prefix of both towers' vectors, unit
        # again (cosine), takes the same loss over the same candidates, added with its weight.
        self.prefixes, self.similarity = dict(prefixes or {}), similarity
        self.log_tau = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learn_temperature)
        self.negatives = negatives
        self.logq, self.accidental_hits = logq, accidental_hits
        # The fused loss needs every positive among the candidates, each once (so no accidental hits to mask).
        self.fused = fused and accidental_hits and negatives.covers_positives
        self.generator = torch.Generator().manual_seed(seed)  # negative sampling only: resumes exactly
        self.parts = nn.ModuleDict(parts or {})
        self.register_buffer("item_offset", item_offset, persistent=False)  # data, rebuilt from the config

    def tau(self) -> torch.Tensor:
        """The softmax temperature τ (a 0-d tensor)."""
        return self.log_tau.exp()

    def forward(self, queries: torch.Tensor, targets: Targets) -> TaskOutput:
        """queries [T, D] (unit vectors, one per target) -> the batch's loss."""
        pos = targets.items
        # under torchrun the in-batch negatives are every rank's positives (the uniform draws are equal on all
        # ranks: one seed); the candidate tower runs over them here, so gradients reach every candidate
        pool = pos if targets.everyone is None else targets.everyone
        neg = self.negatives.sample(pool, self.generator)  # int64 [M] unique, CPU
        row_negatives = self._row_negatives(targets)
        if self.prefixes:  # every prefix scores the same items: encode them once
            targets = replace(targets, encode_items=_Once(targets.encode_items))
        loss = self._loss(queries, targets, neg, row_negatives)
        terms = {"retrieval": loss}
        for d, w in self.prefixes.items():  # Matryoshka: the same loss on each prefix, same candidates
            enc = targets.encode_items
            cut = replace(targets, encode_items=lambda ids, d=d, enc=enc: prefix_vectors(enc(ids), d, self.similarity))
            terms[f"prefix_{d}"] = self._loss(prefix_vectors(queries, d, self.similarity), cut, neg, row_negatives)
            loss = loss + w * terms[f"prefix_{d}"]
        for name, part in self.parts.items():
            terms[name] = part(queries, targets, self)
            loss = loss + terms[name]
        return TaskOutput(loss, len(neg), terms)

    def _log_q(self, ids: torch.Tensor, device: torch.device, p: torch.Tensor | None = None) -> torch.Tensor | None:
        """What is subtracted from the logits of items ``ids`` (any shape): log q when logQ is on (``p``: their
        inclusion probabilities, default the shared sources'), minus the item prior when there is one; None
        when neither applies."""
        out = None
        if self.logq:
            out = (self.negatives.inclusion_prob(ids) if p is None else p).log().to(device)
        if self.item_offset is not None:
            offset = self.item_offset[ids.cpu()].to(device)
            out = -offset if out is None else out - offset
        return out

    def _fused_inputs(
        self, q: torch.Tensor, targets: Targets, cand_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(labels [T], candidate vectors [M, D], log q [M] or None) of a candidate set holding every positive."""
        labels = torch.searchsorted(cand_ids, targets.items).to(q.device)
        cand = targets.encode_items(cand_ids)  # [M, D]
        return labels, cand, self._log_q(cand_ids, q.device)

    def _fused(self, q: torch.Tensor, targets: Targets, cand_ids: torch.Tensor) -> torch.Tensor:
        """Candidates already hold every positive: one column per item, labels = the positive's column."""
        labels, cand, log_q = self._fused_inputs(q, targets, cand_ids)
        return candidate_softmax_loss(
            q, cand, labels, self.tau(), log_q, targets.weight, objective=self.objective, margin=self.margin
        )

    def _reference_logits(self, q: torch.Tensor, targets: Targets, neg_ids: torch.Tensor) -> Logits:
        """The transform pipeline's logits: positive column + sampled negatives, logQ on both, accidental hits
        not negatives."""
        pos_ids = targets.items
        all_items, inv = torch.unique(torch.cat([pos_ids, neg_ids]), return_inverse=True)
        emb = targets.encode_items(all_items)  # [M', D]: each item encoded once
        pos = emb[inv[: len(pos_ids)].to(q.device)]
        neg = emb[inv[len(pos_ids) :].to(q.device)]
        log_q_pos, log_q_neg = self._log_q(pos_ids, q.device), self._log_q(neg_ids, q.device)
        return reference_logits(
            q, pos, pos_ids.to(q.device), neg, neg_ids.to(q.device), self.tau(), log_q_pos, log_q_neg,
            self.accidental_hits,
        )  # fmt: skip

    def _reference(self, q: torch.Tensor, targets: Targets, neg_ids: torch.Tensor) -> torch.Tensor:
        """The transform pipeline (``sampled_softmax_loss``): the reference the fused path is tested against."""
        return self._reference_logits(q, targets, neg_ids).loss(self.objective, self.margin, targets.weight)

    def _loss(
        self,
        q: torch.Tensor,
        targets: Targets,
        neg: torch.Tensor,
        row_negatives: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """The objective over the shared candidates ``neg`` (and the rows' own negatives) for queries ``q``."""
        if row_negatives is not None:
            return self._with_hard(q, targets, neg, *row_negatives)
        if self.fused:
            return self._fused(q, targets, neg)
        return self._reference(q, targets, neg)

    def _row_negatives(self, targets: Targets) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each row's own negatives, (item ids int64 [T, H], -1 = none; inclusion probabilities [T, H]): the
        mined ones once the staged schedule has switched them on, then the explicit-feedback ones; None when
        there are none to add."""
        if targets.rows is None:
            return None
        parts = []
        if self.hard is not None and self.hard_active:
            parts.append(self.hard.lookup(targets.rows))
        if self.feedback is not None:
            parts.append(self.feedback.lookup(targets.rows))
        if not parts:
            return None
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    def _with_hard(
        self, q: torch.Tensor, targets: Targets, neg_ids: torch.Tensor, hard: torch.Tensor, p_hard: torch.Tensor
    ) -> torch.Tensor:
        """The shared candidates' logits (fused or reference layout) plus each row's own negatives ``hard``
        [T, H] (mined, explicit feedback; -1 = none) drawn with probabilities ``p_hard`` [T, H].

        An item that is the row's positive, already one of its shared columns, or an earlier column of the
        same row is not a column twice. Its logQ (when on) is log min(1, p_shared + p_row): the shared
        sources' inclusion probability of the item plus the row's own.
        """
        pos = targets.items
        if self.fused:
            labels, cand, log_q = self._fused_inputs(q, targets, neg_ids)
            base = candidate_logits(q, cand, labels, self.tau(), log_q)
        else:
            base = self._reference_logits(q, targets, neg_ids)
        at = torch.searchsorted(neg_ids, hard.clamp_min(0)).clamp(max=max(len(neg_ids) - 1, 0))
        duplicate = neg_ids[at] == hard if len(neg_ids) else torch.zeros_like(hard, dtype=torch.bool)
        usable = (hard >= 0) & ~duplicate & (hard != pos[:, None])  # [T, H]
        if hard.shape[1] > 1:  # a repeat within the row (a mined item the user also disliked) counts once
            first = torch.ones_like(usable)
            srt, order = hard.sort(dim=1, stable=True)
            dup = torch.zeros_like(usable)
            dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
            first.scatter_(1, order, ~dup)
            usable &= first
        safe = hard.clamp_min(0)
        uniq, inv = torch.unique(safe.reshape(-1), return_inverse=True)
        vecs = targets.encode_items(uniq)[inv.to(q.device)].view(*hard.shape, -1)  # [T, H, D]
        p = None  # the rows' own inclusion probabilities, needed by logQ only
        if self.logq:
            p = (self.negatives.inclusion_prob(safe.reshape(-1)).view(hard.shape) + p_hard).clamp(1e-12, 1.0)
        log_q = self._log_q(safe, q.device, p)
        built = with_hard_negatives(base, q, vecs, usable.to(q.device), self.tau(), log_q)
        return built.loss(self.objective, self.margin, targets.weight)

    @torch.no_grad()
    def observe(self, targets: Targets) -> None:
        """After the optimizer step: feed the positives (every rank's) to the sources' statistics, keep τ in
        range."""
        self.negatives.observe(targets.items if targets.everyone is None else targets.everyone)
        if self.log_tau.requires_grad:
            self.log_tau.clamp_(math.log(TAU_RANGE[0]), math.log(TAU_RANGE[1]))

    # The sampler's RNG state rides in the state dict (safetensors stores tensors only: a uint8 tensor).
    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def build_task(
    cfg: TrainConfig, data: SequenceData, hard: MinedNegatives | None = None, similarity: str = "cosine"
) -> RetrievalTask:
    """The task a :class:`TrainConfig` describes: negative sources in ``cfg.negatives`` order, their logQ
    estimator (``cfg.logq``), temperature, accidental hits, the fused path, the objective, the explicit
    negative feedback (``cfg.negative_actions`` within ``cfg.negative_window``); ``hard``: mined negatives
    (read from ``cfg.hard_negatives`` by the trainer)."""
    feedback = None
    if cfg.negative_actions and cfg.negative_window:
        feedback = FeedbackNegatives(data, cfg.split, cfg.negative_actions, cfg.negative_window, cfg.negative_count)
    sources: list[NegativeSource] = []
    # the cold-start protocol's held-out items are not in the training catalogue: never drawn as negatives
    pool = None if data.item_cold is None else torch.from_numpy(np.flatnonzero(np.asarray(data.item_cold) == 0))
    for name in cfg.negatives:
        if name == "in_batch":
            if cfg.logq == "streaming":
                freq = StreamingFrequency(data.num_items, cfg.logq_alpha)
            elif cfg.logq == "exact":
                counts = torch.from_numpy(data.item_train_counts(cfg.split).copy())
                freq = ExactFrequency(counts, cfg.batch_tokens)
            else:
                freq = None
            sources.append(InBatchNegatives(freq))
        elif name == "uniform":
            sources.append(UniformNegatives(data.num_items, cfg.num_uniform, pool))
        else:
            sources.append(FullCorpus(data.num_items, pool))
    offset = None
    if cfg.dislike_prior:
        train = data.split(cfg.split) == SPLIT_TRAIN  # a valid or test window's dislikes never count
        neg = negative_events(data, cfg.negative_actions) & train
        items = data.event_item.astype(np.int64)
        offset = cfg.dislike_prior * item_prior(
            np.bincount(items[neg], minlength=data.num_items), np.bincount(items[train], minlength=data.num_items)
        )
    return RetrievalTask(
        MixedNegatives(sources),
        temperature=cfg.temperature,
        learn_temperature=cfg.learn_temperature,
        logq=cfg.logq != "none",
        accidental_hits=cfg.accidental_hits,
        fused=cfg.fused_loss,
        seed=cfg.seed,
        objective=cfg.loss,
        margin=cfg.margin,
        hard=hard,
        feedback=feedback,
        prefixes=dict(zip(cfg.matryoshka_dims, cfg.matryoshka_weights or [1.0] * len(cfg.matryoshka_dims))),
        similarity=similarity,
        item_offset=offset,
    )


def targets_of(
    data: SequenceData,
    rows: torch.Tensor,
    encode_items: Callable,
    device: torch.device,
    not_positive: np.ndarray | None = None,
) -> Targets:
    """:class:`Targets` of the dataset event rows ``rows`` int64 [T] (the model's training-query targets).

    ``not_positive``: bool [E], events that are no training positive (explicit negatives): weight 0."""
    r = rows.cpu().numpy()
    items = torch.from_numpy(data.event_item[r].astype(np.int64))
    w = data.event_weight[r]
    if not_positive is not None:
        w = np.where(not_positive[r], np.float32(0.0), w)
    weight = torch.from_numpy(w).to(device)
    return Targets(items, None if bool((weight == 1).all()) else weight, encode_items, torch.from_numpy(r))


def legacy_task_state(extra: dict[str, torch.Tensor], task: RetrievalTask) -> dict[str, torch.Tensor]:
    """The task's state dict from a checkpoint written before the task existed (``extra.log_tau``,
    ``extra.sampler_rng`` and ``extra.freq{i}.*`` for the i-th negative source)."""
    state = {"log_tau": extra["extra.log_tau"], "_extra_state": extra["extra.sampler_rng"]}
    for key in task.state_dict():
        if key.startswith("negatives.sources."):  # negatives.sources.{i}.frequency.{name}
            i, _, name = key[len("negatives.sources.") :].split(".", 2)
            state[key] = extra[f"extra.freq{i}.{name}"]
    return state
