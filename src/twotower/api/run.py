"""``twotower.train`` and :class:`Run`: train on a prepared dataset, evaluate a run."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import config as cfgmod
from ..data.dataset import SequenceData
from ..evaluate import PRIMARY, evaluate_model, evaluate_popularity
from ..features import Featurizer
from ..train.auto import auto_config
from ..train.config import RunConfig
from ..train.load import load_run
from ..train.run import check_model_fits, load_dataset, recorded_dataset
from ..train.trainer import Trainer


@dataclass
class Run:
    """A trained run directory: its config, its training summary, and evaluation of its best checkpoint."""

    path: Path

    @classmethod
    def load(cls, path: str | Path) -> Run:
        path = Path(path)
        load_run(path)  # a clear CheckpointError now rather than at the first use
        return cls(path)

    @property
    def config(self) -> RunConfig:
        return cfgmod.load(RunConfig, self.path / "config.json")

    @property
    def summary(self) -> dict:
        """``train_summary.json``: epochs, steps, seconds, examples/s, the best validation score, why it stopped."""
        return json.loads((self.path / "train_summary.json").read_text())

    def dataset(self) -> SequenceData:
        return load_dataset(recorded_dataset(self.path, None))

    def evaluate(self, split: str = "test", protocol: str = "strict", max_users: int | None = None) -> dict:
        """Full-corpus metrics of the best checkpoint (by validation) on ``split``, beside popularity.

        Returns the ``filtered/`` (seen items removed) and ``all/`` metrics, ``primary`` (filtered NDCG@10),
        ``protocol``, ``split``, ``model_version`` and ``popularity`` (the same metrics for the baseline)."""
        model, cfg, version = load_run(self.path)
        data = self.dataset()
        check_model_fits(cfg.model, data)
        scheme = cfg.train.split
        m = evaluate_model(model, Featurizer(data, cfg.model), scheme, split, max_users=max_users, protocol=protocol)
        pop = evaluate_popularity(data, scheme, split)
        return {**m, "primary": m[PRIMARY], "protocol": protocol, "split": split, "model_version": version,
                "popularity": pop}  # fmt: skip


def train(
    dataset: SequenceData | str | Path,
    config: RunConfig | dict | str | Path | None = None,
    out: str | Path | None = None,
    time_budget: float | None = None,
    hybrid: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Run:
    """Train the two towers on ``dataset`` (a prepared dataset or its directory) -> the :class:`Run`.

    ``config``: a :class:`RunConfig`, a dict of its ``model`` / ``train`` fields, a .toml/.json file, or None
    for the defaults scaled to the dataset (what ``twotower train`` does without ``--config``; ``hybrid``
    picks the hybrid split there). ``time_budget``: training seconds (overrides the config's). ``out``: the
    run directory (default: a new temporary one); ``overwrite`` replaces a run already there.
    """
    data = dataset if isinstance(dataset, SequenceData) else load_dataset(dataset)
    if config is None:
        cfg, _ = auto_config(data, time_budget, hybrid=hybrid)
    elif isinstance(config, RunConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = cfgmod.from_dict(RunConfig, config, where="config")
    else:
        cfg = cfgmod.load(RunConfig, config)
    if time_budget is not None:
        cfg.train.time_budget_s = float(time_budget)
        cfg.train.__post_init__()
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="twotower-run-"))
    Trainer(data, cfg, out, overwrite=overwrite).fit(progress=progress)
    return Run(out)
