"""The training loop: windows -> user tower per prefix -> sampled softmax -> AdamW; validation, checkpoints.

One causal forward pass over a window yields a user vector for every prefix, so every position is a
training example (history strictly before its target) without materialising copies. The loop keeps no
global state outside the checkpoint: (seed, epoch, batch index) determines the data order, RNG states are
saved, and ``resume=True`` continues bit-for-bit on CPU. Nothing here assumes a single process beyond the
batch plan; a distributed sampler would shard ``plan_epoch``'s output by rank.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import config as cfgmod
from ..config import check, check_float, check_int
from ..data.dataset import SequenceData
from ..errors import ConfigError, DataError
from ..evaluate import PRIMARY, evaluate_model
from ..features import Featurizer
from ..model import ModelConfig, TwoTower
from . import checkpoint as ckpt
from . import run
from .batches import WindowBatches, plan_epoch
from .frequency import ExactFrequency, StreamingFrequency
from .losses import candidate_softmax_loss, sampled_softmax_loss
from .negatives import FullCorpus, InBatchNegatives, MixedNegatives, UniformNegatives
from .optim import AdamWRowWiseAdagrad
from .pseudo import PseudoBatch, PseudoContext

log = logging.getLogger(__name__)

NEGATIVES = ("in_batch", "uniform", "full")
EMBEDDING_OPTIMIZERS = ("adamw", "rowwise_adagrad")
LOGQ = ("streaming", "exact", "none")
DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


@dataclass
class TrainConfig:
    """Optimisation, negatives and bookkeeping. Saved with every checkpoint."""

    epochs: int = 20
    batch_tokens: int = 16384  # training targets per batch (windows x padded length)
    lr: float = 1e-3
    weight_decay: float = 0.01
    embedding_optimizer: str = "adamw"  # adamw | rowwise_adagrad (one accumulator per table row)
    embedding_lr: float = 0.05  # row-wise Adagrad's learning rate (follows the same warm-up + cosine)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    temperature: float = 0.05
    learn_temperature: bool = False
    negatives: list[str] = field(default_factory=lambda: ["in_batch", "uniform"])  # in_batch | uniform | full
    num_uniform: int = 1024
    logq: str = "streaming"  # streaming (Yi et al.) | exact (training counts) | none
    logq_alpha: float = 0.01
    accidental_hits: bool = True
    fused_loss: bool = True  # candidate-set softmax (same loss, one addmm); False = the reference pipeline
    split: str = "loo"
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    num_workers: int = 0
    threads: int = 0  # torch intra-op threads (0 = torch default)
    eval_every: int = 1  # epochs
    eval_users: int = 0  # validation users per evaluation (0 = all)
    patience: int = 3  # evaluations without improvement of the primary metric before stopping
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = end of epoch only)
    time_budget_s: float = 0.0  # stop (after a checkpoint) once training time exceeds this (0 = no limit)
    log_every: int = 20
    # Hybrid towers (model.online_head): pseudo-context augmentation, see train/pseudo.py.
    max_lag: int = 64  # snapshot drawn 0..max_lag events before each target
    no_state_prob: float = 0.05  # drop the state (cold-start / fallback path)
    subject_prob: float = 0.2  # the previous event's item as the request's subject item
    holdout_users: float = 0.0  # fraction of users kept out of training entirely (cold-start evaluation)

    def __post_init__(self) -> None:
        """Range checks; every failure is a ConfigError naming the field, the value and what is allowed."""
        check(
            isinstance(self.negatives, list) and bool(self.negatives) and set(self.negatives) <= set(NEGATIVES),
            "negatives",
            self.negatives,
            f'give a non-empty list of {NEGATIVES}, e.g. negatives = ["in_batch", "uniform"]',
        )
        check(
            self.embedding_optimizer in EMBEDDING_OPTIMIZERS,
            "embedding_optimizer",
            self.embedding_optimizer,
            f"use one of {EMBEDDING_OPTIMIZERS}",
        )
        check(self.logq in LOGQ, "logq", self.logq, f"use one of {LOGQ}")
        check(self.split in ("loo", "time"), "split", self.split, "use 'loo' (leave-last-out) or 'time'")
        check(DEVICE.fullmatch(self.device) is not None, "device", self.device, "use cpu, cuda, cuda:N or mps")
        for name in ("epochs", "batch_tokens", "num_uniform", "patience", "log_every"):
            check_int(self, name, 1)
        for name in ("warmup_steps", "seed", "num_workers", "threads", "eval_every", "eval_users", "checkpoint_every"):
            check_int(self, name, 0)
        check_int(self, "max_lag", 0)
        for name in ("lr", "embedding_lr", "temperature"):
            check_float(self, name, 0.0, lo_open=True)
        for name in ("weight_decay", "grad_clip", "time_budget_s"):
            check_float(self, name, 0.0)
        for name in ("min_lr_ratio", "no_state_prob", "subject_prob"):
            check_float(self, name, 0.0, 1.0)
        check_float(self, "logq_alpha", 0.0, 1.0, lo_open=True)
        check_float(self, "holdout_users", 0.0, 1.0, hi_open=True)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class StopTraining(Exception):
    """Raised by ``stop_after_steps`` (tests use it to simulate a kill)."""


def holdout_mask(num_users: int, fraction: float) -> np.ndarray:
    """bool [U]: users kept out of training (a fixed draw, so evaluation can find them again)."""
    return np.random.default_rng(20190914).random(num_users) < fraction


def _lr_lambda(cfg: TrainConfig, total_steps: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def build_negatives(cfg: TrainConfig, data: SequenceData, targets_per_batch: int):
    sources = []
    for name in cfg.negatives:
        if name == "in_batch":
            if cfg.logq == "streaming":
                freq = StreamingFrequency(data.num_items, cfg.logq_alpha)
            elif cfg.logq == "exact":
                freq = ExactFrequency(torch.from_numpy(data.item_train_counts(cfg.split).copy()), targets_per_batch)
            else:
                freq = None
            sources.append(InBatchNegatives(freq))
        elif name == "uniform":
            sources.append(UniformNegatives(data.num_items, cfg.num_uniform))
        else:
            sources.append(FullCorpus(data.num_items))
    return MixedNegatives(sources)


def _param_groups(model: TwoTower, cfg: TrainConfig) -> list[dict]:
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay, rowwise = [], [], []
    for name, p in model.named_parameters():
        if cfg.embedding_optimizer == "rowwise_adagrad" and id(p) in tables:
            rowwise.append(p)
        # Embedding tables, norms and biases are not decayed (only hit rows get gradients anyway).
        elif p.ndim < 2 or "emb" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if rowwise:
        groups.append({"params": rowwise, "weight_decay": 0.0, "lr": cfg.embedding_lr, "rowwise": True})
    return groups


class Trainer:
    """Owns model, optimizer, negatives and the run directory. ``fit()`` trains; ``resume=True`` continues."""

    def __init__(
        self, data: SequenceData, cfg: RunConfig, out: str | Path, resume: bool = False, overwrite: bool = False
    ):
        """``resume``: continue ``out``'s last checkpoint (``cfg`` may differ from the saved config only in
        ``run.RESUMABLE`` fields; see ``resume_config``). ``overwrite``: discard the run already in ``out``.
        Without either, ``out`` must be new or empty."""
        self.data, self.cfg, self.out = data, cfg, Path(out)
        tc, mc = cfg.train, cfg.model
        run.check_run_dir(self.out, resume, overwrite, data_root=data.root)
        if resume:
            run.check_same_dataset(self.out, data)
        mc.num_actions, mc.num_surfaces = data.num_actions, data.num_surfaces
        run.check_model_fits(mc, data)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = torch.device(tc.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "train.device = 'cuda' but CUDA is not available; set train.device = 'cpu' (--device cpu)"
            )
        torch.manual_seed(tc.seed)
        self.model = TwoTower(mc).to(self.device)
        self.feat = Featurizer(data, mc)
        self.windows = data.train_windows(tc.split, mc.max_len)
        if tc.holdout_users:
            self.windows = self.windows[~holdout_mask(data.num_users, tc.holdout_users)[self.windows[:, 0]]]
        self._check_examples()
        self.pseudo = (
            PseudoContext(self.feat, tc.max_lag, tc.no_state_prob, tc.subject_prob, tc.seed) if mc.online_head else None
        )
        self.lengths = self.windows[:, 2] - self.windows[:, 1]
        self.steps_per_epoch = len(plan_epoch(self.lengths, tc.batch_tokens, tc.seed, 0))
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.log_tau = torch.nn.Parameter(
            torch.tensor(math.log(tc.temperature), device=self.device), requires_grad=tc.learn_temperature
        )
        groups = _param_groups(self.model, tc)
        if tc.learn_temperature:
            groups.append({"params": [self.log_tau], "weight_decay": 0.0})
        # A list of betas survives the JSON round trip of the checkpoint's param groups.
        self.opt = AdamWRowWiseAdagrad(groups, lr=tc.lr, betas=[0.9, 0.98])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(tc, self.total_steps))
        self.negatives = build_negatives(tc, data, tc.batch_tokens)
        # The fused loss needs every positive among the candidates: true when in-batch negatives are used.
        self._fast_loss = "in_batch" in tc.negatives and tc.accidental_hits and tc.fused_loss
        self.gen = torch.Generator().manual_seed(tc.seed)
        self.state = {
            "epoch": 0,
            "batch": 0,
            "step": 0,
            "best": -1.0,
            "best_epoch": -1,
            "bad_evals": 0,
            "train_seconds": 0.0,
            "examples": 0,
            "done": False,
            "stop_reason": None,  # "time_budget" | "early_stop" once done
            "dataset": run.dataset_fingerprint(data),
        }
        if resume:
            self._restore(self.out / "checkpoints" / "last")
        elif overwrite:
            run.clear_run_dir(self.out)  # only now: a refused config must not cost the old run
        self.out.mkdir(parents=True, exist_ok=True)
        cfgmod.save(cfg, self.out / "config.json")
        (self.out / "data_path.txt").write_text(str(Path(data.root).resolve()) + "\n")

    def _check_examples(self) -> None:
        """Training targets must exist, and validation targets too when validation runs (eval_every > 0)."""
        tc, data = self.cfg.train, self.data
        if len(self.windows) == 0:
            held = f" after holding out {tc.holdout_users:.0%} of users" if tc.holdout_users else ""
            why = (
                " (leave-last-out keeps each user's last two events for validation and test)"
                if tc.split == "loo"
                else ""
            )
            raise DataError(
                f"dataset {data.root} has no training events under split {tc.split!r}{held}; prepare a log with "
                f"more events{why}" + (", or lower train.holdout_users" if tc.holdout_users else "")
            )
        if tc.eval_every and len(data.eval_targets(tc.split, "valid")[0]) == 0:
            other = "time" if tc.split == "loo" else "loo"
            n_other = len(data.eval_targets(other, "valid")[0])
            alt = f'set train.split = "{other}" ({n_other:,} validation users), or ' if n_other else ""
            why = " (leave-last-out needs users with 3+ events)" if tc.split == "loo" else ""
            raise DataError(
                f"dataset {data.root} has no validation targets under split {tc.split!r}{why}; {alt}turn validation "
                "and early stopping off with train.eval_every = 0"
            )

    # --- checkpoints -----------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        t = {"torch_rng": torch.get_rng_state(), "sampler_rng": self.gen.get_state(), "log_tau": self.log_tau.data}
        for i, s in enumerate(self.negatives.sources):
            freq = getattr(s, "frequency", None)
            if freq is not None:
                t.update({f"freq{i}.{k}": v for k, v in freq.state_dict().items()})
        return t

    def save(self, name: str) -> str:
        return ckpt.save(
            self.out / "checkpoints" / name,
            self.model,
            cfgmod.to_dict(self.cfg),
            dict(self.state),
            self.opt if name == "last" else None,
            self._tensors(),
        )

    def _restore(self, path: Path) -> None:
        weights, config, state, extra = ckpt.load(path)
        saved = cfgmod.from_dict(RunConfig, config, where=f"{path}/config.json")
        changed = run.check_resumable(cfgmod.to_dict(saved), cfgmod.to_dict(self.cfg), self.out)
        for key, (old, new) in changed.items():
            log.info("resume: %s %r -> %r", key, old, new)
        if "train.epochs" in changed:
            log.warning(
                "resume with epochs %d -> %d: the learning-rate schedule is stretched to the new length from here on, "
                "so the result differs from a run trained straight for %d epochs",
                saved.train.epochs,
                self.cfg.train.epochs,
                self.cfg.train.epochs,
            )
        need = [k for k in ("extra.torch_rng", "extra.sampler_rng", "extra.log_tau") if k not in extra]
        need += [k for k in ("epoch", "batch", "step", "best", "bad_evals", "param_groups") if k not in state]
        if need:
            raise ckpt.CheckpointError(
                f"checkpoint {path} cannot be resumed: it lacks {need} (optim.safetensors / state.json missing or "
                "incomplete); restore the files, or start again with --overwrite"
            )
        try:
            self.model.load_state_dict(weights)
            ckpt.restore_optimizer(self.opt, extra, state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(f"checkpoint {path} does not fit this model ({exc}); retrain") from exc
        self.state.update({k: v for k, v in state.items() if k not in ("param_groups", "model_version")})
        self.sched.last_epoch = self.state["step"]  # the optimizer's param_groups already carry the lr
        torch.set_rng_state(extra["extra.torch_rng"])
        self.gen.set_state(extra["extra.sampler_rng"])
        self.log_tau.data.copy_(extra["extra.log_tau"])
        for i, s in enumerate(self.negatives.sources):
            freq = getattr(s, "frequency", None)
            if freq is not None:
                freq.load_state_dict(
                    {k.split(".", 2)[2]: v for k, v in extra.items() if k.startswith(f"extra.freq{i}.")}
                )
        log.info(
            "resumed from %s at epoch %d, batch %d (step %d)",
            path,
            self.state["epoch"],
            self.state["batch"],
            self.state["step"],
        )
        if self.state["done"]:
            self._reopen(saved.train)

    def _reopen(self, old: TrainConfig) -> None:
        """A run stopped by its time budget or by early stopping continues when the new config allows more."""
        tc, st = self.cfg.train, self.state
        reason = st.get("stop_reason") or (
            "time_budget" if old.time_budget_s and st["train_seconds"] > old.time_budget_s else "early_stop"
        )
        if reason == "time_budget":
            more = not tc.time_budget_s or tc.time_budget_s > st["train_seconds"]
            why = f"time budget {old.time_budget_s:g} s -> {tc.time_budget_s:g} s (0 = none)"
            how = f"raise --time-budget above the {st['train_seconds']:.0f} s trained so far"
        else:
            more = tc.epochs > old.epochs or tc.patience > old.patience
            why = f"epochs {old.epochs} -> {tc.epochs}, patience {old.patience} -> {tc.patience}"
            how = f"raise --epochs above {old.epochs} (or train.patience above {old.patience})"
        if not more:
            log.warning("run %s had stopped (%s) and nothing was raised; to continue it, %s", self.out, reason, how)
            return
        log.info("run %s had stopped (%s); %s: continuing", self.out, reason, why)
        st.update(done=False, stop_reason=None)
        if reason == "early_stop":
            st["bad_evals"] = 0  # patience starts over

    # --- one step --------------------------------------------------------------------------------------
    def _queries_and_targets(self, inputs, rows: torch.Tensor, pseudo: PseudoBatch | None = None):
        """User vector for every valid target position: ([T, D], target event rows int64 [T])."""
        if pseudo is not None:  # hybrid: state at the drawn snapshot + online head over the context
            raw, ev = self.model.encode_raw_and_tokens(inputs)  # [B, L, D], [B, S, D]
            b = pseudo.batch.to(raw.device)
            state = self.model.states_at(raw, b, pseudo.n_events.to(raw.device))
            tokens = ev[b[:, None], pseudo.ctx_pos.to(raw.device)]  # [T, C, D]: the context events' tokens
            q = self.model.encode_online(state, pseudo.ctx.to(raw.device), (tokens, pseudo.ctx_len.to(raw.device)))
            return q, rows[rows >= 0]
        seq = self.model.encode_sequence(inputs)  # [B, L, D]
        off = 1 if self.cfg.model.user_token else 0
        B, S = rows.shape
        j = torch.arange(S, device=rows.device)
        valid = rows >= 0
        if off == 0:
            valid &= j[None, :] >= 1  # without a user token the first event has no history at all
        out_pos = (j + off - 1).clamp_min(0).expand(B, S)
        q = seq[torch.arange(B, device=seq.device)[:, None].expand(B, S)[valid], out_pos[valid]]
        return q, rows[valid]

    def _bidirectional(self, inputs, rows: torch.Tensor):
        """Bidirectional encoder: the history is all but the last event, the last event is the target."""
        length = inputs.length
        last = (length - 1).clamp_min(0)
        target = rows[torch.arange(len(rows)), last]
        inputs.length = last
        keep = torch.arange(rows.shape[1])[None, :] < last[:, None]
        for t in (inputs.history.item, inputs.history.author, inputs.history.feat):
            t.mul_(keep[..., None])
        inputs.actions.mul_(keep[..., None])
        inputs.surface.mul_(keep)
        q = self.model.encode_user(inputs.to(self.device))
        ok = (last > 0) if not self.cfg.model.user_token else torch.ones_like(last, dtype=torch.bool)
        return q[ok.to(q.device)], target[ok]

    def compute_loss(self, inputs, rows: torch.Tensor, pseudo: PseudoBatch | None = None, fused: bool | None = None):
        """Loss of one batch: (loss, positive item ids [T], number of candidates)."""
        tc = self.cfg.train
        fused = self._fast_loss if fused is None else fused
        use_amp = tc.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            if self.cfg.model.causal:
                q, trow = self._queries_and_targets(inputs.to(self.device), rows.to(self.device), pseudo)
            else:
                q, trow = self._bidirectional(inputs, rows)
            trow_np = trow.cpu().numpy()
            pos_items = torch.from_numpy(self.data.event_item[trow_np].astype(np.int64))
            neg_items = self.negatives.sample(pos_items, self.gen)
            weight = torch.from_numpy(self.data.event_weight[trow_np]).to(self.device)
            weight = None if bool((weight == 1).all()) else weight
            tau = self.log_tau.exp()
            if fused:
                # Candidates already hold every positive (in-batch source): one column per item, fused loss.
                labels = torch.searchsorted(neg_items, pos_items).to(self.device)
                cand = self.model.encode_items(self.feat.items(neg_items.numpy()).to(self.device))  # [M, D]
                log_q = self.negatives.inclusion_prob(neg_items).log().to(self.device) if tc.logq != "none" else None
                loss = candidate_softmax_loss(q, cand, labels, tau, log_q, weight)
            else:
                all_items, inv = torch.unique(torch.cat([pos_items, neg_items]), return_inverse=True)
                emb = self.model.encode_items(self.feat.items(all_items.numpy()).to(self.device))  # [M', D]
                pos = emb[inv[: len(pos_items)].to(self.device)]
                neg = emb[inv[len(pos_items) :].to(self.device)]
                log_q_pos = log_q_neg = None
                if tc.logq != "none":
                    log_q_pos = self.negatives.inclusion_prob(pos_items).log().to(self.device)
                    log_q_neg = self.negatives.inclusion_prob(neg_items).log().to(self.device)
                loss = sampled_softmax_loss(
                    q,
                    pos,
                    pos_items.to(self.device),
                    neg,
                    neg_items.to(self.device),
                    tau,
                    log_q_pos,
                    log_q_neg,
                    tc.accidental_hits,
                    weight,
                )
        return loss, pos_items, len(neg_items)

    def step(self, inputs, rows: torch.Tensor, pseudo: PseudoBatch | None = None) -> dict[str, float]:
        tc = self.cfg.train
        loss, pos_items, n_neg = self.compute_loss(inputs, rows, pseudo)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip) if tc.grad_clip else 0.0
        self.opt.step()
        self.sched.step()
        self.negatives.observe(pos_items)
        if tc.learn_temperature:
            with torch.no_grad():
                self.log_tau.clamp_(math.log(0.01), math.log(1.0))
        return {"loss": float(loss.detach()), "targets": len(pos_items), "negatives": n_neg, "grad_norm": float(gnorm)}

    # --- the loop --------------------------------------------------------------------------------------
    def fit(self, stop_after_steps: int | None = None, progress: bool = True) -> dict:
        tc = self.cfg.train
        metrics_path = self.out / "metrics.csv"
        new_file = not metrics_path.exists()
        mf = open(metrics_path, "a", newline="")
        writer = csv.writer(mf)
        if new_file:
            writer.writerow(["time", "epoch", "step", "kind", "name", "value"])
        tb = _tensorboard(self.out)
        self.model.train()
        try:
            while self.state["epoch"] < tc.epochs and not self.state["done"]:
                epoch = self.state["epoch"]
                batches = plan_epoch(self.lengths, tc.batch_tokens, tc.seed, epoch)
                first = self.state["batch"]
                ds = WindowBatches(self.feat, self.windows, batches[first:], self.pseudo, epoch, first)
                # Own generator: the DataLoader would otherwise draw its worker seed from the global RNG,
                # shifting dropout masks between an uninterrupted and a resumed run.
                loader = DataLoader(
                    ds,
                    batch_size=None,
                    shuffle=False,
                    num_workers=tc.num_workers,
                    generator=torch.Generator().manual_seed(tc.seed + epoch),
                )
                bar = tqdm(
                    loader,
                    total=len(ds),
                    desc=f"epoch {epoch + 1}/{tc.epochs}",
                    disable=not progress,
                    dynamic_ncols=True,
                )
                t_epoch, n_epoch = time.perf_counter(), 0
                for inputs, rows, pseudo in bar:
                    t0 = time.perf_counter()
                    stats = self.step(inputs, rows, pseudo)
                    dt = time.perf_counter() - t0
                    self.state["train_seconds"] += dt
                    self.state["examples"] += stats["targets"]
                    self.state["batch"] += 1
                    self.state["step"] += 1
                    n_epoch += stats["targets"]
                    rate = n_epoch / max(1e-9, time.perf_counter() - t_epoch)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", ex_s=f"{rate:,.0f}")
                    if self.state["step"] % tc.log_every == 0:
                        for k in ("loss", "grad_norm"):
                            writer.writerow([round(time.time(), 1), epoch, self.state["step"], "train", k, stats[k]])
                            if tb:
                                tb.add_scalar(f"train/{k}", stats[k], self.state["step"])
                        writer.writerow(
                            [
                                round(time.time(), 1),
                                epoch,
                                self.state["step"],
                                "train",
                                "examples_per_s",
                                round(rate, 1),
                            ]
                        )
                    if tc.checkpoint_every and self.state["step"] % tc.checkpoint_every == 0:
                        self.save("last")
                    if stop_after_steps is not None and self.state["step"] >= stop_after_steps:
                        raise StopTraining
                    if tc.time_budget_s and self.state["train_seconds"] > tc.time_budget_s:
                        log.info("time budget of %.0fs reached", tc.time_budget_s)
                        self.state.update(done=True, stop_reason="time_budget")
                        break
                epoch_rate = n_epoch / max(1e-9, time.perf_counter() - t_epoch)
                if not self.state["done"]:
                    self.state["epoch"] += 1
                    self.state["batch"] = 0
                if tc.eval_every and (self.state["epoch"] % tc.eval_every == 0 or self.state["done"]):
                    self._validate(writer, tb, epoch, epoch_rate)
                self.save("last")
                mf.flush()
        except StopTraining:
            pass
        finally:
            mf.close()
            if tb:
                tb.close()
        summary = {
            **self.state,
            "steps_per_epoch": self.steps_per_epoch,
            "examples_per_s": self.state["examples"] / max(1e-9, self.state["train_seconds"]),
        }
        (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _validate(self, writer, tb, epoch: int, epoch_rate: float) -> None:
        tc = self.cfg.train
        m = evaluate_model(
            self.model,
            self.feat,
            tc.split,
            "valid",
            ks=(10, 100),
            max_users=tc.eval_users or None,
            device=self.device,
            seed=tc.seed,
        )
        score = m[PRIMARY]
        for k, v in m.items():
            writer.writerow([round(time.time(), 1), epoch, self.state["step"], "valid", k, v])
            if tb:
                tb.add_scalar(f"valid/{k}", v, self.state["step"])
        log.info(
            "epoch %d: valid %s=%.4f hr@10=%.4f (%.0f examples/s)",
            self.state["epoch"],
            PRIMARY,
            score,
            m["filtered/hr@10"],
            epoch_rate,
        )
        if score > self.state["best"]:
            self.state.update(best=score, best_epoch=self.state["epoch"], bad_evals=0)
            self.save("best")
        else:
            self.state["bad_evals"] += 1
            if self.state["bad_evals"] >= tc.patience:
                log.info("early stop: no improvement of %s for %d evaluations", PRIMARY, tc.patience)
                self.state.update(done=True, stop_reason="early_stop")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: `pip install tensorboard`
        return None
    return SummaryWriter(str(out / "tb"))


def resume_config(out: str | Path, given: RunConfig | None = None) -> RunConfig:
    """The config to resume run ``out`` with: the one saved with its last checkpoint, or ``given`` when that
    differs from it only in ``run.RESUMABLE`` fields (anything else is a ConfigError naming the fields)."""
    out = Path(out)
    run.check_run_dir(out, resume=True, overwrite=False)
    path = out / "checkpoints" / "last"
    saved = cfgmod.from_dict(RunConfig, ckpt.load_config(path), where=f"{path}/config.json")
    if given is None:
        return saved
    run.check_resumable(cfgmod.to_dict(saved), cfgmod.to_dict(given), out)
    return given


def load_model(run_or_ckpt: str | Path, which: str = "best", device: str = "cpu") -> tuple[TwoTower, RunConfig, str]:
    """Load a trained model: (model in eval mode, run config, model version id)."""
    p = Path(run_or_ckpt)
    if ckpt.resolve(p) is None:
        raise run.no_such_run(p)
    if (p / "checkpoints").is_dir():
        p = ckpt.resolve(p / "checkpoints" / which) or p / "checkpoints" / "last"
    weights, config, state, _ = ckpt.load(p)
    cfg = cfgmod.from_dict(RunConfig, config, where=f"{p}/config.json")
    model = TwoTower(cfg.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # weights of another shape than the saved config says
        raise ckpt.CheckpointError(f"checkpoint {p} does not match its config.json ({exc}); retrain") from exc
    return model.to(device).eval(), cfg, state["model_version"]
