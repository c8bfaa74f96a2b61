"""The loss family over one candidate set (seed 002): what a query's scores against its positive and its
negatives cost. One file per objective, each with its formula and reference.

Every objective is a pure function of the same three tensors, built by the task's logit pipeline
(``scores / τ → − log q → accidental hits removed``, :mod:`twotower.train.logits`):

* ``logits`` [T, C]: query ``t``'s corrected logit for candidate column ``c``;
* ``labels`` int64 [T]: the column of query ``t``'s positive;
* ``negative`` bool [T, C]: the columns that are negatives of query ``t`` (never its label column, never an
  accidental hit of its positive);

and returns the per-query loss [T] (the task takes the weighted mean). So a new objective is one file and one
entry in :data:`OBJECTIVES`; the negative sources, logQ and accidental-hit removal stay shared.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .bpr import bpr
from .hinge import hinge
from .nce import nce
from .softmax import softmax

Objective = Callable[..., torch.Tensor]  # (logits [T, C], labels [T], negative [T, C], margin) -> [T]

OBJECTIVES: dict[str, Objective] = {"softmax": softmax, "bpr": bpr, "hinge": hinge, "nce": nce}


def positive_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logits[t, labels[t]]`` as [T, 1]."""
    return logits.gather(1, labels[:, None])


__all__ = ["OBJECTIVES", "Objective", "bpr", "hinge", "nce", "positive_logit", "softmax"]
