"""Writing checkpoints (the read side is :mod:`twotower.model.checkpoint`): safetensors + JSON, never pickle.

A checkpoint directory holds ``model.safetensors``, ``optim.safetensors`` (optimizer moments and the
training state tensors: RNG states, the task's state such as frequency estimates), ``state.json`` (step,
epoch, position in the epoch's batch order, optimizer hyper-parameters, best metric) and ``config.json``
(the whole run config). It is written to a temporary sibling ``.NAME.tmp-PID`` and swapped in through
``.NAME.old`` (``fsutil.swap_dir``): a kill mid-save leaves the previous checkpoint intact, either in place
or as ``.NAME.old``, which the reader falls back to. Temporary directories left by a kill are removed by
the next save.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..fsutil import swap_dir
from ..model.checkpoint import model_version, old_path


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
    swap_dir(tmp, path, old_path(path))
    return version


def restore_optimizer(opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor], state: dict) -> None:
    """Load the optimizer state :func:`save` flattened into ``extra`` (and ``state["param_groups"]``)."""
    opt.load_state_dict(_unflatten_optimizer(extra, state["param_groups"]))
