"""Reading checkpoints: find one, read its files, check its model version, build the model. Never pickle.

A checkpoint directory holds ``model.safetensors`` (weights), ``optim.safetensors`` (optimizer moments and
training state, only in ``last``), ``state.json`` (step, epoch, ..., ``model_version``) and ``config.json``
(the whole run config; the ``model`` table is a :class:`~twotower.model.ModelConfig`). Training writes it
(``twotower.train.checkpoint``) into a temporary sibling and swaps it in through ``.NAME.old``: a kill
mid-save leaves the previous checkpoint either in place or as ``.NAME.old``, which :func:`resolve` falls back to.

This is the read side only, so the service loads a model without importing training code::

    model, model_cfg, version = load_model("runs/ml1m", which="best")
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .. import config as cfgmod
from ..errors import ArtifactError, CheckpointError
from .config import ModelConfig
from .two_tower import TwoTower

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json", "state.json")


def old_path(path: Path) -> Path:
    """Where the previous copy of checkpoint ``path`` lives while a save swaps the new one in."""
    return path.with_name(f".{path.name}.old")


def resolve(path: str | Path) -> Path | None:
    """The checkpoint directory to read for ``path``: itself, or the previous copy a kill mid-save left behind."""
    path = Path(path)
    if path.is_dir():
        return path
    if old_path(path).is_dir():
        return old_path(path)
    return None


def model_version(model_file: str | Path, config: dict) -> str:
    """Model version id: sha256 over the weights file and the canonical config JSON, 16 hex chars."""
    h = hashlib.sha256()
    with open(model_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict, dict[str, torch.Tensor]]:
    """(model weights, config, state, extra tensors incl. optimizer) of a checkpoint directory.

    The weights and config must hash to the ``model_version`` that ``state.json`` records: a file swapped or
    edited after the save must not pass as the version it claims (indexes and feature stores are matched to
    models by this id).
    """
    path = Path(path)
    found = resolve(path)
    if found is not None and found != path:
        log.warning("%s is missing (a save was interrupted); reading the previous checkpoint %s", path, found)
    path = found or path
    missing = [n for n in CHECKPOINT_FILES if not (path / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint (missing {missing}); point at RUN_DIR/checkpoints/last "
            "or RUN_DIR/checkpoints/best, or train first"
        )
    try:
        weights = load_file(path / "model.safetensors")
        extra = load_file(path / "optim.safetensors") if (path / "optim.safetensors").is_file() else {}
        config = json.loads((path / "config.json").read_text())
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError, SafetensorError) as exc:  # truncated or garbled files
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); retrain or restore it") from exc
    if not isinstance(config, dict) or not isinstance(state, dict) or "model_version" not in state:
        raise CheckpointError(
            f"checkpoint {path} is incomplete (config.json / state.json lack the run config or model_version); "
            "retrain or restore it"
        )
    actual = model_version(path / "model.safetensors", config)
    if actual != state["model_version"]:
        raise CheckpointError(
            f"checkpoint {path}: its weights and config hash to model version {actual}, but state.json says "
            f"{state['model_version']}; the files were changed after the save. Restore them, or retrain"
        )
    return weights, config, state, extra


def load_state_version(path: str | Path) -> str:
    """The model version ``state.json`` of checkpoint ``path`` records (no tensors read)."""
    f = Path(path) / "state.json"
    try:
        return str(json.loads(f.read_text())["model_version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint state {f} is missing or unreadable ({exc}); retrain or restore it") from exc


def load_config(path: str | Path) -> dict:
    """Only the run config (a dict) of a checkpoint directory, without reading the tensors."""
    found = resolve(path)
    f = (found or Path(path)) / "config.json"
    try:
        config = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint config {f} is missing or unreadable ({exc}); retrain or restore it") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint config {f} is not a JSON object; retrain or restore it")
    return config


def no_such_run(run: Path) -> CheckpointError:
    """The error for a ``--run`` / ``--resume`` directory that does not exist."""
    return CheckpointError(f"no such run directory {run}; pass the --out directory of `twotower train`")


def find_checkpoint(run_or_ckpt: str | Path, which: str = "best") -> Path:
    """The checkpoint to read for a run directory (its ``which`` one, else ``last``) or a checkpoint directory."""
    p = Path(run_or_ckpt)
    if resolve(p) is None:
        raise no_such_run(p)
    if (p / "checkpoints").is_dir():
        p = resolve(p / "checkpoints" / which) or p / "checkpoints" / "last"
    return p


def build_model(weights: dict[str, torch.Tensor], cfg: ModelConfig, where: Path, device: str = "cpu") -> TwoTower:
    """A :class:`TwoTower` of ``cfg`` holding ``weights`` (pre-split key names accepted), in eval mode."""
    model = TwoTower(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:  # weights of another shape than the saved config says
        raise CheckpointError(f"checkpoint {where} does not match its config.json ({exc}); retrain") from exc
    return model.to(device).eval()


def load_model(run_or_ckpt: str | Path, which: str = "best", device: str = "cpu") -> tuple[TwoTower, ModelConfig, str]:
    """Load a trained model: (model in eval mode, its config, model version id).

    ``run_or_ckpt``: a run directory (reads ``checkpoints/<which>``, else ``checkpoints/last``) or a
    checkpoint directory.
    """
    path = find_checkpoint(run_or_ckpt, which)
    weights, config, state, _ = load(path)
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"checkpoint {path}: config.json has no [model] table; retrain or restore it")
    cfg = cfgmod.from_dict(ModelConfig, config["model"], where=f"{path}/config.json [model]")
    return build_model(weights, cfg, path, device), cfg, state["model_version"]


def served_dataset(root: Path, model_dir: Path) -> Path:
    """The dataset a served model copy reads: ``ROOT/data`` when present, else the one its run recorded
    (``models/<version>/data_path.txt``). The service's bundle and the offline jobs on an artifact root share it."""
    if (root / "data" / "manifest.json").is_file():
        return root / "data"
    rec = model_dir / "data_path.txt"
    if not rec.is_file():
        raise ArtifactError(f"{model_dir} has no data_path.txt and {root}/data is absent; rebuild the artifact root")
    return Path(rec.read_text().strip())
