"""The run directory: who may write into it, which dataset it belongs to, what a resume may change.

A run directory holds one training run (``config.json``, ``data_path.txt``, ``metrics.csv``,
``checkpoints/{last,best}``, ``train_summary.json``, ``eval_*.json``). Training refuses to write into a
directory that holds anything else unless told to resume it or to overwrite it, and a resume refuses a
different dataset or a config that would change what a training step computes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import config as cfgmod
from ..data.dataset import SequenceData
from ..errors import CheckpointError, ConfigError, DataError, OutputError
from ..fsutil import file_in_the_way
from ..model import checkpoint as ckpt
from ..model.checkpoint import no_such_run
from ..model.config import ModelConfig
from .config import RunConfig, TrainConfig

log = logging.getLogger(__name__)

# Config fields a resumed run may change: they decide how long, where and how verbosely to train, not what a
# step computes. Everything else (the model, the data order, the optimiser, the loss) must stay as saved.
# Raising `epochs` stretches the cosine schedule from the resume point on, so the result is not the same as
# a run trained straight to the new length.
RESUMABLE = (
    "train.epochs",
    "train.time_budget_s",
    "train.patience",
    "train.patience_from",
    "train.eval_every",
    "train.eval_users",
    "train.checkpoint_every",
    "train.checkpoint_every_s",
    "train.log_every",
    "train.progress_every_s",
    "train.device",
    "train.amp",
    "train.num_workers",
    "train.threads",
)
# read from the dataset, not from the config
_DERIVED = ("model.num_actions", "model.num_surfaces", "model.text_dim", "model.codebook")
_RUN_MARKERS = ("checkpoints", "data_path.txt")  # what every run directory has from its first second on
# everything a run writes at its top level (plus eval_*.json from `evaluate`) and in checkpoints/: --overwrite
# removes these and nothing else, and refuses a directory that holds anything more
_RUN_ENTRIES = frozenset({"checkpoints", "data_path.txt", "config.json", "metrics.csv", "train_summary.json", "tb"})
_CHECKPOINT_ENTRIES = frozenset({"last", "best", ".last.old", ".best.old"})


def _foreign_entries(out: Path) -> list[str]:
    """Entries of ``out`` a twotower run does not write (empty when ``out`` holds a run and nothing else)."""
    foreign = [
        p.name
        for p in out.iterdir()
        if p.name not in _RUN_ENTRIES and not (p.name.startswith("eval_") and p.name.endswith(".json"))
    ]
    ck = out / "checkpoints"
    if ck.is_dir():
        foreign += [
            f"checkpoints/{p.name}"
            for p in ck.iterdir()
            if p.name not in _CHECKPOINT_ENTRIES and not p.name.startswith((".last.tmp-", ".best.tmp-"))
        ]
    elif ck.exists():
        foreign.append("checkpoints (a file)")
    return sorted(foreign)


_VOLATILE = ("created_at", "seconds", "dataset", "source")  # when and from which path, not what


def dataset_fingerprint(data: SequenceData) -> str:
    """16 hex chars of sha256 over the prepare manifest without its time and path fields.

    The manifest records the SHA-256 of every input file, the prepare config and the counts, so the same
    inputs prepared again (anywhere, any time) give the same fingerprint and any other dataset a new one.
    """
    manifest = {k: v for k, v in data.manifest.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]


def load_dataset(path: str | Path) -> SequenceData:
    """``SequenceData.load`` with unreadable files (corrupt manifest.json, garbled arrays) as a DataError."""
    try:
        return SequenceData.load(path)
    except DataError:
        raise
    except (ValueError, OSError) as exc:  # json.JSONDecodeError / UnicodeDecodeError are ValueErrors
        raise DataError(f"dataset {path} is unreadable ({exc}); re-run `twotower prepare` into it") from exc


def recorded_dataset(run: str | Path, data_dir: str | Path | None = None) -> Path:
    """The dataset directory of ``run``: ``data_dir`` when given, else the one ``RUN/data_path.txt`` records."""
    run = Path(run)
    if data_dir is not None:
        return Path(data_dir)
    if not run.is_dir():
        raise no_such_run(run)
    rec = run / "data_path.txt"
    if not rec.is_file():
        raise DataError(f"run {run} does not record its dataset (no data_path.txt); pass --data DIR")
    return Path(rec.read_text().strip())


def check_same_dataset(out: Path, data: SequenceData) -> None:
    """DataError when run ``out`` was trained on another dataset than ``data`` (runs from before the
    fingerprint was recorded are not checked)."""
    last = ckpt.resolve(out / "checkpoints" / "last")
    try:
        trained_on = json.loads((last / "state.json").read_text()).get("dataset") if last else None
    except (OSError, ValueError, AttributeError):
        return  # an unreadable checkpoint is reported by the checkpoint loader, with its own words
    here = dataset_fingerprint(data)
    if trained_on is not None and trained_on != here:
        raise DataError(
            f"run {out} was trained on another dataset (fingerprint {trained_on}) than {data.root} ({here}); "
            f"resume with the dataset in {out}/data_path.txt, or train a new run"
        )


def check_model_fits(cfg: ModelConfig, data: SequenceData) -> None:
    """A model config that asks for more hashes than the dataset holds is a ConfigError naming both fixes."""
    have = data.item_hash.shape[1]
    if cfg.num_hashes > have:
        raise ConfigError(
            f"model.num_hashes = {cfg.num_hashes} but dataset {data.root} was prepared with {have} hashes per id; "
            f"set model.num_hashes <= {have}, or re-run `twotower prepare --num-hashes {cfg.num_hashes}`"
        )


def check_run_dir(out: Path, resume: bool, overwrite: bool, data_root: Path | None = None) -> None:
    """Refuse an ``--out`` this run must not write into, before any work is done.

    Fresh runs need a new or empty directory; ``overwrite`` accepts a directory holding an earlier run and
    nothing else (cleared by ``clear_run_dir`` once everything else checked out), never one holding other
    files, nor one that contains the dataset (``data_root``). ``resume`` needs a run with a checkpoint.
    """
    if resume and overwrite:
        raise ConfigError(
            "--resume and --overwrite contradict each other: resume continues the run, overwrite discards it"
        )
    where = file_in_the_way(out)
    if where:
        raise OutputError(f"run directory {out} {where}; choose another --out")
    if resume:
        if not out.is_dir():
            raise no_such_run(out)
        if ckpt.resolve(out / "checkpoints" / "last") is None:
            if not any((out / m).exists() for m in _RUN_MARKERS):
                raise CheckpointError(
                    f"run {out} has no checkpoint yet (no checkpoints/last); train it without --resume"
                )
            raise CheckpointError(
                f"run {out} has no checkpoint yet (no checkpoints/last): it stopped before its first checkpoint "
                "was written, so there is nothing to resume. Start it again from scratch: the same command with "
                "--overwrite instead of --resume"
            )
        return
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not any((out / m).exists() for m in _RUN_MARKERS):
        raise OutputError(f"{out} is not empty and holds no twotower run; choose a new or empty --out")
    if not overwrite:
        raise OutputError(
            f"{out} already holds a run; continue it with --resume, discard it with --overwrite, "
            "or choose another --out"
        )
    foreign = _foreign_entries(out)
    if foreign:
        raise OutputError(
            f"--overwrite: {out} holds more than a twotower run ({', '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}); it would be deleted. Choose a new or empty --out"
        )
    if data_root is not None and Path(data_root).resolve().is_relative_to(out.resolve()):
        raise OutputError(f"--overwrite: {out} contains the dataset {data_root}; choose another --out")


def clear_run_dir(out: Path) -> None:
    """Empty a run directory ``check_run_dir`` accepted for ``overwrite``: the run's own entries, one by one
    (checked again here: nothing a run does not write is ever removed)."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = _foreign_entries(out)
    if foreign:  # appeared since the check
        raise OutputError(f"--overwrite: {out} now holds {foreign[:5]}; nothing was removed")
    log.info("--overwrite: removing the earlier run in %s", out)
    for p in out.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resumable(saved: dict[str, Any], given: dict[str, Any], run: Path) -> dict[str, tuple[Any, Any]]:
    """Compare two RunConfig dicts; ConfigError naming the fields a resume may not change.

    Returns the changed RESUMABLE fields as ``{key: (saved, given)}`` (for the log).
    """
    a, b = _flat(saved), _flat(given)
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in _DERIVED}
    refused = [f"{k} ({x!r} -> {y!r})" for k, (x, y) in changed.items() if k not in RESUMABLE]
    if refused:
        shown = ", ".join(refused[:8]) + (f" and {len(refused) - 8} more" if len(refused) > 8 else "")
        raise ConfigError(
            f"--resume of {run} with a config that changes {shown}; a resume continues the saved run "
            f"and may only change {', '.join(k.split('.', 1)[1] for k in RESUMABLE)}. Drop --config to resume "
            "with the saved one, or train a new run (another --out, or --overwrite)"
        )
    return changed


def resume_config(out: str | Path, given: RunConfig | None = None) -> RunConfig:
    """The config to resume run ``out`` with: the one saved with its last checkpoint, or ``given`` when that
    differs from it only in ``RESUMABLE`` fields (anything else is a ConfigError naming the fields)."""
    out = Path(out)
    check_run_dir(out, resume=True, overwrite=False)
    path = out / "checkpoints" / "last"
    saved = cfgmod.from_dict(RunConfig, ckpt.load_config(path), where=f"{path}/config.json")
    if given is None:
        return saved
    check_resumable(cfgmod.to_dict(saved), cfgmod.to_dict(given), out)
    return given


def reopen(state: dict[str, Any], old: TrainConfig, new: TrainConfig, out: Path) -> None:
    """A run stopped by its time budget or by early stopping continues when ``new`` allows more than ``old``
    did: clears ``state``'s ``done`` (and, after an early stop, its patience count) in place."""
    reason = state.get("stop_reason") or (
        "time_budget" if old.time_budget_s and state["train_seconds"] > old.time_budget_s else "early_stop"
    )
    if reason == "time_budget":
        more = not new.time_budget_s or new.time_budget_s > state["train_seconds"]
        why = f"time budget {old.time_budget_s:g} s -> {new.time_budget_s:g} s (0 = none)"
        how = f"raise --time-budget above the {state['train_seconds']:.0f} s trained so far"
    else:
        more = new.epochs > old.epochs or new.patience > old.patience
        why = f"epochs {old.epochs} -> {new.epochs}, patience {old.patience} -> {new.patience}"
        how = f"raise --epochs above {old.epochs} (or train.patience above {old.patience})"
    if not more:
        log.warning("run %s had stopped (%s) and nothing was raised; to continue it, %s", out, reason, how)
        return
    log.info("run %s had stopped (%s); %s: continuing", out, reason, why)
    state.update(done=False, stop_reason=None)
    if reason == "early_stop":
        state["bad_evals"] = 0  # patience starts over


def check_examples(data: SequenceData, windows: np.ndarray, tc: TrainConfig) -> None:
    """Training targets must exist, and validation targets too when validation runs (eval_every > 0)."""
    if len(windows) == 0:
        held = f" after holding out {tc.holdout_users:.0%} of users" if tc.holdout_users else ""
        why = " (leave-last-out keeps each user's last two events for validation and test)" if tc.split == "loo" else ""
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
