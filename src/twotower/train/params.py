"""Optimizer set-up: parameter groups chosen by module type, AdamW (+ row-wise Adagrad), warm-up + cosine.

Weight decay applies to the weight matrices of linear layers only. Embedding tables, norms, biases and
standalone parameters (the online head's learned no-state vector, a temperature) are not decayed: a table
row gets a gradient only when its id is in the batch, so decay would shrink rare ids toward zero between
visits, and norms/biases/standalone vectors carry scale or offset, not capacity. The rule is by module type,
never by parameter name, so a table named ``recency`` is found as surely as one named ``item_emb``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .config import TrainConfig
from .optim import AdamWRowWiseAdagrad

DECAYED_LAYERS = (nn.Linear, nn.Bilinear)  # their ``weight`` is a weight matrix


def decays(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Whether ``param``, registered as ``name`` directly on ``module``, takes weight decay."""
    return isinstance(module, DECAYED_LAYERS) and name == "weight"


def decayed_names(model: nn.Module) -> list[str]:
    """Names of the parameters of ``model`` that take weight decay, in ``named_parameters`` order."""
    owner = _owners(model)
    return [n for n, p in model.named_parameters() if decays(*owner[id(p)], p)]


def _owners(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(param) -> (the module it is registered on, its local name); shared parameters keep the first."""
    owner: dict[int, tuple[nn.Module, str]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), (module, name))
    return owner


def param_groups(model: nn.Module, cfg: TrainConfig, task: nn.Module | None = None) -> list[dict]:
    """AdamW groups ``[decayed, not decayed(, row-wise embedding tables)(, the task's trainable params)]``.

    With ``embedding_optimizer = "rowwise_adagrad"`` every ``nn.Embedding`` weight goes to a row-wise Adagrad
    group with its own learning rate. Parameters keep ``named_parameters`` order within each group.
    """
    owner = _owners(model)
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, rowwise = [], [], []
    for _, p in model.named_parameters():
        if cfg.embedding_optimizer == "rowwise_adagrad" and id(p) in tables:
            rowwise.append(p)
        elif decays(*owner[id(p)], p):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if rowwise:
        groups.append({"params": rowwise, "weight_decay": 0.0, "lr": cfg.embedding_lr, "rowwise": True})
    trainable = [p for p in task.parameters() if p.requires_grad] if task is not None else []
    if trainable:  # a learned temperature: a scalar, never decayed
        groups.append({"params": trainable, "weight_decay": 0.0})
    return groups


def lr_lambda(
    cfg: TrainConfig, total_steps: int, budget_used: Callable[[], float] | None = None
) -> Callable[[int], float]:
    """Learning-rate multiplier at ``step``: linear warm-up over ``warmup_steps``, then cosine down to
    ``min_lr_ratio`` at ``total_steps``.

    ``budget_used`` (the fraction of the time budget spent, 0..1) makes the cosine follow whichever ends first,
    the steps or the time budget: a run cut by its budget still ends at the low learning rate (where a cosine
    over the planned epochs would stop in its middle, at a high one). Without a budget it is the step cosine.
    """

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        if budget_used is not None:
            t = max(t, min(1.0, budget_used()))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def build_optimizer(
    model: nn.Module,
    task: nn.Module,
    cfg: TrainConfig,
    total_steps: int,
    budget_used: Callable[[], float] | None = None,
) -> tuple[AdamWRowWiseAdagrad, torch.optim.lr_scheduler.LambdaLR]:
    """(optimizer, per-step scheduler) for ``model`` and the ``task``'s trainable parameters
    (``budget_used``: see :func:`lr_lambda`)."""
    # A list of betas survives the JSON round trip of the checkpoint's param groups.
    opt = AdamWRowWiseAdagrad(param_groups(model, cfg, task), lr=cfg.lr, betas=[0.9, 0.98])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps, budget_used))
