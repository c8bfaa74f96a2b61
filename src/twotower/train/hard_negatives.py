"""Mined hard negatives: per-example candidates from an earlier checkpoint, as a negative source.

``twotower mine-negatives --run RUN`` (:mod:`twotower.jobs.mine`) scores every training example's user vector
against the whole catalogue with RUN's model, drops the example's false negatives (every item of the user's
training events: its history, its positive, its later positives), and draws ``count`` items uniformly from
the ranks ``rank_from..rank_to`` of what is left (EBR, Huang et al. KDD 2020: ranks 101-500 of the previous
model). It writes ``DIR/``::

    negatives.safetensors   rows int64 [R] (dataset event rows of the training targets, sorted),
                            items int32 [R, count] (-1 where the window held fewer eligible items),
                            window int32 [R] (eligible items in the rank window)
    manifest.json           format, the model version mined with, the dataset fingerprint, split, ranks, count

:class:`MinedNegatives` reads it for training (``train.hard_negatives = DIR``). Its inclusion probability is
the draw's: an item in row ``t``'s window is among its mined negatives with probability
``min(1, count / window_t)``; with logQ on, a hard column's correction is the log of that plus the shared
sources' probability of the item (the shared columns keep their row-independent correction). A hard item
that is already one of the row's shared columns is not added twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from ..errors import ArtifactError

FORMAT = 1
NEGATIVES_FILE = "negatives.safetensors"
MANIFEST_FILE = "manifest.json"


@dataclass
class MineConfig:
    """What ``mine-negatives`` draws. Ranks are 1-based and inclusive, counted after false negatives."""

    rank_from: int = 101
    rank_to: int = 500
    count: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        from ..config import check

        check(self.rank_from >= 1, "rank_from", self.rank_from, "ranks start at 1")
        check(self.rank_to >= self.rank_from, "rank_to", self.rank_to, f"give a rank >= rank_from ({self.rank_from})")
        check(
            1 <= self.count <= self.rank_to - self.rank_from + 1,
            "count",
            self.count,
            f"draw between 1 and the window's {self.rank_to - self.rank_from + 1} ranks",
        )


def read_manifest(path: str | Path) -> dict:
    """The manifest of a mined directory; ArtifactError naming the fix when it is missing or unreadable."""
    m = Path(path) / MANIFEST_FILE
    if not m.is_file():
        raise ArtifactError(
            f"{path} holds no mined negatives ({MANIFEST_FILE} is missing; a killed mining job leaves its parts "
            f"beside it): run `twotower mine-negatives --run RUN --out {path}` (it resumes)"
        )
    try:
        manifest = json.loads(m.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{m} is unreadable ({e}); mine again with --overwrite") from e
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{m} has format {manifest.get('format')!r}, this version reads {FORMAT}; mine again")
    return manifest


class MinedNegatives:
    """The mined file in memory: ``lookup`` gives each training target's hard negatives.

    Plain data, not module state: a checkpoint records the file's model version (``train.hard_negatives_model``),
    not its contents.
    """

    def __init__(self, rows: np.ndarray, items: np.ndarray, window: np.ndarray, manifest: dict):
        self.rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        self.items = torch.from_numpy(np.ascontiguousarray(items, dtype=np.int64))
        n_ok = (self.items >= 0).sum(1)
        self.prob = (n_ok.double() / torch.from_numpy(window.astype(np.float64)).clamp_min(1)).clamp(max=1.0).float()
        self.manifest = manifest

    @property
    def count(self) -> int:
        return int(self.items.shape[1])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @classmethod
    def load(cls, path: str | Path, dataset: str | None = None, split: str | None = None) -> MinedNegatives:
        """Read ``path``; refuse a file mined on another dataset (fingerprint) or split than the run's."""
        manifest = read_manifest(path)
        if dataset is not None and manifest["dataset"] != dataset:
            raise ArtifactError(
                f"{path} was mined on dataset {manifest['dataset']}, this run trains on {dataset}: mine again "
                "on this dataset (`twotower mine-negatives --run RUN`, RUN trained on it)"
            )
        if split is not None and manifest["split"] != split:
            raise ArtifactError(f"{path} was mined on split {manifest['split']!r}, this run uses {split!r}")
        try:
            t = load_file(str(Path(path) / NEGATIVES_FILE))
            return cls(t["rows"], t["items"], t["window"], manifest)
        except (OSError, KeyError, ValueError) as e:
            raise ArtifactError(f"{path}/{NEGATIVES_FILE} is unreadable ({e}); mine again with --overwrite") from e

    def lookup(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training target rows int64 [T] -> (item ids int64 [T, H], -1 = none; inclusion prob float [T, H])."""
        rows = rows.cpu()
        if not len(self.rows):
            return torch.full((len(rows), self.count), -1, dtype=torch.int64), torch.zeros(len(rows), self.count)
        at = torch.searchsorted(self.rows, rows).clamp(max=max(len(self.rows) - 1, 0))
        found = self.rows[at] == rows
        items = torch.where(found[:, None], self.items[at], torch.full_like(self.items[at], -1))
        prob = self.prob[at][:, None].expand_as(items)
        return items, prob


def mined_for(tc, dataset: str) -> MinedNegatives | None:
    """``train.hard_negatives`` of TrainConfig ``tc``, read and checked: the same dataset (fingerprint
    ``dataset``) and split, and the model version the config names (an empty ``hard_negatives_model`` takes
    the file's, which the saved config then records)."""
    if not tc.hard_negatives:
        return None
    hard = MinedNegatives.load(tc.hard_negatives, dataset, tc.split)
    if tc.hard_negatives_model and tc.hard_negatives_model != hard.model_version:
        raise ArtifactError(
            f"{tc.hard_negatives} was mined with model {hard.model_version}, this run expects "
            f"{tc.hard_negatives_model} (train.hard_negatives_model): mine again with that run, or set "
            "hard_negatives_model to the file's version"
        )
    tc.hard_negatives_model = hard.model_version
    return hard
