"""Checkpoints: weights and optimizer tensors in safetensors, everything else in JSON. Never pickle.

A checkpoint directory holds ``model.safetensors``, ``optim.safetensors`` (optimizer moments, RNG states,
frequency-estimator arrays), ``state.json`` (step, epoch, position in the epoch's batch order, optimizer
hyper-parameters, best metric) and ``config.json`` (the whole run config). It is written to a temporary
sibling ``.NAME.tmp-PID`` and swapped in through ``.NAME.old``: a kill mid-save leaves the previous
checkpoint intact, either in place or as ``.NAME.old``, which ``resolve`` / ``load`` fall back to. Temporary
directories left by a kill are removed by the next save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..fsutil import swap_dir

log = logging.getLogger(__name__)


def _old(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def resolve(path: str | Path) -> Path | None:
    """The checkpoint directory to read for ``path``: itself, or the previous copy a kill mid-save left behind."""
    path = Path(path)
    if path.is_dir():
        return path
    if _old(path).is_dir():
        return _old(path)
    return None


def model_version(model_file: str | Path, config: dict) -> str:
    """Model version id: sha256 over the weights file and the canonical config JSON, 16 hex chars."""
    h = hashlib.sha256()
    with open(model_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": groups}


def save(
    path: str | Path,
    model: torch.nn.Module,
    config: dict,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> str:
    """Atomically write a checkpoint; returns the model version id."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a kill mid-save (ours use one pid)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, tmp / "model.safetensors")
    extra = {f"extra.{k}": v.detach().cpu().contiguous() for k, v in (tensors or {}).items()}
    groups: list[dict] = []
    if optimizer is not None:
        ot, groups = _flatten_optimizer(optimizer)
        extra.update({k: v.detach().cpu().contiguous() for k, v in ot.items()})
    save_file(extra, tmp / "optim.safetensors")
    version = model_version(tmp / "model.safetensors", config)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "state.json").write_text(
        json.dumps({**state, "param_groups": groups, "model_version": version}, indent=2) + "\n"
    )
    # Between the two renames the previous checkpoint lives on as `.NAME.old`, which `resolve` reads when
    # `NAME` is missing (a `.NAME.old` already there is older than `NAME`, or than this save).
    swap_dir(tmp, path, _old(path))
    return version


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict, dict, dict[str, torch.Tensor]]:
    """Return (model weights, config, state, extra tensors incl. optimizer) of a checkpoint directory."""
    path = Path(path)
    found = resolve(path)
    if found is not None and found != path:
        log.warning("%s is missing (a save was interrupted); reading the previous checkpoint %s", path, found)
    path = found or path
    need = ["model.safetensors", "config.json", "state.json"]
    missing = [n for n in need if not (path / n).is_file()]
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
    # the id names these exact weights and config: a file swapped or edited after the save must not pass
    # as the version it claims (the index and the feature store are matched to models by this id)
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


def restore_optimizer(opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor], state: dict) -> None:
    opt.load_state_dict(_unflatten_optimizer(extra, state["param_groups"]))
