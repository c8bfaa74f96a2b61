"""Run configuration: :class:`TrainConfig` (optimisation, negatives, bookkeeping) and :class:`RunConfig`
(model + train), the dataclasses a config file and every checkpoint's ``config.json`` hold.

Every failure of a range check is a ConfigError naming the field, the value and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..config import check, check_float, check_int
from ..layout import PROTOCOLS
from ..model.config import ModelConfig

NEGATIVES = ("in_batch", "uniform", "full")
EMBEDDING_OPTIMIZERS = ("adamw", "rowwise_adagrad")
LOGQ = ("streaming", "exact", "none")
LOSSES = ("softmax", "bpr", "hinge", "nce")  # twotower.train.objectives
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
    loss: str = "softmax"  # softmax | bpr | hinge | nce (twotower.train.objectives), over the same logits
    margin: float = 1.0  # the hinge loss's margin, in logit units (score / temperature - log q)
    # Mined hard negatives (`twotower mine-negatives`): the mined directory, the model version it must have
    # been mined with ("" = whatever it says; the run records it), and the staged schedule: they join the
    # shared candidates once this fraction of the run (of the time budget, else of the epochs) is done.
    hard_negatives: str = ""
    hard_negatives_model: str = ""
    hard_start: float = 0.0
    # Explicit negative feedback (twotower.train.feedback): events with these actions are not training
    # positives (unless negatives_as_positives) and are hard negatives of the same user's targets within
    # negative_window events (0 = not used as negatives), at most negative_count per target.
    negative_actions: list[str] = field(default_factory=list)
    negatives_as_positives: bool = False
    negative_window: int = 0
    negative_count: int = 8
    # Item prior (train/logits.item_prior): this weight times each item's smoothed log-odds of being a negative
    # event is added to its training logits, so the served scores come out lowered by it (0 = off).
    dislike_prior: float = 0.0
    # Matryoshka: the same loss on these prefixes of both towers' vectors (each < model.dim), with these
    # weights (empty: 1 each); the full width always takes the main loss.
    matryoshka_dims: list[int] = field(default_factory=list)
    matryoshka_weights: list[float] = field(default_factory=list)
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
    # With a cosine that ends at the time budget (lr_follows_budget) evaluations without gain count towards
    # patience only once this fraction of the budget is spent (before it the rate is high and validation noisy).
    patience_from: float = 0.5
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = none by step count)
    # Seconds between mid-epoch checkpoints: a kill loses at most this much training (0 = off). 30 s, not 60: a run
    # killed a minute after it was started (imports and data loading included) must have one to resume from.
    checkpoint_every_s: float = 30.0
    time_budget_s: float = 0.0  # stop (after a checkpoint) once training time exceeds this (0 = no limit)
    # With a time budget the cosine ends at whichever comes first, the planned steps or the budget (a run cut
    # by its budget then ends at the low learning rate; False: the cosine over the planned steps only).
    lr_follows_budget: bool = True
    progress_every_s: float = 30.0  # a progress line on the log this often when the progress bar is off
    log_every: int = 20
    # Hybrid towers (model.online_head): pseudo-context augmentation, see train/pseudo.py.
    max_lag: int = 64  # snapshot drawn 0..max_lag events before each target
    no_state_prob: float = 0.05  # drop the state (cold-start / fallback path)
    subject_prob: float = 0.2  # the previous event's item as the request's subject item
    holdout_users: float = 0.0  # fraction of users kept out of training entirely (cold-start evaluation)
    # Share of training requests with the ``strict`` protocol's request features (time = the last event's,
    # surface unknown), so a strict evaluation and a request whose time is unknown are in the training data.
    strict_request_prob: float = 0.5
    # Hybrid towers: weight of the encoder's own loss (its unsplit query at every position; 0 = off) and the
    # share of targets the online head trains on. The encoder then learns at the unsplit tower's pace and the
    # head, ~60 % of a step's cost at 1.0, runs on a sample.
    encoder_loss_weight: float = 0.0
    head_fraction: float = 1.0
    # Share of head targets drawn with a fresh state and no context (lag 0): the serving case right after a
    # refresh and the strict protocol's; the U{0..max_lag} draw alone gives it 1 in max_lag + 1.
    fresh_prob: float = 0.0
    eval_protocol: str = "strict"  # protocol of the validation that picks the best checkpoint

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
        check(self.loss in LOSSES, "loss", self.loss, f"use one of {LOSSES}")
        check(self.eval_protocol in PROTOCOLS, "eval_protocol", self.eval_protocol, f"use one of {PROTOCOLS}")
        check(self.split in ("loo", "time"), "split", self.split, "use 'loo' (leave-last-out) or 'time'")
        check(DEVICE.fullmatch(self.device) is not None, "device", self.device, "use cpu, cuda, cuda:N or mps")
        for name in ("epochs", "batch_tokens", "num_uniform", "patience", "log_every"):
            check_int(self, name, 1)
        for name in ("warmup_steps", "seed", "num_workers", "threads", "eval_every", "eval_users", "checkpoint_every"):
            check_int(self, name, 0)
        check_int(self, "max_lag", 0)
        for name in ("lr", "embedding_lr", "temperature"):
            check_float(self, name, 0.0, lo_open=True)
        for name in ("weight_decay", "grad_clip", "time_budget_s", "checkpoint_every_s", "progress_every_s"):
            check_float(self, name, 0.0)
        check_float(self, "encoder_loss_weight", 0.0)
        check_float(self, "margin", 0.0)
        check_float(self, "patience_from", 0.0, 1.0)
        check_float(self, "hard_start", 0.0, 1.0)
        check(
            isinstance(self.negative_actions, list) and all(isinstance(a, str) for a in self.negative_actions),
            "negative_actions",
            self.negative_actions,
            'give a list of action names, e.g. negative_actions = ["disliked"]',
        )
        check(
            isinstance(self.matryoshka_dims, list)
            and all(isinstance(d, int) and d >= 1 for d in self.matryoshka_dims)
            and len(set(self.matryoshka_dims)) == len(self.matryoshka_dims),
            "matryoshka_dims",
            self.matryoshka_dims,
            "give distinct prefix widths >= 1, e.g. matryoshka_dims = [16, 32]",
        )
        check(
            isinstance(self.matryoshka_weights, list)
            and len(self.matryoshka_weights) in (0, len(self.matryoshka_dims))
            and all(isinstance(w, (int, float)) and w >= 0 for w in self.matryoshka_weights),
            "matryoshka_weights",
            self.matryoshka_weights,
            "give one weight >= 0 per matryoshka_dims entry, or none (1 each)",
        )
        check_float(self, "dislike_prior", 0.0)
        check(
            not self.dislike_prior or bool(self.negative_actions),
            "dislike_prior",
            self.dislike_prior,
            'the prior is the rate of negative events: name their actions too, e.g. negative_actions = ["disliked"]',
        )
        check_int(self, "negative_window", 0)
        check_int(self, "negative_count", 1)
        check_float(self, "head_fraction", 0.0, 1.0, lo_open=True)
        for name in ("min_lr_ratio", "no_state_prob", "subject_prob", "strict_request_prob", "fresh_prob"):
            check_float(self, name, 0.0, 1.0)
        check_float(self, "logq_alpha", 0.0, 1.0, lo_open=True)
        check_float(self, "holdout_users", 0.0, 1.0, hi_open=True)


@dataclass
class RunConfig:
    """The whole run: ``[model]`` and ``[train]`` tables of a config file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
