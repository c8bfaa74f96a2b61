"""One small index interface shared by the exact and the FAISS backends.

Every backend scores by **inner product on unit vectors** (cosine), the model's own score. Items keep
external ``int64`` ids; backends hold vectors under internal labels ``0..n-1`` with an ``alive`` mask, so
deletes are tombstones (FAISS HNSW cannot remove) and upserts are delete + add. Filters:

* ``exclude``: per query, ids that must not be returned (the user's seen items);
* ``allow``: ids that may be returned (an allow-list by item feature), shared by the batch.

A search returns ``(scores float32 [B, K], ids int64 [B, K])``, best first; when fewer than ``k`` items pass
the filters the tail is padded with score ``-inf`` and id ``-1``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import check, check_float, check_int
from ..errors import IndexError_
from .embeddings import in_slices

BACKENDS = ("exact", "hnsw", "ivfflat", "ivfpq")
ROWS_DTYPES = ("float32", "float16")
# integer knobs: (lowest, highest or None)
_INT_BOUNDS = {
    "hnsw_m": (2, 512),
    "hnsw_ef_construction": (1, None),
    "hnsw_ef_search": (1, None),
    "ivf_nlist": (0, None),
    "ivf_nprobe": (1, None),
    "pq_m": (1, None),
    "pq_bits": (1, 16),
    "refine_factor": (1, None),
    "exact_block": (1, None),
    "threads": (0, None),
    "prefix_dim": (0, None),
    "shortlist": (1, None),
}


@dataclass
class IndexConfig:
    """Backend and its parameters. Saved in every index manifest.

    Checked when built: a bad value is a :class:`~twotower.errors.ConfigError` naming the field (also its
    ``field`` attribute), the value and what is allowed.
    """

    backend: str = "hnsw"  # exact | hnsw | ivfflat | ivfpq
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0  # 0 = about 4 * sqrt(N)
    ivf_nprobe: int = 32
    pq_m: int = 16  # sub-quantisers (dim must be divisible)
    pq_bits: int = 8
    refine: bool = True  # IVF-PQ: re-rank the PQ shortlist with exact inner products (from the rows below)
    refine_factor: int = 4
    # The index's own copy of the vectors (vectors.npy: the exact backend's data, the scans that complete a
    # filtered search, IVF-PQ's re-scoring; memory-mapped beside a FAISS structure once loaded). float16
    # halves it on disk and in the page cache; scores computed from it are float16-rounded.
    rows_dtype: str = "float32"  # float32 | float16
    exact_block: int = 2048  # exact backend, BLAS path: items per GEMM tile (the [B, block] tile stays in cache)
    filter_exact_below: float = 0.02  # allow-lists smaller than this fraction are searched exactly
    threads: int = 0  # FAISS OpenMP threads (0 = library default)
    # Adaptive retrieval (Matryoshka models, twotower.index.adaptive): build the backend over the first
    # prefix_dim coordinates and re-score shortlist x k candidates with the full vectors (0 = full width).
    prefix_dim: int = 0
    shortlist: int = 4
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.backend in BACKENDS, "backend", self.backend, f"use one of {', '.join(BACKENDS)}")
        check(self.rows_dtype in ROWS_DTYPES, "rows_dtype", self.rows_dtype, f"use one of {', '.join(ROWS_DTYPES)}")
        # FAISS takes these as C ints: a zero or negative one crashes it (HNSW M <= 0, pq_bits 0) or asks
        # it for all memory (M = -1), so each is checked here, before any FAISS call
        for name, (lo, hi) in _INT_BOUNDS.items():
            check_int(self, name, lo, hi)
        check_float(self, "filter_exact_below", 0.0, 1.0)  # a fraction of the corpus


def check_finite(vectors: np.ndarray, ids: np.ndarray) -> None:
    """Refuse vectors with NaN or inf: FAISS's HNSW never finishes a search over one, and no backend could
    rank it. The message names the first bad ids. Checked in slices (a memory-mapped export stays one slice
    resident, :func:`~twotower.index.embeddings.in_slices`)."""
    bad = np.zeros(len(vectors), bool)
    for lo, hi in in_slices(vectors, 1 << 18):
        bad[lo:hi] = ~np.isfinite(vectors[lo:hi]).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {len(vectors)} vectors hold NaN or inf (ids {ids[bad][:5].tolist()}"
            f"{' ...' if bad.sum() > 5 else ''}); re-export them from a healthy checkpoint"
        )


def as_queries(q: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(q, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"queries must have shape [B, {dim}], got {list(q.shape)}")
    if not np.isfinite(q).all():
        raise ValueError("queries contain NaN or inf")
    return np.ascontiguousarray(q)


def normalise_exclude(exclude, batch: int) -> list[np.ndarray] | None:
    """``exclude`` as one int64 array per query (a single array applies to every query)."""
    if exclude is None:
        return None
    if isinstance(exclude, np.ndarray) and exclude.ndim == 1 and exclude.dtype != object:
        return [exclude.astype(np.int64)] * batch
    ex = [np.asarray(e, dtype=np.int64).ravel() for e in exclude]
    if len(ex) != batch:
        raise ValueError(f"exclude has {len(ex)} lists for {batch} queries")
    return ex


def pad_results(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    B = len(scores)
    out_s = np.full((B, k), -np.inf, np.float32)
    out_i = np.full((B, k), -1, np.int64)
    for b in range(B):
        n = min(k, len(ids[b]))
        out_s[b, :n], out_i[b, :n] = scores[b][:n], ids[b][:n]
    return out_s, out_i


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(path: Path, manifest: dict, files: Sequence[str]) -> None:
    manifest = {**manifest, "files": {f: sha256_file(path / f) for f in files}}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(path: Path, verify: bool = True) -> dict:
    """Read ``manifest.json`` and check every listed file's checksum (truncation -> a clear error)."""
    mf = path / "manifest.json"
    if not mf.is_file():
        raise IndexError_(f"{path} has no manifest.json: not an index (build one with `twotower index build`)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as exc:
        raise IndexError_(f"{mf} is corrupt ({exc}); rebuild the index or roll back") from exc
    if verify:
        for name, digest in manifest.get("files", {}).items():
            f = path / name
            if not f.is_file():
                raise IndexError_(f"index file {f} is missing; rebuild the index or roll back")
            if sha256_file(f) != digest:
                raise IndexError_(
                    f"index file {f} is corrupt or truncated (checksum mismatch); "
                    "rebuild the index or roll back to an earlier version"
                )
    return manifest
