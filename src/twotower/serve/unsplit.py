"""Serving an unsplit tower: the user vector the refresh job cached, or the encoder over the events sent.

An unsplit tower has no online head: its user vector is the encoder's output after the whole history, which
the service does not hold. So the refresh job caches that vector itself (a [1, D] state, see
``ModelConfig.cached_state_shape``) and the service answers:

* a user with a cached vector: that vector, exactly what offline evaluation scores (``tests/test_serve.py``
  proves the served top-k equals the exact offline one). Events sent after its snapshot cannot be folded in
  without the history; they are still excluded from the answer, and counted
  (``twotower_unfolded_events_total``). Fresh events are what the hybrid split (``train --hybrid``) is for;
* a user without one (new, another model version's only, or the store is down): the encoder over the events
  the request sends (its last ``max_len``), as if they were the whole history;
* a user without either: the "average user", the mean of the export's sampled user vectors
  (``users_sample.npy``), whose top items are the broadly liked ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ArtifactError
from ..features.inputs import Context
from ..model import TwoTower
from ..model.layers import score_vectors


def average_user(emb_dir: Path, dim: int, similarity: str) -> torch.Tensor:
    """The no-history user vector [D]: the mean of the export's sampled user vectors, scored as the model's
    user vectors are (unit for cosine)."""
    path = emb_dir / "users_sample.npy"
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the unsplit tower's no-history vector comes from it; re-run "
                            "`twotower serve-prepare` for this model")  # fmt: skip
    sample = np.load(path, allow_pickle=False)
    if sample.ndim != 2 or sample.shape[1] != dim or not len(sample):
        raise ArtifactError(f"{path} holds {sample.shape} user vectors, the model needs [n >= 1, {dim}]; re-run "
                            "`twotower serve-prepare` for this model")  # fmt: skip
    return score_vectors(torch.from_numpy(sample.astype(np.float32)).mean(0), similarity)


class UnsplitEncoder:
    """``encoder(state [B, 1, D], ctx) -> user vectors [B, D]`` for an unsplit tower (see the module doc).

    The same call as :class:`~twotower.serve.head.OnlineEncoder`, so the request path does not branch on the
    tower. ``traced`` is False (there is no head graph); ``reason`` says so.
    """

    traced = False
    reason = "an unsplit tower has no online head"

    def __init__(self, model: TwoTower, no_history: torch.Tensor) -> None:
        self.model, self.no_history = model.eval(), no_history

    @torch.inference_mode()
    def __call__(self, state: torch.Tensor, ctx: Context) -> torch.Tensor:
        out = state[:, 0].clone()  # [B, D]; zero rows = no vector of the served version
        todo = out.abs().sum(-1) == 0
        if todo.any():
            ev = ctx.events
            sent = todo & (ev.length > 0)
            if sent.any():
                rows = sent.nonzero().flatten()
                out[rows] = self.model.encode_user(ev[rows]).to(out.dtype)
            out[todo & ~sent] = self.no_history.to(out.dtype)
        return out
