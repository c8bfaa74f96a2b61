"""Sampled noise-contrastive estimation: each candidate is a binary "data or noise?" decision.

    loss_t = − log σ(s_tp) − Σ_{j ∈ N_t} log(1 − σ(s_tj)) = softplus(− s_tp) + Σ_j softplus(s_tj)

The logits already carry the − log q correction (q = the candidate's inclusion probability under the
negative sources), which is what makes the logistic classifier estimate the unnormalised model score; with
logQ off it is plain negative-sampling logistic loss (word2vec's). References: Gutmann & Hyvärinen, AISTATS
2010; Mnih & Teh, ICML 2012; TensorFlow's ``tf.nn.nce_loss`` (sum over the sampled negatives, logits minus
the log of the expected count).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nce(logits: torch.Tensor, labels: torch.Tensor, negative: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """logits [T, C], labels int64 [T], negative bool [T, C] -> per-query loss [T] (``margin`` unused)."""
    pos = logits.gather(1, labels[:, None])[:, 0]  # [T]
    return F.softplus(-pos) + (F.softplus(logits) * negative).sum(1)
