"""TEMP stub (serve-jobs branch): the read side of a checkpoint, so that serving loads a model without
``twotower.train``. The train-model branch owns the real ``model/checkpoint.py``; drop this file at merge.

API the serving code relies on: :func:`resolve`, :func:`load_state_version`, :func:`load_config` and
:func:`load_model` ``(dir, which="best", device="cpu") -> (TwoTower, ModelConfig, version)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..config import from_dict
from ..errors import CheckpointError
from .config import ModelConfig
from .towers import TwoTower

log = logging.getLogger(__name__)
FILES = ("model.safetensors", "config.json", "state.json")


def resolve(path: str | Path) -> Path | None:
    """The checkpoint directory to read for ``path``: itself, or the previous copy a kill mid-save left behind."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    return path if path.is_dir() else old if old.is_dir() else None


def model_version(model_file: str | Path, config: dict) -> str:
    """Model version id: sha256 over the weights file and the canonical config JSON, 16 hex chars."""
    h = hashlib.sha256()
    with open(model_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def load_state_version(path: str | Path) -> str:
    """The model version ``state.json`` of checkpoint ``path`` records (no tensors read)."""
    f = Path(path) / "state.json"
    try:
        return str(json.loads(f.read_text())["model_version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint state {f} is missing or unreadable ({exc}); retrain or restore it") from exc


def load_config(path: str | Path) -> dict:
    """Only the run config (a dict) of a checkpoint directory, without reading the tensors."""
    f = (resolve(path) or Path(path)) / "config.json"
    try:
        config = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint config {f} is missing or unreadable ({exc}); retrain or restore it") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint config {f} is not a JSON object; retrain or restore it")
    return config


def load_model(path: str | Path, which: str = "best", device: str = "cpu") -> tuple[TwoTower, ModelConfig, str]:
    """(model in eval mode, its config, model version id) of a run directory or a checkpoint directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if resolve(p) is None:
        raise CheckpointError(f"no such run directory {p}; pass the --out directory of `twotower train`")
    if (p / "checkpoints").is_dir():
        p = resolve(p / "checkpoints" / which) or p / "checkpoints" / "last"
    p = resolve(p) or p
    missing = [n for n in FILES if not (p / n).is_file()]
    if missing:
        raise CheckpointError(f"{p} is not a checkpoint (missing {missing}); train first")
    try:
        weights = load_file(p / "model.safetensors")
        config, state = json.loads((p / "config.json").read_text()), json.loads((p / "state.json").read_text())
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"checkpoint {p} is unreadable ({exc}); retrain or restore it") from exc
    if model_version(p / "model.safetensors", config) != state.get("model_version"):
        raise CheckpointError(f"checkpoint {p}: its files were changed after the save; restore them, or retrain")
    cfg = from_dict(ModelConfig, config.get("model", {}), where=f"{p}/config.json [model]")
    model = TwoTower(cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {p} does not match its config.json ({exc}); retrain") from exc
    return model.to(device).eval(), cfg, state["model_version"]
