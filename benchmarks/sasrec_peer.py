"""A plain SASRec baseline ("peer") on a prepared twotower dataset, for transfer benchmarks.

Model: SASRec (Kang & McAuley 2018) as RecBole 1.2.1's ``SASRec`` with ``loss_type='CE'``: item embedding
(``num_items + 1`` rows, row 0 = padding, so twotower's dense item ``i`` is token ``i + 1``) plus a learned
position embedding, LayerNorm + dropout, ``layers`` post-LN transformer blocks (GELU, inner size ``4 * dim``,
causal mask), the output dotted with the item table, full softmax cross-entropy over all items, Adam.

Data: the leave-last-out ("loo") split, training on exactly the events twotower trains on (each user's
``SPLIT_TRAIN`` events, a prefix of its sequence). Loss at every position: position ``t`` predicts event
``t + 1`` of the window. Windows are *fixed sliding windows*: each user's training prefix is tiled from its end
into windows of at most ``max_len + 1`` events stepping by ``max_len`` (consecutive windows share one event),
so every training target except the user's first event is predicted exactly once per epoch, mirroring
:meth:`SequenceData.train_windows` (twotower also predicts the first event, from its user token; SASRec has
no history for it). Batches are ``batch_size`` windows, shuffled each epoch by ``(seed, epoch)``.

Evaluation is twotower's own code (:mod:`twotower.evaluate.evaluator`): the history of a target at row ``r``
is the user's last ``max_len`` events strictly before ``r``; all items are ranked, ``all/`` and ``filtered/``
(history items removed) metrics. Usage::

    python benchmarks/sasrec_peer.py --data DIR --budget 120 --seed 0 [--threads 2] --out FILE.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twotower.data.dataset import SequenceData
from twotower.evaluate.evaluator import PRIMARY, _ranks, _report, _select
from twotower.evaluate.metrics import KS
from twotower.layout import SPLIT_TRAIN

SCHEME = "loo"


class SASRec(nn.Module):
    """Self-attentive sequential recommender; item tokens are dense item index + 1 (0 = padding)."""

    def __init__(self, num_items: int, max_len: int, dim: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.item = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:  # RecBole: normal(0, 0.02) weights, zero biases, unit LayerNorm
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: int64 [B, S] left-aligned tokens, padding (0) only at the end -> hidden states [B, S, D].

        With right padding the causal mask alone keeps every real position from attending to padding."""
        S = seq.shape[1]
        x = self.drop(self.norm(self.item(seq) + self.pos(torch.arange(S, device=seq.device))[None]))
        mask = nn.Transformer.generate_square_subsequent_mask(S, device=seq.device)
        return self.encoder(x, mask=mask, is_causal=True)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h: [..., D] -> scores over the real items [..., N] (padding row excluded)."""
        return h @ self.item.weight[1:].T


def train_windows(data: SequenceData, max_len: int) -> np.ndarray:
    """int64 [W, 2] (first row, end row) event windows of 2..max_len+1 training events, tiled from the end of
    each user's training prefix in steps of ``max_len``; inputs are rows first..end-2, targets first+1..end-1."""
    user = data.user_of_event()
    n_train = np.bincount(user[data.split(SCHEME) == SPLIT_TRAIN], minlength=data.num_users)
    n_tgt = np.maximum(n_train - 1, 0)  # the first event has no history
    n_win = -(-n_tgt // max_len)
    u = np.repeat(np.arange(data.num_users), n_win)
    k = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
    start0 = data.user_offsets[:-1][u]
    end = start0 + n_train[u] - k * max_len
    return np.stack([np.maximum(start0, end - max_len - 1), end], axis=1).astype(np.int64)


def window_batch(data: SequenceData, w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """w: int64 [B, 2] -> (input tokens [B, S], target item indices [B, S] with -100 at padding)."""
    first, end = w[:, 0], w[:, 1]
    S = int((end - first).max()) - 1
    rows = first[:, None] + np.arange(S)[None, :]
    valid = rows < end[:, None] - 1
    items = data.event_item.astype(np.int64)
    seq = np.where(valid, items[np.where(valid, rows, 0)] + 1, 0)
    tgt = np.where(valid, items[np.where(valid, rows + 1, 0)], -100)
    return torch.from_numpy(seq), torch.from_numpy(tgt)


def history_batch(data: SequenceData, users: np.ndarray, rows: np.ndarray, max_len: int) -> torch.Tensor:
    """Last ``max_len`` events strictly before each target row, left-aligned tokens [B, S]."""
    first = np.maximum(data.user_offsets[users], rows - max_len)
    S = max(int((rows - first).max()), 1)
    idx = first[:, None] + np.arange(S)[None, :]
    valid = idx < rows[:, None]
    return torch.from_numpy(np.where(valid, data.event_item.astype(np.int64)[np.where(valid, idx, 0)] + 1, 0))


@torch.no_grad()
def evaluate(
    model: SASRec, data: SequenceData, which: str, max_len: int, ks: tuple[int, ...], max_users: int, seed: int
) -> dict[str, float]:
    """twotower's report (``all/…``, ``filtered/…``, ``num_users``) for split ``which``, same user subset rule."""
    model.eval()
    users, rows = _select(data, SCHEME, which, max_users or None, seed)

    def score(u: np.ndarray, r: np.ndarray) -> torch.Tensor:
        seq = history_batch(data, u, r, max_len)
        last = (seq > 0).sum(1).clamp_min(1) - 1  # [B]; an empty history reads position 0 (padding only)
        h = model(seq)[torch.arange(len(u)), last]  # [B, D]
        return model.logits(h)  # [B, N]

    out = _report(*_ranks(score, data, users, rows, 512, False), ks)
    model.train()
    return out


def run_sasrec(
    data_root: str | Path,
    time_budget_s: float,
    seed: int = 0,
    threads: int = 0,
    max_len: int = 50,
    dim: int = 64,
    layers: int = 2,
    heads: int = 2,
    dropout: float = 0.2,
    lr: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 200,
    patience: int = 5,
    eval_users: int = 0,
    progress: bool = True,
) -> dict:
    """Train within ``time_budget_s`` seconds of training (validation excluded), keep the best epoch by valid
    filtered NDCG@10 (early stop after ``patience`` epochs without improvement), evaluate it on test."""
    config = {k: v for k, v in locals().items() if k != "data_root"} | {"data": str(data_root), "split": SCHEME}
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    data = SequenceData.load(data_root)
    windows = train_windows(data, max_len)
    model = SASRec(data.num_items, max_len, dim, layers, heads, dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    config |= {"num_users": data.num_users, "num_items": data.num_items, "windows": len(windows)}
    config["train_targets"] = int((windows[:, 1] - windows[:, 0] - 1).sum())

    best, best_state, best_epoch, stale = -1.0, copy.deepcopy(model.state_dict()), 0, 0
    train_s, examples, epoch, last_print, valid = 0.0, 0, 0, time.perf_counter(), {}
    out_of_time = False
    while epoch < max_epochs and not out_of_time:
        epoch += 1
        order = np.random.default_rng([seed, epoch]).permutation(len(windows))
        loss_sum, n_batches = 0.0, 0
        for lo in range(0, len(order), batch_size):
            t0 = time.perf_counter()
            seq, tgt = window_batch(data, windows[order[lo : lo + batch_size]])
            loss = F.cross_entropy(model.logits(model(seq)).flatten(0, 1), tgt.flatten(), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_s += time.perf_counter() - t0
            examples += int((tgt >= 0).sum())
            loss_sum, n_batches = loss_sum + loss.item(), n_batches + 1
            if progress and time.perf_counter() - last_print >= 30:
                print(
                    f"epoch {epoch} batch {n_batches}: loss {loss_sum / n_batches:.4f} "
                    f"{examples / train_s:.0f} examples/s, train {train_s:.0f}s",
                    flush=True,
                )
                last_print = time.perf_counter()
            if train_s >= time_budget_s:
                out_of_time = True
                break
        m = evaluate(model, data, "valid", max_len, (10, 100), eval_users, seed)
        if m[PRIMARY] > best:
            best, best_state, best_epoch, stale, valid = m[PRIMARY], copy.deepcopy(model.state_dict()), epoch, 0, m
        else:
            stale += 1
        if progress:
            print(
                f"epoch {epoch}: loss {loss_sum / max(n_batches, 1):.4f} valid {PRIMARY} {m[PRIMARY]:.4f} "
                f"hr@10 {m['filtered/hr@10']:.4f} ({examples / max(train_s, 1e-9):.0f} examples/s, "
                f"train {train_s:.0f}s)",
                flush=True,
            )
            last_print = time.perf_counter()
        if stale >= patience:
            break
    model.load_state_dict(best_state)
    return {
        "valid": valid,
        "test": evaluate(model, data, "test", max_len, KS, 0, seed),
        "epochs": epoch,
        "best_epoch": best_epoch,
        "train_seconds": train_s,
        "examples_per_s": examples / max(train_s, 1e-9),
        "config": config,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="prepared twotower dataset directory")
    p.add_argument("--budget", type=float, required=True, help="training seconds (validation excluded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--eval-users", type=int, default=0, help="validation users per epoch (0 = all)")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args()
    result = run_sasrec(
        args.data, args.budget, seed=args.seed, threads=args.threads, max_len=args.max_len, eval_users=args.eval_users
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
