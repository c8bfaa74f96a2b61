"""An index on disk: one directory of arrays, the FAISS index and a checksummed manifest, replaced whole.

Layout (``N`` slots: live and tombstoned items, ``D`` dim)::

    manifest.json    format, dim, counts, model version, IndexConfig, metric, extra (recall, ...),
                     and the sha256 of every other file (checked before anything is loaded)
    ids.npy          int64   [N]     external id of each internal label
    alive.npy        bool    [N]     False = deleted (tombstone)
    vectors.npy      float32 or float16 (IndexConfig.rows_dtype) [N, D]  unit vectors (the exact backend's
                     data, IVF-PQ's re-scoring, the completion scans')
    faiss.index      FAISS's own format, no pickle (absent for the exact backend)
    full.npy         float16 [N, D'] full-width vectors of an adaptive index (the others then hold a prefix;
                     :mod:`twotower.index.adaptive`), absent otherwise
    added_*.npy      the catalogue additions (``twotower index upsert``): items beyond the dataset's, their id
                     strings and the model's bucketed features (:data:`ADDED_ARRAYS`), absent otherwise

Writing goes through :func:`twotower.fsutil.swap_dir` like every directory writer: the new index is
written to a temporary sibling and swapped in with two renames, so a reader sees the previous or the new
index, never half of one; siblings a killed writer left are removed by the next save to that path.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import to_dict
from ..errors import IndexError_
from ..fsutil import remove_leftovers, sibling_names, swap_dir
from . import faiss_backend
from .base import IndexConfig, read_manifest, write_manifest

FORMAT = 1
KIND = "twotower-index"
ARRAY_FILES = ("ids.npy", "alive.npy", "vectors.npy")
#: Items the index holds beyond its dataset's catalogue (``twotower index upsert``), row r = external id
#: ``manifest["catalogue"]["first_id"] + r``: id strings (unicode), bucketed item / author hashes int64 [n, H],
#: bucketed feature tokens int64 [n, F] (the service's item-table width), text vectors float16 [n, E] (when the
#: model reads text).
ADDED_ARRAYS = ("added_ids", "added_item", "added_author", "added_feat", "added_text")
OPTIONAL_ARRAYS = ("full.npy", *(f"{a}.npy" for a in ADDED_ARRAYS))  # adaptive full rows; additions
FAISS_FILE = "faiss.index"
#: Everything an index directory may hold: a temporary sibling holding anything else is not ours.
INDEX_FILES = frozenset({*ARRAY_FILES, *OPTIONAL_ARRAYS, FAISS_FILE, "manifest.json"})


def new_manifest(
    dim: int, count: int, slots: int, model_version: str, config: IndexConfig, extra: dict | None = None
) -> dict:
    """The manifest of an index with ``count`` live items in ``slots`` labels; ``extra`` is merged in last."""
    return {
        "format": FORMAT,
        "kind": KIND,
        "dim": dim,
        "count": count,
        "slots": slots,
        "model_version": model_version,
        "config": to_dict(config),
        "metric": "inner_product",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def write_index_dir(path: str | Path, arrays: dict[str, np.ndarray], faiss_index: Any, manifest: dict) -> None:
    """Write an index directory at ``path`` atomically (module docstring). ``arrays``: ``ids``, ``alive``,
    ``vectors``; ``faiss_index`` None for the exact backend. The file checksums are added to ``manifest``."""
    path = Path(os.path.abspath(path))  # "x/.." and "." have a real name and parent
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, INDEX_FILES, path.name, what="index", job="index save")
    tmp, old = sibling_names(path)
    try:
        files = list(ARRAY_FILES) + [n for n in OPTIONAL_ARRAYS if n.removesuffix(".npy") in arrays]
        for name in files:
            np.save(tmp / name, arrays[name.removesuffix(".npy")])
        if faiss_index is not None:
            faiss_backend.write(faiss_index, str(tmp / FAISS_FILE))
            files.append(FAISS_FILE)
        write_manifest(tmp, manifest, files)  # written last: marks the directory complete
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        raise
    swap_dir(tmp, path, old)


def read_index_manifest(path: Path) -> dict:
    """The manifest of the index directory ``path``, every file's checksum verified first."""
    manifest = read_manifest(path)
    if manifest.get("kind") != KIND:
        raise IndexError_(f"{path} is not a twotower index directory")
    return manifest


def read_index_data(path: Path) -> tuple[dict[str, np.ndarray], Any]:
    """``({"ids", "alive", "vectors"}, faiss index or None)`` of a directory whose manifest was read (and its
    checksums verified) by :func:`read_index_manifest`. An unreadable file is an :class:`IndexError_`.

    One copy of the vectors in memory: beside a FAISS structure (which holds what its searches read),
    ``vectors`` is memory-mapped read-only; only the scans that complete a filtered search touch its pages
    (and worker processes share them). Directories are replaced whole, never rewritten in place, so the
    mapping stays valid after a publish or rollback. The exact backend reads its vectors on every query and
    keeps them in memory."""
    try:
        faiss_index = faiss_backend.read(str(path / FAISS_FILE)) if (path / FAISS_FILE).exists() else None
        names = list(ARRAY_FILES) + [n for n in OPTIONAL_ARRAYS if (path / n).exists()]
        mapped = {"vectors.npy"} if faiss_index is not None else set()
        arrays = {}
        for name in names:
            mode = "r" if name in mapped else None
            arrays[name.removesuffix(".npy")] = np.load(path / name, allow_pickle=False, mmap_mode=mode)
    except (OSError, ValueError, RuntimeError) as exc:
        raise IndexError_(f"cannot read index {path}: {exc}; rebuild it or roll back") from exc
    slots = len(arrays["alive"])
    if faiss_index is not None and faiss_index.ntotal != slots:
        n = faiss_index.ntotal
        raise IndexError_(f"{path}: FAISS index holds {n} vectors, manifest {slots}; rebuild the index")
    return arrays, faiss_index
