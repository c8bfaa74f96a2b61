"""Load a trained run for the jobs that need its training config too (evaluate, export, refresh).

The service needs only the model and its :class:`~twotower.model.ModelConfig`:
:func:`twotower.model.checkpoint.load_model` gives those without importing training code. This module adds
the :class:`RunConfig` (the split the run trained on, its negatives, ...) on top of the same reader.
"""

from __future__ import annotations

from pathlib import Path

from .. import config as cfgmod
from ..model import TwoTower
from ..model import checkpoint as ckpt
from .config import RunConfig


def load_run(run_or_ckpt: str | Path, which: str = "best", device: str = "cpu") -> tuple[TwoTower, RunConfig, str]:
    """Load a trained model: (model in eval mode, the run config, model version id).

    ``run_or_ckpt``: a run directory (reads ``checkpoints/<which>``, else ``checkpoints/last``) or a
    checkpoint directory. Errors are :class:`~twotower.errors.CheckpointError` naming the fix.
    """
    path = ckpt.find_checkpoint(run_or_ckpt, which)
    weights, config, state, _ = ckpt.load(path)
    cfg = cfgmod.from_dict(RunConfig, config, where=f"{path}/config.json")
    return ckpt.build_model(weights, cfg.model, path, device), cfg, state["model_version"]
