"""Offline corpus encoding: the candidate tower over every item, streamed to disk, with a manifest.

Writes ``EMB_DIR/``::

    embeddings.npy      float32 | float16 [N, D], unit rows (written in batches through a memmap)
    ids.npy             int64 [N] dense item index (the index's external id)
    item_ids.parquet    the original item id strings, row = dense index
    users_sample.npy    float32 [U_s, D] real user vectors (histories before the test target), used to
                        measure ANN recall on the queries the index will really see
    manifest.json       model version, dim, count, dtype, normalisation, throughput, codebook, created-at

Read an export with :func:`twotower.index.embeddings.load_embeddings` (the index layer's side).

Under ``torchrun`` (``WORLD_SIZE`` > 1, e.g. ``torchrun --nproc_per_node 2 -m twotower export ...``) every rank
encodes the batches ``rank, rank + W, ...`` of the same batch plan into a part file of the one temporary
directory rank 0 made; rank 0 then writes them into ``embeddings.npy`` row for row, writes the rest and swaps
the directory in once. Each batch holds the same items as in one process, so the export equals the
single-process one.

The directory is written under a temporary name and renamed, so readers never see half an export. An
existing ``EMB_DIR`` is replaced only when it is empty or an earlier export (it has ``manifest.json``);
anything else is refused before any work is done. An export killed half-way leaves ``.EMB_DIR.tmp-<pid>-*``
(or, between the renames, ``.EMB_DIR.old-<pid>-*``) beside it; the next export to ``EMB_DIR`` removes those of
processes that are gone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from ..errors import OutputError
from ..evaluate.evaluator import encode_requests
from ..features import Featurizer
from ..fsutil import file_in_the_way, remove_leftovers, sibling_names, swap_dir
from ..index.embeddings import EMB_KIND, manifest_kind
from ..train import distributed
from ..train.load import load_run
from ..train.run import check_model_fits, load_dataset, recorded_dataset

log = logging.getLogger(__name__)

EXPORT_FILES = ("embeddings.npy", "ids.npy", "item_ids.parquet", "users_sample.npy", "manifest.json")


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
    check_replaceable(out)
    shards = distributed.from_env(device)
    if shards is not None and device.startswith("cuda"):
        device = f"cuda:{shards.local_rank}"
    main = shards is None or shards.main
    model, cfg, version = load_run(run, device=device)
    data_dir = recorded_dataset(run, data_dir)
    data = load_dataset(data_dir)
    check_model_fits(cfg.model, data)
    feat = Featurizer(data, cfg.model)
    n, d = data.num_items, cfg.model.dim
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = old = None
    if main:
        # a killed export's temporaries: the pid in their names is gone, so this run's names never meet them
        remove_leftovers(out.parent, EXPORT_FILES, out.name, what="export", job="export")
        tmp, old = sibling_names(out)
    if shards is not None:
        tmp, old = shards.broadcast({"tmp": tmp, "old": old}).values()
    try:
        t0 = time.perf_counter()
        if shards is None:
            emb = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.dtype(dtype), shape=(n, d))
            for lo, hi, v in _encoded(model, feat, range(0, n, batch), batch, n, device, progress):
                emb[lo:hi] = v.astype(dtype)
        else:
            _encode_shard(model, feat, shards, tmp, batch, n, d, dtype, device, progress)
        secs = time.perf_counter() - t0
        if not main:
            return {}
        if shards is not None:
            emb = _join_parts(tmp, shards.world, batch, n, d, dtype)
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
            "kind": EMB_KIND,
            "model_version": version,
            "dim": d,
            "count": n,
            "dtype": dtype,
            "normalized": cfg.model.similarity == "cosine",  # dot: raw vectors, the norm is part of the score
            "metric": "inner_product",
            "items_per_s": round(n / max(secs, 1e-9), 1),
            "encode_seconds": round(secs, 3),
            "users_sample": int(len(users)),
            "codebook": cfg.model.codebook or None,  # the semantic IDs' codebook the model was trained with
            "text_dim": cfg.model.text_dim,  # item text vectors the candidate tower read (0 = none)
            "run": str(run.resolve()),
            "dataset": str(Path(data_dir).resolve()),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        check_replaceable(out)  # again: something may have been put there while we encoded
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        raise
    swap_dir(tmp, out, old)
    log.info("exported %d items (%.0f items/s) -> %s", n, manifest["items_per_s"], out)
    return manifest


def _encoded(model, feat, starts, batch: int, n: int, device, progress: bool):
    """(lo, hi, vectors float32 [hi - lo, D]) of the candidate tower over the item batches starting at ``starts``."""
    for lo in tqdm(starts, desc="encode items", unit="batch", disable=not progress):
        hi = min(n, lo + batch)
        yield lo, hi, model.encode_items(feat.items(np.arange(lo, hi)).to(device)).float().cpu().numpy()


def _encode_shard(model, feat, shards, tmp: Path, batch: int, n: int, d: int, dtype: str, device, progress: bool):
    """This rank's batches (``rank``, ``rank + W``, ...) into ``tmp/part-<rank>.npy``, rows in batch order."""
    starts = list(range(0, n, batch))[shards.rank :: shards.world]
    rows = sum(min(n, lo + batch) - lo for lo in starts)
    part = np.lib.format.open_memmap(tmp / f"part-{shards.rank}.npy", mode="w+", dtype=np.dtype(dtype), shape=(rows, d))
    row = 0
    for lo, hi, v in _encoded(model, feat, starts, batch, n, device, progress and shards.main):
        part[row : row + hi - lo] = v.astype(dtype)
        row += hi - lo
    part.flush()
    del part
    shards.barrier()  # every part is on disk


def _join_parts(tmp: Path, world: int, batch: int, n: int, d: int, dtype: str) -> np.ndarray:
    """Rank 0: the parts into ``embeddings.npy`` (batch ``b`` is in part ``b % world``), the parts removed."""
    emb = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.dtype(dtype), shape=(n, d))
    parts = [np.load(tmp / f"part-{r}.npy", mmap_mode="r") for r in range(world)]
    seen = [0] * world
    for b, lo in enumerate(range(0, n, batch)):
        r, hi = b % world, min(n, lo + batch)
        emb[lo:hi] = parts[r][seen[r] : seen[r] + hi - lo]
        seen[r] += hi - lo
    del parts
    for r in range(world):
        (tmp / f"part-{r}.npy").unlink()
    return emb


def check_replaceable(out: Path) -> None:
    """OutputError unless ``out`` is absent, an empty directory or an earlier export (its manifest.json says so).

    A prepared dataset also has a manifest.json: the kind keeps `--out DATA_DIR` from wiping it."""
    where = file_in_the_way(out)
    if where:
        raise OutputError(f"export directory {out} {where}; choose another --out")
    if out.is_dir() and any(out.iterdir()) and manifest_kind(out) != EMB_KIND:
        raise OutputError(
            f"{out} is not empty and is not an earlier export (no embeddings manifest.json), so export will not "
            "replace it; choose a new or empty --out"
        )
