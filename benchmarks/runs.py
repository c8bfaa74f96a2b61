"""What the ML-1M benchmarks share: train the no-config defaults with a few fields changed, load the best run.

Imported by the benchmark scripts (run as ``python benchmarks/<name>.py``: this directory is on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path


def train_auto(
    data, budget: float, seed: int, out: Path, model: dict | None = None, train: dict | None = None, split: str = "loo"
):
    """``auto_config`` (what ``twotower train`` does with no config) for ``budget`` s with ``seed`` and the
    ``model`` / ``train`` fields changed (their range checks run again), trained into ``out``.

    Returns (the run summary, the best checkpoint's model, its RunConfig, its version, a Featurizer for it)."""
    from twotower.features import Featurizer
    from twotower.train.auto import auto_config
    from twotower.train.load import load_run
    from twotower.train.trainer import Trainer

    cfg, _ = auto_config(data, budget, split=split)
    cfg.train.seed = seed
    for section, values in (("model", model), ("train", train)):
        part = getattr(cfg, section)
        for key, value in (values or {}).items():
            setattr(part, key, value)
        part.__post_init__()
    summary = Trainer(data, cfg, out, overwrite=True).fit(progress=False)
    net, rc, version = load_run(out)
    return summary, net, rc, version, Featurizer(data, rc.model)
