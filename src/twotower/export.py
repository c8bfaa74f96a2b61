"""Offline corpus encoding: the candidate tower over every item, streamed to disk, with a manifest.

Writes ``EMB_DIR/``::

    embeddings.npy      float32 | float16 [N, D], unit rows (written in batches through a memmap)
    ids.npy             int64 [N] dense item index (the index's external id)
    item_ids.parquet    the original item id strings, row = dense index
    users_sample.npy    float32 [U_s, D] real user vectors (histories before the test target), used to
                        measure ANN recall on the queries the index will really see
    manifest.json       model version, dim, count, dtype, normalisation, throughput, created-at

The directory is written under a temporary name and renamed, so readers never see half an export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from .data.dataset import SequenceData
from .evaluate.evaluator import encode_requests
from .features import Featurizer
from .train.loop import load_model

log = logging.getLogger(__name__)


@torch.no_grad()
def export_items(
    run: str | Path,
    out: str | Path,
    dtype: str = "float32",
    batch: int = 65536,
    user_sample: int = 2000,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Encode the whole corpus with the run's best checkpoint; returns the manifest."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    run, out = Path(run), Path(out)
    model, cfg, version = load_model(run, device=device)
    if data_dir is None:
        rec = run / "data_path.txt"
        if not rec.is_file():
            raise FileNotFoundError(f"{run} does not record its dataset; pass --data DIR")
        data_dir = rec.read_text().strip()
    data = SequenceData.load(data_dir)
    feat = Featurizer(data, cfg.model)
    n, d = data.num_items, cfg.model.dim
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        emb = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.dtype(dtype), shape=(n, d))
        t0 = time.perf_counter()
        for lo in tqdm(range(0, n, batch), desc="encode items", unit="batch", disable=not progress):
            hi = min(n, lo + batch)
            v = model.encode_items(feat.items(np.arange(lo, hi)).to(device)).float().cpu().numpy()
            emb[lo:hi] = v.astype(dtype)
        secs = time.perf_counter() - t0
        emb.flush()
        del emb
        np.save(tmp / "ids.npy", np.arange(n, dtype=np.int64))
        pq.write_table(pa.table({"item_id": pa.array(data.item_ids().astype(str))}), tmp / "item_ids.parquet")
        users, rows = data.eval_targets(cfg.train.split, "test")
        if len(users) > user_sample:
            keep = np.sort(np.random.default_rng(0).choice(len(users), user_sample, replace=False))
            users, rows = users[keep], rows[keep]
        uvec = [
            encode_requests(model, feat, users[i : i + 512], rows[i : i + 512], device=device).float().cpu()
            for i in range(0, len(users), 512)
        ]
        np.save(tmp / "users_sample.npy", torch.cat(uvec).numpy() if uvec else np.zeros((0, d), np.float32))
        manifest = {
            "kind": "twotower-embeddings",
            "model_version": version,
            "dim": d,
            "count": n,
            "dtype": dtype,
            "normalized": True,
            "metric": "inner_product",
            "items_per_s": round(n / max(secs, 1e-9), 1),
            "encode_seconds": round(secs, 3),
            "users_sample": int(len(users)),
            "run": str(run.resolve()),
            "dataset": str(Path(data_dir).resolve()),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d items (%.0f items/s) -> %s", n, manifest["items_per_s"], out)
    return manifest


def load_embeddings(emb_dir: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids int64 [N], embeddings float32 [N, D], manifest) of an export directory."""
    emb_dir = Path(emb_dir)
    mf = emb_dir / "manifest.json"
    if not mf.is_file():
        raise FileNotFoundError(f"{emb_dir} is not an embeddings export (no manifest.json); run `twotower export`")
    manifest = json.loads(mf.read_text())
    try:
        ids = np.load(emb_dir / "ids.npy", allow_pickle=False)
        emb = np.load(emb_dir / "embeddings.npy", allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{emb_dir}: embeddings unreadable ({exc}); re-run `twotower export`") from exc
    if emb.shape != (manifest["count"], manifest["dim"]) or len(ids) != len(emb):
        raise ValueError(f"{emb_dir}: embeddings {list(emb.shape)} do not match the manifest; re-run export")
    return ids, emb, manifest
