"""Adaptive retrieval over Matryoshka vectors: an index over a short prefix, re-scored at full width.

Kusupati et al. 2022 ("Matryoshka Representation Learning", adaptive retrieval): a model trained with the
Matryoshka loss (``train.matryoshka_dims``) gives vectors whose first ``d`` coordinates are an embedding of
their own. The ANN structure is built over the first ``prefix_dim`` coordinates (unit again), so it is
``D / prefix_dim`` times smaller and faster to walk; a query fetches a shortlist of ``shortlist * k``
candidates there (the same filters: tombstones, allow-lists, the user's seen items), and the full vectors
(kept as float16) re-score the shortlist to return the top ``k``. With a shortlist as large as the corpus it
is exact full-width search (the test oracle).

On disk it is an index directory like any other (:mod:`twotower.index.storage`: the prefix vectors, the FAISS
structure, and ``full.npy``, float16 [N, D]) whose manifest carries ``adaptive``: the prefix and full widths
and the default shortlist. :func:`open_index` opens either kind; publishing, rollback and the service go
through it, so an adaptive index is published, listed, rolled back and served like a plain one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import ConfigError, IndexError_, VersionMismatch
from . import storage
from .base import IndexConfig, as_queries, check_finite
from .exact import rescore
from .vector_index import VectorIndex


def prefix_of(vectors: np.ndarray, dim: int, normalized: bool = True) -> np.ndarray:
    """The first ``dim`` coordinates of ``vectors`` [N, D] as float32 [N, dim], unit again when the vectors
    are (cosine models); a dot-product model's prefix keeps its norm."""
    # always a copy: the slice of a single row counts as contiguous, and normalising a view in place would
    # change the caller's vectors (a one-query search then re-scored with a mutated query)
    p = np.array(np.asarray(vectors)[:, :dim], dtype=np.float32, order="C", copy=True)
    if normalized:
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    return p


class AdaptiveIndex:
    """A prefix :class:`VectorIndex` plus full-width float16 vectors; ``search`` takes full-width queries."""

    def __init__(self, inner: VectorIndex, full: np.ndarray, shortlist: int = 4, normalized: bool = True):
        if full.ndim != 2 or len(full) != len(inner.alive):
            raise ValueError(f"full vectors {list(full.shape)} do not match the prefix index's {len(inner.alive)}")
        if shortlist < 1:
            raise ValueError(f"shortlist must be >= 1, got {shortlist}")
        self.inner, self.full = inner, np.ascontiguousarray(full, dtype=np.float16)
        self.shortlist, self.normalized = int(shortlist), normalized

    @property
    def prefix_dim(self) -> int:
        return self.inner.dim

    @property
    def dim(self) -> int:
        return int(self.full.shape[1])

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        embeddings: np.ndarray,
        prefix_dim: int,
        config: IndexConfig | None = None,
        model_version: str = "unknown",
        shortlist: int = 4,
        normalized: bool = True,
        progress: bool = False,
    ) -> AdaptiveIndex:
        """Index the first ``prefix_dim`` coordinates of ``embeddings`` [N, D]; keep the full rows as float16."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or not 1 <= prefix_dim < emb.shape[1]:
            raise ValueError(f"prefix_dim must be within [1, {emb.shape[1] - 1}] for {list(emb.shape)} vectors")
        check_finite(emb, np.asarray(ids))
        cfg = dataclasses.replace(config or IndexConfig(), prefix_dim=prefix_dim, shortlist=shortlist)
        prefix = prefix_of(emb, prefix_dim, normalized)
        prefix.flags.writeable = False  # ours alone: the prefix index keeps it without a copy
        inner = VectorIndex.build(ids, prefix, cfg, model_version, progress)
        return cls(inner, emb.astype(np.float16), shortlist, normalized)

    def __len__(self) -> int:
        return len(self.inner)

    def upsert(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Insert or replace ``ids`` with full-width ``embeddings`` [n, D]."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"upsert needs [n, {self.dim}] full-width vectors, got {list(emb.shape)}")
        before = len(self.inner.alive)
        self.inner.upsert(ids, prefix_of(emb, self.prefix_dim, self.normalized))
        added = len(self.inner.alive) - before  # the prefix index appends new labels for every upserted id
        self.full = np.concatenate([self.full, emb[len(emb) - added :].astype(np.float16)])

    def delete(self, ids: np.ndarray) -> int:
        return self.inner.delete(ids)

    def search(
        self, queries: np.ndarray, k: int, exclude=None, allow: np.ndarray | None = None, shortlist: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Full-width queries [B, D] -> (scores float32 [B, K], ids int64 [B, K]) by full-width inner product
        over a shortlist of ``shortlist * k`` (default: the index's) from the prefix index."""
        q = as_queries(queries, self.dim)
        factor = self.shortlist if shortlist is None else int(shortlist)
        if factor < 1:
            raise ValueError(f"shortlist must be >= 1, got {factor}")
        fetch = max(k, min(factor * k, len(self.inner.alive)))
        # the shortlist as the prefix index's labels (rows of both row tables), -1 where padded: [B, F]
        _, labels = self.inner.search_labels(prefix_of(q, self.prefix_dim, self.normalized), fetch, exclude, allow)
        top_s, top_l = rescore(q, self.full, labels, k)  # at full width, from the float16 rows
        top_i = np.where(top_l >= 0, self.inner.ids[np.maximum(top_l, 0)], -1)
        if top_s.shape[1] < k:  # a corpus smaller than k
            pad = k - top_s.shape[1]
            top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
        return top_s, top_i

    def memory_bytes(self) -> int:
        """Bytes a served index keeps in memory: the prefix index's (:meth:`VectorIndex.memory_bytes`: its
        FAISS structure, the float32 prefix rows being a memory map beside it) and the float16 full rows."""
        return self.inner.memory_bytes() + int(self.full.nbytes)

    # --- the VectorIndex surface the service and publishing read ------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self.inner.ids

    @property
    def config(self) -> IndexConfig:
        return self.inner.config

    @property
    def completed_exactly(self) -> int:
        return self.inner.completed_exactly

    @completed_exactly.setter
    def completed_exactly(self, value: int) -> None:
        self.inner.completed_exactly = value

    def set_search_params(self, **kw) -> None:
        """The prefix index's search knobs, plus ``shortlist`` (candidates per result to re-score)."""
        if "shortlist" in kw:
            v = kw.pop("shortlist")
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"shortlist must be a positive integer, got {v!r}", field="shortlist")
            self.inner.set_search_params(**kw)
            self.shortlist = self.inner.config.shortlist = int(v)
        else:
            self.inner.set_search_params(**kw)

    @property
    def catalogue(self) -> dict[str, np.ndarray]:
        """The catalogue additions (see :class:`VectorIndex`); they live with the prefix index."""
        return self.inner.catalogue

    @catalogue.setter
    def catalogue(self, value: dict[str, np.ndarray]) -> None:
        self.inner.catalogue = value

    def info(self) -> dict:
        return {**self.inner.info(), "dim": self.dim, "prefix_dim": self.prefix_dim, "shortlist": self.shortlist}

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the index directory ``path`` atomically (one checksummed manifest over every file)."""
        inner = self.inner
        adaptive = {"prefix_dim": self.prefix_dim, "dim": self.dim, "shortlist": self.shortlist}
        manifest = storage.new_manifest(
            inner.dim,
            len(self),
            len(inner.alive),
            self.model_version,
            inner.config,
            {**(extra or {}), "adaptive": {**adaptive, "normalized": self.normalized}},
        )
        arrays = {
            "ids": inner.ids,
            "alive": inner.alive,
            "vectors": inner.vectors,
            "full": self.full,
            **inner.catalogue,
        }
        storage.write_index_dir(path, arrays, inner._faiss_index, manifest)

    @classmethod
    def load(
        cls,
        path: str | Path,
        expect_model_version: str | None = None,
        allow_version_mismatch: bool = False,
        expect_dim: int | None = None,
    ) -> AdaptiveIndex:
        """Load ``path`` (checksums first); refuse another model version, or a model of another width
        (``expect_dim``: the user tower's output width)."""
        path = Path(path)
        manifest = storage.read_index_manifest(path)
        ad = manifest.get("adaptive")
        if ad is None:
            raise IndexError_(f"{path} is a plain index, not an adaptive one: open it with open_index")
        _check_version(path, manifest.get("model_version"), expect_model_version, allow_version_mismatch)
        if expect_dim is not None and ad["dim"] != expect_dim:
            raise VersionMismatch(
                f"adaptive index {path} re-scores {ad['dim']}-dim vectors (prefix {ad['prefix_dim']}), the model's "
                f"are {expect_dim}-dim; rebuild it from this model's embeddings"
            )
        arrays, faiss_index = storage.read_index_data(path)
        if "full" not in arrays or arrays["full"].shape != (len(arrays["alive"]), ad["dim"]):
            raise IndexError_(f"{path}: the full-width rows are missing or of the wrong shape; rebuild the index")
        inner = VectorIndex.from_stored(manifest, arrays, faiss_index)
        return cls(inner, arrays["full"], ad["shortlist"], ad.get("normalized", True))


def _check_version(path: Path, have: str | None, expect: str | None, allow: bool) -> None:
    if expect is not None and have != expect and not allow:
        raise VersionMismatch(
            f"index {path} was built from model version {have}, but the user encoder is version {expect}; "
            "rebuild the index from this model's embeddings, or pass allow_version_mismatch=True "
            "(--allow-version-mismatch) if you really mean to mix them"
        )


def build_index(
    ids: np.ndarray,
    embeddings: np.ndarray,
    config: IndexConfig,
    model_version: str = "unknown",
    normalized: bool = True,
    progress: bool = False,
) -> VectorIndex | AdaptiveIndex:
    """``config.prefix_dim`` > 0: an :class:`AdaptiveIndex` over that prefix; else a plain VectorIndex."""
    if config.prefix_dim:
        return AdaptiveIndex.build(
            ids, embeddings, config.prefix_dim, config, model_version, config.shortlist, normalized, progress
        )
    return VectorIndex.build(ids, embeddings, config, model_version, progress)


def open_index(
    path: str | Path,
    expect_model_version: str | None = None,
    allow_version_mismatch: bool = False,
    expect_dim: int | None = None,
) -> VectorIndex | AdaptiveIndex:
    """Load the index directory ``path`` whichever kind it is (checksums first)."""
    manifest = storage.read_index_manifest(Path(path))
    if "adaptive" in manifest:
        return AdaptiveIndex.load(path, expect_model_version, allow_version_mismatch, expect_dim)
    return VectorIndex.load(path, expect_model_version, allow_version_mismatch)
