"""Reading an embeddings export (written by :mod:`twotower.jobs.export`): the index's input.

An export directory ``EMB_DIR/`` holds ``embeddings.npy`` (float32 | float16 [N, D], unit rows), ``ids.npy``
(int64 [N], the index's external ids), ``item_ids.parquet``, ``users_sample.npy`` and ``manifest.json``
(``kind``, model version, dim, count, dtype, ...). This module only reads: the index layer never imports the
job that writes it. Only ``.npy`` (``allow_pickle=False``) and JSON are read.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import EmbeddingsError

EMB_KIND = "twotower-embeddings"  # manifest.json "kind" of an export directory


def manifest_kind(emb_dir: str | Path) -> str | None:
    """The ``kind`` of ``emb_dir/manifest.json``, or None when it is missing, garbled or not an object.

    A prepared dataset also has a manifest.json: the kind tells an export from it."""
    try:
        return json.loads((Path(emb_dir) / "manifest.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):  # missing, garbled, or not an object
        return None


def load_embeddings(emb_dir: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids int64 [N], embeddings float32 [N, D], manifest) of an export directory.

    The embeddings are read-only: a float32 export is memory-mapped (no copy in memory; an index built from it
    keeps the mapping rather than a copy, :meth:`~twotower.index.VectorIndex.build`), a float16 one is
    converted once.

    A missing or unreadable array is a ``FileNotFoundError``; a damaged manifest, or arrays whose shapes
    disagree with it, an :class:`~twotower.errors.EmbeddingsError`; both name the export command that redoes it.
    """
    emb_dir = Path(emb_dir)
    mf = emb_dir / "manifest.json"
    if not mf.is_file():
        raise FileNotFoundError(f"{emb_dir} is not an embeddings export (no manifest.json); run `twotower export`")
    redo = f"re-run `twotower export --out {emb_dir}`"
    try:
        manifest = json.loads(mf.read_text())
        count, dim, _ = int(manifest["count"]), int(manifest["dim"]), str(manifest["model_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EmbeddingsError(f"{mf} is damaged ({type(exc).__name__}: {exc}); {redo}") from exc
    try:
        ids = np.load(emb_dir / "ids.npy", allow_pickle=False)
        emb = np.load(emb_dir / "embeddings.npy", allow_pickle=False, mmap_mode="r")
        if emb.dtype != np.float32:
            emb = emb.astype(np.float32)
            emb.flags.writeable = False
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"{emb_dir}: embeddings unreadable ({exc}); {redo}") from exc
    if emb.shape != (count, dim) or ids.shape != (count,):
        raise EmbeddingsError(
            f"{emb_dir}: embeddings {list(emb.shape)} and ids {list(ids.shape)} do not match the manifest "
            f"(count {count}, dim {dim}); {redo}"
        )
    return ids, emb, manifest


def _mapping(rows: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` under ``rows`` (a ``np.memmap``, or a view of one), else None."""
    obj = rows
    while obj is not None:
        if isinstance(obj, mmap.mmap):
            return obj
        if isinstance(obj, np.memmap) and isinstance(getattr(obj, "_mmap", None), mmap.mmap):
            return obj._mmap
        obj = getattr(obj, "base", None)
    return None


def release_rows(rows: np.ndarray, lo: int = 0, hi: int | None = None) -> None:
    """Drop rows ``lo:hi`` of a memory-mapped array [N, ...] from this process's resident memory once a scan
    has read them (``madvise(MADV_DONTNEED)`` on a read-only file mapping): the pages stay in the kernel's page
    cache and a later read maps them again without a disk read, but a scan over a memory-mapped export holds
    one slice at a time instead of the whole file in its RSS. A no-op for an array that is not a read-only memory
    map (a writeable copy-on-write map would lose its changes)."""
    if rows.flags.writeable or not rows.flags.c_contiguous:
        return
    mm = _mapping(rows)
    hi = len(rows) if hi is None else min(hi, len(rows))
    if mm is None or hi <= lo or not hasattr(mm, "madvise"):
        return
    part = rows[lo:hi]
    start = part.ctypes.data - np.frombuffer(mm, np.uint8).ctypes.data
    first = start - start % mmap.PAGESIZE
    # whole pages only inside the slice's span; the pages it shares with its neighbours go too (harmless:
    # a later read maps them again)
    length = start + part.nbytes - first
    mm.madvise(mmap.MADV_DONTNEED, first, min(length, len(mm) - first))


def in_slices(rows: np.ndarray, step: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` over ``rows`` [N, ...] in slices of ``step``; once the caller's loop body has read a slice,
    :func:`release_rows` drops it, so a scan over a memory-mapped array keeps one slice resident."""
    for lo in range(0, len(rows), step):
        hi = min(lo + step, len(rows))
        yield lo, hi
        release_rows(rows, lo, hi)
