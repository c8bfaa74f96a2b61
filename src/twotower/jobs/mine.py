"""``twotower mine-negatives``: hard negatives for every training example from a trained run's model.

For each training target (the same examples the trainer makes: the query at window position ``j`` has seen
the user's events before it) the run's best checkpoint gives the user vector; the whole catalogue is scored
exactly (one ``[T, D] x [D, N]`` product per chunk), every item of the user's training events is removed
(history, positive, later positives: false negatives), and ``count`` items are drawn uniformly from the
ranks ``rank_from..rank_to`` of the rest. The file format and the training side are in
:mod:`twotower.train.hard_negatives`.

Resumable: the training windows are cut into fixed chunks, each written as ``OUT/.parts/part-NNNNN`` once
done (its draw seeded by ``(seed, chunk)``), so a killed job started again skips the finished chunks and the
result equals an uninterrupted run's. The parts directory records the model version, dataset and config;
parts of another model or config are refused (``--overwrite`` starts over). ``manifest.json`` is written
last, so a directory with one is complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from ..data.dataset import SequenceData
from ..errors import ArtifactError, OutputError
from ..features import Featurizer
from ..layout import SPLIT_TRAIN
from ..train.batches import training_windows
from ..train.hard_negatives import FORMAT, MANIFEST_FILE, NEGATIVES_FILE, MineConfig
from ..train.load import load_run
from ..train.run import check_model_fits, dataset_fingerprint, load_dataset, recorded_dataset

log = logging.getLogger(__name__)

PARTS = ".parts"
CHUNK_TOKENS = 16384  # window positions per chunk (and per resumable part), at most
SCORE_BYTES = 1 << 28  # a chunk's [T, N] float32 score matrix stays under 256 MiB (fewer positions for big N)


def chunk_tokens_for(num_items: int) -> int:
    """Window positions per chunk: CHUNK_TOKENS, fewer when the catalogue would make the scores too large."""
    return int(min(CHUNK_TOKENS, max(256, SCORE_BYTES // (4 * max(1, num_items)))))


def chunks(windows: np.ndarray, tokens: int = CHUNK_TOKENS) -> list[np.ndarray]:
    """Consecutive window indices, each chunk at most ``tokens`` window positions (at least one window)."""
    lengths = windows[:, 2] - windows[:, 1]
    out, lo, used = [], 0, 0
    for i, n in enumerate(lengths):
        if i > lo and used + n > tokens:
            out.append(np.arange(lo, i))
            lo, used = i, 0
        used += int(n)
    if lo < len(windows):
        out.append(np.arange(lo, len(windows)))
    return out


def draw_window(
    scores: torch.Tensor, excluded: torch.Tensor, cfg: MineConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``scores`` [T, N] with ``excluded`` bool [T, N]: ``cfg.count`` items drawn uniformly from the
    ranks ``rank_from..rank_to`` of the non-excluded items -> (items int64 [T, count], -1 = none; the
    number of eligible items in each row's window int64 [T])."""
    T, N = scores.shape
    hi = min(cfg.rank_to, N)
    s = scores.masked_fill(excluded, float("-inf"))
    top_s, top_i = torch.topk(s, hi, dim=1)  # [T, hi], best first
    win_s, win_i = top_s[:, cfg.rank_from - 1 :], top_i[:, cfg.rank_from - 1 :]  # [T, W]
    ok = torch.isfinite(win_s)
    keys = torch.rand(win_i.shape, generator=generator).masked_fill(~ok, 2.0)  # eligible first, in random order
    pick = keys.argsort(dim=1)[:, : cfg.count]
    items = win_i.gather(1, pick).masked_fill(~ok.gather(1, pick), -1)
    if items.shape[1] < cfg.count:  # a catalogue smaller than the window's start
        items = torch.cat([items, items.new_full((T, cfg.count - items.shape[1]), -1)], dim=1)
    return items, ok.sum(1)


def mine_chunk(
    model, feat: Featurizer, data: SequenceData, windows: np.ndarray, items: torch.Tensor, train_end: np.ndarray,
    cfg: MineConfig, chunk: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The mined negatives of one chunk of windows [W, 3]: {"rows", "items", "window"}."""
    user, start, end = windows[:, 0], windows[:, 1], windows[:, 2]
    inputs = feat.users(user, start, end)
    S = inputs.history.item.shape[1]
    rows = start[:, None] + np.arange(S)[None, :]
    rows = torch.from_numpy(np.where(rows < end[:, None], rows, -1))
    with torch.no_grad():
        q, target_rows = model.training_queries(inputs, rows)  # [T, D], [T]
        scores = q.float() @ items.T  # [T, N]
    target_rows = target_rows.numpy()
    q_user = data.user_of_event()[target_rows]
    excluded = torch.zeros(scores.shape, dtype=torch.bool)
    for u in np.unique(q_user):  # every item of the user's training events: history and later positives
        first = data.user_offsets[u]
        seen = torch.from_numpy(data.event_item[first : train_end[u]].astype(np.int64))
        excluded[torch.from_numpy(np.flatnonzero(q_user == u))[:, None], seen[None, :]] = True
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + chunk)
    mined, window = draw_window(scores, excluded, cfg, g)
    return {
        "rows": target_rows.astype(np.int64),
        "items": mined.numpy().astype(np.int32),
        "window": window.numpy().astype(np.int32),
    }


def _job_record(version: str, fingerprint: str, split: str, cfg: MineConfig, run: Path, chunk_tokens: int) -> dict:
    return {
        "model_version": version,
        "dataset": fingerprint,
        "split": split,
        "mine": asdict(cfg),
        "chunk_tokens": chunk_tokens,
        "run": str(run),
    }


def _open_parts(out: Path, record: dict, overwrite: bool) -> Path:
    """``out/.parts`` for this job: kept when it was started by the same model, data and config."""
    if (out / MANIFEST_FILE).exists() and not overwrite:
        raise OutputError(f"{out} already holds mined negatives; pass --overwrite to mine again")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; give a directory for the mined negatives")
    parts = out / PARTS
    job = parts / "job.json"
    if overwrite and out.exists():
        for p in (parts, out / NEGATIVES_FILE, out / MANIFEST_FILE):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    if job.is_file():
        before = json.loads(job.read_text())
        if before != record:
            diff = sorted(k for k in record if before.get(k) != record[k])
            raise ArtifactError(
                f"{parts} holds parts of another mining job (different {', '.join(diff)}: e.g. model "
                f"{before.get('model_version')} vs {record['model_version']}); pass --overwrite to start over"
            )
        return parts
    parts.mkdir(parents=True, exist_ok=True)
    tmp = job.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(job)
    return parts


def mine_negatives(
    run: str | Path,
    out: str | Path,
    cfg: MineConfig | None = None,
    data: SequenceData | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    chunk_tokens: int | None = None,
) -> dict:
    """Mine ``run``'s hard negatives into ``out`` (see the module docstring); returns the manifest.

    ``data``: the run's dataset (default: the path the run recorded). ``stop_after_chunks``: stop early, as a
    kill would (for tests); the manifest is then not written and the return value is ``{}``. ``chunk_tokens``:
    window positions per chunk (one resumable part; the draws are seeded per chunk, so it is recorded; default
    :func:`chunk_tokens_for` the catalogue).
    """
    cfg = cfg or MineConfig()
    run, out = Path(run), Path(out)
    t0 = time.perf_counter()
    model, rc, version = load_run(run)
    if data is None:
        data = load_dataset(recorded_dataset(run, None))
    check_model_fits(rc.model, data)
    fingerprint = dataset_fingerprint(data)
    chunk_tokens = chunk_tokens or chunk_tokens_for(data.num_items)
    split = rc.train.split
    parts = _open_parts(out, _job_record(version, fingerprint, split, cfg, run.resolve(), chunk_tokens), overwrite)
    model.eval()
    feat = Featurizer(data, rc.model)
    windows = training_windows(data, split, rc.model.max_len, rc.train.holdout_users)
    train = data.split(split) == SPLIT_TRAIN
    n_train = np.bincount(data.user_of_event()[train], minlength=data.num_users)
    train_end = data.user_offsets[:-1] + n_train  # training events are a prefix of each user's sequence
    with torch.no_grad():
        items = model.encode_items(feat.items()).float()  # [N, D]
    plan = chunks(windows, chunk_tokens)
    done = 0
    bar = tqdm(plan, desc="mining", unit="chunk", disable=not progress)
    for k, idx in enumerate(bar):
        part = parts / f"part-{k:05d}.safetensors"
        if part.exists():
            continue
        if stop_after_chunks is not None and done >= stop_after_chunks:
            return {}
        tensors = mine_chunk(model, feat, data, windows[idx], items, train_end, cfg, k)
        tmp = part.with_name(part.name + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(part)
        done += 1
    got = [load_file(str(parts / f"part-{k:05d}.safetensors")) for k in range(len(plan))]
    rows = np.concatenate([g["rows"] for g in got])
    order = np.argsort(rows, kind="stable")
    tensors = {name: np.ascontiguousarray(np.concatenate([g[name] for g in got])[order]) for name in got[0]}
    tmp = out / (NEGATIVES_FILE + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / NEGATIVES_FILE)
    filled = float((tensors["items"] >= 0).mean()) if tensors["items"].size else 0.0
    manifest = {
        "format": FORMAT,
        "kind": "twotower-mined-negatives",
        **_job_record(version, fingerprint, split, cfg, run.resolve(), chunk_tokens),
        "examples": int(len(rows)),
        "items": int(data.num_items),
        "filled": round(filled, 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = out / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST_FILE)
    shutil.rmtree(parts)
    log.info(
        "mined %d examples x %d negatives (ranks %d-%d, %.0f %% filled) with model %s in %.0f s -> %s",
        len(rows), cfg.count, cfg.rank_from, cfg.rank_to, 100 * filled, version, manifest["seconds"], out,
    )  # fmt: skip
    return manifest
