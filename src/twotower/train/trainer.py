"""The training loop: window batches -> training queries -> retrieval task loss -> AdamW; validation,
checkpoints, metrics, early stopping.

One causal forward pass over a window yields a user vector for every prefix, so every position is a training
example (history strictly before its target) without materialising copies (``TwoTower.training_queries``).
What turns queries into a loss (temperature, negatives, logQ, ...) is the :class:`RetrievalTask`'s business.

The loop keeps no global state outside the checkpoint: (seed, epoch, batch index) determines the data order,
RNG states and the task's state are saved, and ``resume=True`` continues bit for bit on CPU, from an epoch
end or from a mid-epoch checkpoint (every ``checkpoint_every_s`` seconds and/or ``checkpoint_every`` steps).
Under ``torchrun`` the same loop is data-parallel (:mod:`.distributed`); ``state["batch"]`` counts the epoch's
batches done on all ranks, so a checkpoint resumes under another world size.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import config as cfgmod
from ..data.dataset import SequenceData
from ..errors import CheckpointError, ConfigError
from ..evaluate import PRIMARY, evaluate_model
from ..features import Featurizer, UserInputs
from ..model import TwoTower
from ..model import checkpoint as ckpt_read
from . import checkpoint as ckpt
from . import distributed, run
from .batches import WindowBatches, plan_epoch, training_windows
from .config import RunConfig
from .feedback import negative_events
from .hard_negatives import mined_for
from .metrics_log import MetricsLog
from .params import build_optimizer
from .pseudo import PseudoBatch, PseudoContext
from .task import Targets, TaskOutput, build_task, legacy_task_state, targets_of

log = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised by ``stop_after_steps`` (tests use it to simulate a kill)."""


#: What rank 0 decides after a validation and every rank follows.
_DECISIONS = ("best", "best_epoch", "bad_evals", "done", "stop_reason")


class Trainer:
    """Owns model, task, optimizer and the run directory. ``fit()`` trains; ``resume=True`` continues."""

    def __init__(
        self,
        data: SequenceData,
        cfg: RunConfig,
        out: str | Path,
        resume: bool = False,
        overwrite: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``resume``: continue ``out``'s last checkpoint (``cfg`` may differ from the saved config only in
        ``run.RESUMABLE`` fields; see ``run.resume_config``). ``overwrite``: discard the run already in ``out``.
        Without either, ``out`` must be new or empty. ``clock``: seconds, for the checkpoint cadence."""
        self.data, self.cfg, self.out, self.clock = data, cfg, Path(out), clock
        tc, mc = cfg.train, cfg.model
        self.dist = distributed.from_env(tc.device)  # None: one process
        self.main = self.dist is None or self.dist.main  # rank 0 alone checks and writes the run directory
        self.world = 1 if self.dist is None else self.dist.world
        if self.main:
            run.check_run_dir(self.out, resume, overwrite, data_root=data.root)
        if resume:
            run.check_same_dataset(self.out, data)
        mc.num_actions, mc.num_surfaces = data.num_actions, data.num_surfaces
        mc.text_dim = data.text_dim if mc.text else 0
        mc.codebook = (data.codebook_version or "") if mc.semantic_ids else ""
        run.check_model_fits(mc, data)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = torch.device(tc.device)
        if self.dist is not None and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "train.device = 'cuda' but CUDA is not available; set train.device = 'cpu' (--device cpu)"
            )
        torch.manual_seed(tc.seed)
        self.model = TwoTower(mc).to(self.device)
        self.feat = Featurizer(data, mc)
        self.windows = training_windows(data, tc.split, mc.max_len, tc.holdout_users)  # int64 [W, 3]
        run.check_examples(data, self.windows, tc)
        self.pseudo = (
            PseudoContext(
                self.feat,
                tc.max_lag,
                tc.no_state_prob,
                tc.subject_prob,
                tc.seed,
                tc.strict_request_prob,
                tc.head_fraction,
                tc.fresh_prob,
            )
            if mc.online_head
            else None
        )
        self.lengths = self.windows[:, 2] - self.windows[:, 1]
        self.batches_per_epoch = len(plan_epoch(self.lengths, tc.batch_tokens, tc.seed, 0))
        self.steps_per_epoch = max(1, self.batches_per_epoch // self.world)  # each step: one batch per rank
        self.total_steps = self.steps_per_epoch * tc.epochs
        too_wide = [d for d in tc.matryoshka_dims if d >= mc.dim]
        if too_wide:
            raise ConfigError(
                f"train.matryoshka_dims {too_wide} are not prefixes of the {mc.dim}-dim vectors (model.dim): "
                f"use widths below {mc.dim}"
            )
        self.task = build_task(tc, data, mined_for(tc, run.dataset_fingerprint(data)), mc.similarity).to(self.device)
        # explicit negatives are no training positives (weight 0) unless asked; None: every event is one
        negative = negative_events(data, tc.negative_actions)
        self.not_positive = negative if negative.any() and not tc.negatives_as_positives else None
        by_budget = bool(tc.time_budget_s) and tc.lr_follows_budget
        self.opt, self.sched = build_optimizer(
            self.model, self.task, tc, self.total_steps, self._budget_used if by_budget else None
        )
        self.state = {
            "epoch": 0,
            "batch": 0,  # batches of the current epoch done
            "step": 0,
            "best": -1.0,
            "best_epoch": -1,
            "bad_evals": 0,
            "train_seconds": 0.0,
            "examples": 0,
            "done": False,
            "stop_reason": None,  # "time_budget" | "early_stop" once done
            "dataset": run.dataset_fingerprint(data),
            "metrics_rows": 0,  # rows of metrics.csv this state has seen (a resume drops later ones)
        }
        self.metrics: MetricsLog | None = None
        self._saved_at = 0.0  # clock() at the last save of `last`
        self._said_at = 0.0  # time.monotonic() at the last progress line
        if resume:
            self._restore(self.out / "checkpoints" / "last")
        elif overwrite and self.main:
            run.clear_run_dir(self.out)  # only now: a refused config must not cost the old run
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfgmod.save(cfg, self.out / "config.json")
            (self.out / "data_path.txt").write_text(str(Path(data.root).resolve()) + "\n")
        self.ddp: DistributedDataParallel | None = None
        if self.dist is not None:
            # after the restore: DDP starts every rank from rank 0's parameters (they are equal anyway)
            ids = [self.device.index] if self.device.type == "cuda" else None
            step = distributed.LossModule(self.model, self.task, self.loss, self.dist)
            self.ddp = DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)
            self.dist.barrier()  # rank 0 has set the run directory up

    def _progress(self) -> float:
        """How much of the run is done, 0..1: of the time budget when there is one, else of the epochs."""
        tc = self.cfg.train
        if tc.time_budget_s:
            return self._budget_used()
        return (self.state["epoch"] + self.state["batch"] / max(1, self.batches_per_epoch)) / max(1, tc.epochs)

    def _budget_used(self) -> float:
        """The fraction of the time budget spent so far (the learning-rate schedule reads it)."""
        state = getattr(self, "state", None)  # the scheduler's first call comes before the state exists
        return state["train_seconds"] / self.cfg.train.time_budget_s if state else 0.0

    # --- one step ----------------------------------------------------------------------------------------
    def loss(self, inputs: UserInputs, rows: torch.Tensor, pseudo: PseudoBatch | None = None, share=None):
        """The task's loss on a window batch (inputs [B, S], target rows int64 [B, S], -1 = padding):
        (TaskOutput, Targets, the loss to minimise). ``share`` (under torchrun: Targets -> this rank's share of
        the global batch's, :meth:`~.distributed.LossModule.share`) weights each mean by its own targets' share,
        so DDP's averaged gradient is the global batch's: the hybrid's head loss (over a sample) and encoder
        loss are means over different targets. Without ``share`` the loss to minimise is ``out.loss``."""
        dev = self.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.cfg.train.amp and dev.type == "cuda"):
            snapshots = None if pseudo is None else pseudo.to(dev)
            weight = self.cfg.train.encoder_loss_weight
            if snapshots is not None and weight > 0:  # hybrid + the encoder's own loss, from one encoder pass
                (qh, rh), (qe, re) = self.model.hybrid_training_queries(inputs.to(dev), rows.to(dev), snapshots)
                head_targets, enc_targets = self._targets(rh), self._targets(re)
                head, enc = self.task(qh, head_targets), self.task(qe, enc_targets)
                loss = head.loss + weight * enc.loss
                terms = {**head.terms, "head": head.loss.detach(), "encoder": enc.loss.detach()}
                out = TaskOutput(loss, head.candidates + enc.candidates, terms)
                if share is None:
                    return out, enc_targets, loss
                return out, enc_targets, head.loss * share(head_targets) + weight * enc.loss * share(enc_targets)
            queries, target_rows = self.model.training_queries(inputs.to(dev), rows.to(dev), snapshots)  # [T, D]
            targets = self._targets(target_rows)
            out = self.task(queries, targets)
            return out, targets, out.loss if share is None else out.loss * share(targets)

    def _targets(self, rows: torch.Tensor) -> Targets:
        """The targets of event rows ``rows`` [T]; under torchrun with every rank's positives (one gather)."""
        targets = targets_of(self.data, rows, self._encode_items, self.device, self.not_positive)
        if self.dist is not None:
            targets.everyone = self.dist.gather_ids(targets.items)
        return targets

    def _encode_items(self, ids: torch.Tensor) -> torch.Tensor:
        """Candidate tower over dense item ids int64 [M] -> [M, D]."""
        return self.model.encode_items(self.feat.items(ids.numpy()).to(self.device))

    def step(self, inputs: UserInputs, rows: torch.Tensor, pseudo: PseudoBatch | None = None) -> dict[str, float]:
        """One optimizer step on a window batch; its loss, targets, candidates and gradient norm."""
        tc = self.cfg.train
        if self.task.hard is not None:  # the staged schedule: mined negatives join at hard_start
            self.task.hard_active = self._progress() >= tc.hard_start
        if self.ddp is not None:
            loss, out, targets = self.ddp(inputs, rows, pseudo)  # this rank's share of the global batch's loss
        else:
            out, targets, loss = self.loss(inputs, rows, pseudo)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip) if tc.grad_clip else 0.0
        self.opt.step()
        self.sched.step()
        self.task.observe(targets)
        n = len(targets.items if targets.everyone is None else targets.everyone)  # every rank's targets
        return {
            "loss": float(out.loss.detach()),
            "targets": n,
            "negatives": out.candidates,
            "grad_norm": float(gnorm),
            # the loss's parts when it has several (Matryoshka prefixes, the hybrid's head and encoder)
            "terms": {k: float(v.detach()) for k, v in out.terms.items()} if len(out.terms) > 1 else {},
        }

    # --- the loop ----------------------------------------------------------------------------------------
    def fit(self, stop_after_steps: int | None = None, progress: bool = True) -> dict:
        """Train until ``epochs``, the time budget or early stopping; returns the run summary."""
        tc, st = self.cfg.train, self.state
        self.metrics = MetricsLog(self.out, st["metrics_rows"], st["step"]) if self.main else None
        progress = progress and self.main
        self._saved_at, self._said_at = self.clock(), time.monotonic()
        self.model.train()
        try:
            while st["epoch"] < tc.epochs and not st["done"]:
                epoch, first = st["epoch"], st["batch"]
                batches = plan_epoch(self.lengths, tc.batch_tokens, tc.seed, epoch)
                if self.dist is None:
                    ds = WindowBatches(self.feat, self.windows, batches[first:], self.pseudo, epoch, first)
                else:  # this rank's batch of every global step
                    mine = self.dist.shard(batches, first)
                    ds = WindowBatches(
                        self.feat, self.windows, mine, self.pseudo, epoch, first + self.dist.rank, self.world
                    )
                # Own generator: the DataLoader would otherwise draw its worker seed from the global RNG,
                # shifting dropout masks between an uninterrupted and a resumed run.
                gen = torch.Generator().manual_seed(tc.seed + epoch)
                loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=tc.num_workers, generator=gen)
                desc = f"epoch {epoch + 1}/{tc.epochs}"
                bar = tqdm(loader, total=len(ds), desc=desc, disable=not progress, dynamic_ncols=True)
                t_epoch, n_epoch = time.perf_counter(), 0
                t0 = time.perf_counter()  # training time = batch preparation + step (checkpoints excluded)
                for inputs, rows, pseudo in bar:
                    stats = self.step(inputs, rows, pseudo)
                    t1 = time.perf_counter()
                    st["train_seconds"] += t1 - t0
                    if self.dist is not None:  # the slowest rank's clock: all stop at the same step
                        st["train_seconds"] = self.dist.most(st["train_seconds"])
                    st["examples"] += stats["targets"]
                    st["batch"] += self.world
                    st["step"] += 1
                    n_epoch += stats["targets"]
                    rate = n_epoch / max(1e-9, time.perf_counter() - t_epoch)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", ex_s=f"{rate:,.0f}")
                    if self.metrics is not None and st["step"] % tc.log_every == 0:
                        for name, value in (("loss", stats["loss"]), ("grad_norm", stats["grad_norm"])):
                            self.metrics.scalar(epoch, st["step"], "train", name, value)
                        for name, value in stats["terms"].items():
                            self.metrics.scalar(epoch, st["step"], "train", f"loss/{name}", value)
                        self.metrics.scalar(epoch, st["step"], "train", "examples_per_s", round(rate, 1))
                    if not progress and self.main:
                        self._progress_line(epoch, stats["loss"], rate)
                    if self.main and self._checkpoint_due():
                        self.save("last")
                    t0 = time.perf_counter()
                    if stop_after_steps is not None and st["step"] >= stop_after_steps:
                        raise StopTraining
                    if tc.time_budget_s and st["train_seconds"] > tc.time_budget_s:
                        log.info("time budget of %.0fs reached", tc.time_budget_s)
                        st.update(done=True, stop_reason="time_budget")
                        break
                epoch_rate = n_epoch / max(1e-9, time.perf_counter() - t_epoch)
                if not st["done"]:
                    st["epoch"] += 1
                    st["batch"] = 0
                if tc.eval_every and (st["epoch"] % tc.eval_every == 0 or st["done"]):
                    if self.main:
                        self._validate(epoch, epoch_rate)
                    if self.dist is not None:  # rank 0's decisions (best, early stop) on every rank
                        st.update(self.dist.broadcast({k: st[k] for k in _DECISIONS}))
                if self.main:
                    self.save("last")
        except StopTraining:
            pass
        finally:
            if self.metrics is not None:
                self.metrics.close()
        summary = {
            **st,
            "steps_per_epoch": self.steps_per_epoch,
            "examples_per_s": st["examples"] / max(1e-9, st["train_seconds"]),
        }
        if self.main:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _progress_line(self, epoch: int, loss: float, rate: float) -> None:
        """Without a progress bar: one log line every ``progress_every_s`` seconds (a long run is never silent)."""
        tc, st = self.cfg.train, self.state
        now = time.monotonic()  # wall time, not ``self.clock`` (whose reads pace the checkpoints)
        if not tc.progress_every_s or now - self._said_at < tc.progress_every_s:
            return
        self._said_at = now
        budget = f" of {tc.time_budget_s:.0f} s budget" if tc.time_budget_s else ""
        log.info(
            "epoch %d/%d, batch %d/%d: loss %.3f, %s examples/s, trained %.0f s%s, lr %.2e",
            epoch + 1,
            tc.epochs,
            st["batch"],
            self.batches_per_epoch,
            loss,
            f"{rate:,.0f}",
            st["train_seconds"],
            budget,
            self.opt.param_groups[0]["lr"],
        )

    def _checkpoint_due(self) -> bool:
        """A mid-epoch checkpoint every ``checkpoint_every`` steps and/or ``checkpoint_every_s`` seconds."""
        tc = self.cfg.train
        by_steps = bool(tc.checkpoint_every) and self.state["step"] % tc.checkpoint_every == 0
        by_time = bool(tc.checkpoint_every_s) and self.clock() - self._saved_at >= tc.checkpoint_every_s
        return by_steps or by_time

    def _validate(self, epoch: int, epoch_rate: float) -> None:
        """Evaluate on the validation split; keep the best checkpoint; count evaluations without improvement."""
        tc, st = self.cfg.train, self.state
        m = evaluate_model(self.model, self.feat, tc.split, "valid", ks=(10, 100), max_users=tc.eval_users or None,
                           device=self.device, seed=tc.seed, protocol=tc.eval_protocol)  # fmt: skip
        for name, value in m.items():
            self.metrics.scalar(epoch, st["step"], "valid", name, value)
        score = m[PRIMARY]
        log.info(
            "epoch %d: valid %s=%.4f hr@10=%.4f (%.0f examples/s)",
            st["epoch"],
            PRIMARY,
            score,
            m["filtered/hr@10"],
            epoch_rate,
        )
        if score > st["best"]:
            st.update(best=score, best_epoch=st["epoch"], bad_evals=0)
            self.save("best")
        elif self._patience_counts():
            st["bad_evals"] += 1
            if st["bad_evals"] >= tc.patience:
                log.info("early stop: no improvement of %s for %d evaluations", PRIMARY, tc.patience)
                st.update(done=True, stop_reason="early_stop")

    def _patience_counts(self) -> bool:
        """Whether evaluations without improvement count towards early stopping yet.

        With a cosine that ends at the time budget (``lr_follows_budget``) they count once ``patience_from`` of
        the budget is spent: before that the learning rate is still high, validation is noisy, and stopping
        there threw away the low-rate phase where most of the gain comes (ML-100k, seed 2: stopped after 56 of
        120 s at test HR@10 0.124 where seeds 0 and 1 trained on to 0.177; ML-1M at 0.5: seeds 0 and 1 stopped
        after 741 of 1200 s, and seed 0 trained on reached valid HR@10 0.3316 against 0.3212). Without a budget
        they always count.
        """
        tc = self.cfg.train
        return not (tc.time_budget_s and tc.lr_follows_budget) or self._budget_used() >= tc.patience_from

    # --- checkpoints -------------------------------------------------------------------------------------
    def save(self, name: str) -> str:
        """Write checkpoint ``name`` (``last`` also holds the optimizer); returns the model version."""
        if self.metrics is not None:
            self.state["metrics_rows"] = self.metrics.rows
        tensors = {"torch_rng": torch.get_rng_state()}
        tensors.update({f"task.{k}": v for k, v in self.task.state_dict().items()})
        version = ckpt.save(
            self.out / "checkpoints" / name,
            self.model,
            cfgmod.to_dict(self.cfg),
            dict(self.state),
            self.opt if name == "last" else None,
            tensors,
        )
        if name == "last":
            self._saved_at = self.clock()
        return version

    def _restore(self, path: Path) -> None:
        weights, config, state, extra = ckpt_read.load(path)
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
        task_state = {k[len("extra.task.") :]: v for k, v in extra.items() if k.startswith("extra.task.")}
        legacy = not task_state and {"extra.log_tau", "extra.sampler_rng"} <= extra.keys()  # before the task
        need = [k for k in ("extra.torch_rng",) if k not in extra] + ([] if task_state or legacy else ["extra.task.*"])
        need += [k for k in ("epoch", "batch", "step", "best", "bad_evals", "param_groups") if k not in state]
        if need:
            raise CheckpointError(
                f"checkpoint {path} cannot be resumed: it lacks {need} (optim.safetensors / state.json missing or "
                "incomplete); restore the files, or start again with --overwrite"
            )
        try:
            self.model.load_state_dict(weights)
            self.task.load_state_dict(legacy_task_state(extra, self.task) if legacy else task_state)
            ckpt.restore_optimizer(self.opt, extra, state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this model ({exc}); retrain") from exc
        self.state.update({k: v for k, v in state.items() if k not in ("param_groups", "model_version")})
        self.state["metrics_rows"] = state.get("metrics_rows")  # None (older runs): keep every row
        self.sched.last_epoch = self.state["step"]  # the optimizer's param_groups already carry the lr
        torch.set_rng_state(extra["extra.torch_rng"])
        log.info(
            "resumed from %s at epoch %d, batch %d (step %d)",
            path,
            self.state["epoch"],
            self.state["batch"],
            self.state["step"],
        )
        if self.state["done"]:
            run.reopen(self.state, saved.train, self.cfg.train, self.out)
