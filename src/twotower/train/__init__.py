"""Training: the retrieval task (loss, negatives, temperature, logQ) and the trainer (loop, schedule,
checkpoints, metrics, early stopping), with their configs, parameter groups and run-directory rules.

Where things live: ``config`` (TrainConfig, RunConfig) · ``task`` (RetrievalTask) · ``negatives`` /
``frequency`` / ``logits`` / ``losses`` (its parts) · ``trainer`` (Trainer) · ``params`` (param groups,
optimizer, schedule) · ``batches`` / ``pseudo`` (what a step trains on) · ``checkpoint`` (writing) · ``load``
(a trained run: model + RunConfig) · ``run`` (run-directory rules, resume) · ``metrics_log`` (metrics.csv).
"""

from __future__ import annotations

import importlib
import sys
import types


class _TrainPackage(types.ModuleType):
    """This package, callable: ``twotower.train(dataset, ...)`` is the Python API's
    :func:`twotower.api.run.train` (the name is both the package and the call its users expect). The API is
    found at call time by name, so importing the training package never imports the layers above it."""

    def __call__(self, *args, **kwargs):
        return importlib.import_module("twotower.api").train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
