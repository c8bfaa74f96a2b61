"""Exact and FAISS (HNSW, IVF-Flat, IVF-PQ) inner-product indexes behind one class.

The exact backend (blocked ``Q @ Vᵀ`` + top-k) is the oracle for every test. FAISS backends apply the
filters inside the search with ID selectors where they can (tombstones, allow-lists, one query's seen
items); a batch with different exclusions per query over-fetches and post-filters, and any row left with
fewer than ``k`` valid results is completed by the exact search over what the filters allow, so a filtered
search always returns ``k`` items when ``k`` exist. Very small allow-lists are searched exactly (a graph
walk restricted to 1 % of the nodes loses its way).

Building the FAISS structures lives in :mod:`twotower.index.faiss_backend`, the directory format in
:mod:`twotower.index.storage`; this module is the index object: mutation, search and its filters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..errors import ConfigError, IndexError_, VersionMismatch
from . import faiss_backend as fb
from . import storage
from .base import IndexConfig, as_queries, check_finite, normalise_exclude, pad_results
from .embeddings import in_slices
from .exact import blocked_topk, rescore

SEARCH_KNOBS = ("hnsw_ef_search", "ivf_nprobe", "refine_factor", "exact_block", "filter_exact_below")


class VectorIndex:
    """Items (external int64 ids) with unit vectors [N, D]; see the module docstring."""

    def __init__(self, dim: int, config: IndexConfig | None = None, model_version: str = "unknown"):
        self.dim, self.config, self.model_version = dim, config or IndexConfig(), model_version
        self.ids = np.zeros(0, np.int64)  # external id of each internal label
        self.alive = np.zeros(0, bool)
        self.vectors = np.zeros((0, dim), self.config.rows_dtype)
        self._faiss_index = None
        # items beyond the dataset's catalogue (``twotower index upsert``): storage.ADDED_ARRAYS, or empty
        self.catalogue: dict[str, np.ndarray] = {}
        # id -> label: a direct table over [0, max id] when the live ids are dense (an export's item indexes),
        # else (sorted live ids, their labels) for a binary search
        self._lookup: tuple[np.ndarray, ...] | None = None
        self._alive_sel = None
        self._kept_params = None  # (knobs, FAISS search parameters): see _params
        self._n_alive: int | None = None  # cached: counting 1M flags costs more than a FAISS search
        # Query rows the ANN search returned short (filters, or too few items in the probed lists) and that
        # exact search completed. If it climbs, raise ivf_nprobe / hnsw_ef_search: each one costs a scan.
        self.completed_exactly = 0

    # --- building and mutation -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        embeddings: np.ndarray,
        config: IndexConfig | None = None,
        model_version: str = "unknown",
        progress: bool = False,
    ) -> VectorIndex:
        """Index ``embeddings`` [N, D] (unit norm) under ``ids`` [N] (unique int64); ``progress``: a bar over
        the vectors added to the FAISS structure (added in slices of 64k).

        Read-only float32 ``embeddings`` (a memory-mapped export, :func:`~twotower.index.embeddings.
        load_embeddings`) are kept as they are, not copied: the build holds one copy of the vectors beside
        FAISS's; a writeable array is copied, so the caller may change it afterwards. With
        ``config.rows_dtype = "float16"`` the index keeps float16 rows instead (converted in slices)."""
        emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        ids = np.asarray(ids, dtype=np.int64)
        if emb.ndim != 2 or len(emb) != len(ids):
            raise ValueError(f"embeddings {list(emb.shape)} and ids {list(ids.shape)} do not match")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique")
        check_finite(emb, ids)
        idx = cls(emb.shape[1], config, model_version)
        cfg = idx.config
        if cfg.threads:
            fb.set_faiss_threads(cfg.threads)
        if cfg.backend != "exact":
            idx._faiss_index = fb.new_faiss_index(cfg, idx.dim, emb)
        idx._append(ids, emb, progress)
        return idx

    def _append(self, ids: np.ndarray, emb: np.ndarray, progress: bool = False) -> None:
        if self._faiss_index is not None and len(emb):
            from tqdm import tqdm

            step = 1 << 16
            desc = f"index: add to {self.config.backend}"
            parts = in_slices(emb, step)  # a memory-mapped export: one slice resident at a time
            total = -(-len(emb) // step)
            for lo, hi in tqdm(parts, desc=desc, unit="64k", total=total, disable=not progress or len(emb) <= step):
                self._faiss_index.add(emb[lo:hi])
        self.ids = np.concatenate([self.ids, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), bool)])
        rows = _rows(emb, self.config.rows_dtype)
        if len(self.vectors):
            self.vectors = np.concatenate([self.vectors, rows])
        else:
            self.vectors = rows
        self._invalidate()

    def _invalidate(self) -> None:
        self._lookup, self._alive_sel, self._n_alive, self._kept_params = None, None, None, None

    @property
    def n_alive(self) -> int:
        if self._n_alive is None:
            self._n_alive = int(self.alive.sum())
        return self._n_alive

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Internal labels of live ``ids`` (-1 where unknown or deleted). int64, same shape.

        Dense ids (non-negative, the largest below 4x the live count: an export's item indexes and the items
        upserted after them) go through a direct table, one memory access per id; others through a binary
        search of the sorted live ids (about 20 cache misses per id at 1M items: 0.16 ms for an adaptive
        index's 400-candidate shortlist, against 0.02 ms by the table)."""
        if self._lookup is None:
            live = np.flatnonzero(self.alive)
            live_ids = self.ids[live]
            top = int(live_ids.max()) + 1 if len(live) else 0
            if len(live) and int(live_ids.min()) >= 0 and top <= 4 * len(live) + 1024:
                table = np.full(top, -1, np.int64)
                table[live_ids] = live
                self._lookup = (table,)
            else:
                order = np.argsort(live_ids, kind="stable")
                self._lookup = (live_ids[order], live[order])
        ids = np.asarray(ids, dtype=np.int64)
        if len(self._lookup) == 1:
            table = self._lookup[0]
            inside = (ids >= 0) & (ids < len(table))  # the table is never empty: it was built from live ids
            return np.where(inside, table[np.where(inside, ids, 0)], -1)
        keys, labels = self._lookup
        pos = np.minimum(np.searchsorted(keys, ids), max(len(keys) - 1, 0))
        found = (keys[pos] == ids) if len(keys) else np.zeros(ids.shape, bool)
        return np.where(found, labels[pos] if len(keys) else -1, -1)

    def upsert(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Insert new ids, replace the vectors of existing ones; visible to the next search."""
        ids = np.asarray(ids, dtype=np.int64)
        emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if emb.shape != (len(ids), self.dim):
            raise ValueError(f"upsert needs embeddings of shape [{len(ids)}, {self.dim}], got {list(emb.shape)}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("upsert ids must be unique within one call")
        check_finite(emb, ids)
        self.delete(ids)
        self._append(ids, emb)

    def delete(self, ids: np.ndarray) -> int:
        """Tombstone ``ids`` (unknown ids are ignored); returns how many were live."""
        labels = self.labels_of(ids)
        labels = labels[labels >= 0]
        self.alive[labels] = False
        self._invalidate()
        return len(labels)

    def __len__(self) -> int:
        return self.n_alive

    def memory_bytes(self) -> int:
        """Bytes a loaded index keeps in memory for its searches: its FAISS structure, or the exact backend's
        rows. Beside a FAISS structure the rows are a read-only memory map once loaded
        (:func:`~twotower.index.storage.read_index_data`), touched only by IVF-PQ's re-scoring (the
        shortlists' rows) and the scans completing a filtered search: ``self.vectors.nbytes`` more on disk."""
        if self._faiss_index is None:
            return int(self.vectors.nbytes)
        return int(fb.faiss_module().serialize_index(self._faiss_index).nbytes)

    # --- search ----------------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, exclude=None, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product. queries [B, D] -> (scores float32 [B, K], ids int64 [B, K]), -1 padded."""
        scores, labels = self.search_labels(queries, k, exclude, allow)
        return scores, np.where(labels >= 0, self.ids[np.maximum(labels, 0)], -1)

    def search_labels(
        self, queries: np.ndarray, k: int, exclude=None, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` answered with internal labels (rows of :attr:`vectors`, -1 padded) instead of ids:
        what a caller that reads the rows next (an adaptive index's re-scoring) needs."""
        q = as_queries(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ex = normalise_exclude(exclude, len(q))
        allowed, n_allowed = self.alive, self.n_alive  # read-only below unless an allow-list narrows it
        if allow is not None:
            lab = self.labels_of(np.asarray(allow, dtype=np.int64))
            allowed = np.zeros_like(self.alive)
            allowed[lab[lab >= 0]] = True
            allowed &= self.alive
            n_allowed = int(allowed.sum())
        ex_labels = None if ex is None else [self.labels_of(e) for e in ex]
        ex_labels = None if ex_labels is None else [e[e >= 0] for e in ex_labels]
        small_allow = allow is not None and n_allowed < self.config.filter_exact_below * max(len(self.alive), 1)
        # k covering every allowed item (an adaptive index's shortlist on a small corpus): that is a scan, and a
        # graph walk asked for every node may miss some
        if self._faiss_index is None or small_allow or k >= n_allowed:
            return self._exact(q, k, allowed, ex_labels)
        return self._ann(q, k, allowed, allow is not None, ex_labels)

    def _exact(self, q: np.ndarray, k: int, allowed: np.ndarray, ex_labels) -> tuple[np.ndarray, np.ndarray]:
        n_dead = len(allowed) - (self.n_alive if allowed is self.alive else int(allowed.sum()))
        n_ex = 0 if ex_labels is None else max((len(e) for e in ex_labels), default=0)
        few = len(q) <= 8  # FAISS's per-query scan up to 8 queries, the GEMM tiles from 9 on
        if few and n_dead + n_ex <= 1024 and len(self.vectors) and self.vectors.dtype == np.float32:
            return self._exact_scan(q, k, allowed, ex_labels, n_dead + n_ex)
        if not len(self.vectors):
            return pad_results([np.zeros(0)] * len(q), [np.zeros(0, np.int64)] * len(q), k)
        # Few allowed rows: score only those. Otherwise mask the dead ones inside the scan. Exclusions are
        # per query: the top k + (its exclusions) of everything hold its top k of the rest (over-fetch).
        if n_dead > len(allowed) // 2:
            rows = np.flatnonzero(allowed)
            scores, labels = blocked_topk(q, self.vectors[rows], k + n_ex, self.config.exact_block)
            labels = np.where(labels >= 0, rows[np.maximum(labels, 0)], -1)
        else:
            dead = ~allowed if n_dead else None
            scores, labels = blocked_topk(q, self.vectors, k + n_ex, self.config.exact_block, dead)
        return self._first_k(scores, labels, k, None, ex_labels)

    def _exact_scan(self, q, k: int, allowed: np.ndarray, ex_labels, extra: int) -> tuple[np.ndarray, np.ndarray]:
        """Few queries: FAISS's SIMD scan of the vectors (near memory bandwidth; a GEMV + top-k is ~2x slower).
        It costs a full scan per query, so it serves up to 8 queries; more go through the GEMM tiles.
        The top ``k + extra`` of everything hold the top ``k`` of what the filters let through."""
        fetch = min(k + extra, len(self.vectors))
        D, L = fb.knn(q, self.vectors, fetch)
        return self._first_k(D, L, k, allowed, ex_labels)

    def _first_k(self, D: np.ndarray, L: np.ndarray, k: int, allowed: np.ndarray | None, ex_labels):
        """Over-fetched (scores [B, F], labels [B, F]) -> the first ``k`` per row that are valid (label >= 0),
        allowed (when ``allowed`` is given) and not among the row's exclusions, as padded labels."""
        scores, labels = [], []
        for b in range(len(D)):
            ok = L[b] >= 0
            if allowed is not None:
                ok &= allowed[np.maximum(L[b], 0)]
            if ex_labels is not None and len(ex_labels[b]):
                ok &= ~np.isin(L[b], ex_labels[b])
            scores.append(D[b][ok][:k])
            labels.append(L[b][ok][:k])
        return pad_results(scores, labels, k)

    def _ann(self, q, k, allowed, has_allow, ex_labels):
        """FAISS search with the filters inside it where a selector can carry them; rows it returns short are
        completed by :meth:`_exact` (counted in ``completed_exactly``)."""
        base = None
        if has_allow or self.n_alive < len(self.alive):
            if not has_allow and self._alive_sel is not None:
                base = self._alive_sel
            else:
                base = fb.bitmap_selector(allowed)
                if not has_allow:
                    self._alive_sel = base
        n_allowed = int(allowed.sum()) if has_allow else self.n_alive
        post_ex = ex_labels  # exclusions still to drop from FAISS's output (the rows' own list stays in ex_labels)
        if ex_labels is not None and len(q) == 1:
            # One query: its exclusions go inside the search as a selector.
            if len(ex_labels[0]):
                base = fb.excluding_selector(ex_labels[0], base)
            post_ex = None
        extra = 0 if post_ex is None else max(len(e) for e in post_ex)
        fetch = min(k + extra, len(self.alive))
        params = self._params(base)
        if fb.refines(self.config):  # IVF-PQ: refine_factor x more PQ candidates, re-scored from the rows
            wide = min(fetch * self.config.refine_factor, len(self.alive))
            _, wide_labels = self._faiss_index.search(q, wide, params=params)
            D, L = rescore(q, self.vectors, wide_labels, fetch)  # from the rows, not a FAISS-held copy
        else:
            D, L = self._faiss_index.search(q, fetch, params=params)
        if post_ex is None and L.shape[1] == k and (L >= 0).all():
            return D, L  # every row full, nothing left to drop (the usual one-query answer)
        scores_out, labels_out, short = [], [], []
        for b in range(len(q)):
            lab = L[b]
            ok = lab >= 0
            if post_ex is not None and len(post_ex[b]):
                ok &= ~np.isin(lab, post_ex[b])
            s, lab = D[b][ok][:k], lab[ok][:k]
            n_ex = 0 if ex_labels is None else int(allowed[np.unique(ex_labels[b])].sum())
            if len(lab) < min(k, n_allowed - n_ex):
                short.append(b)
            scores_out.append(s)
            labels_out.append(lab)
        if short:  # the graph / probed lists ran dry under the filters: complete these rows exactly
            self.completed_exactly += len(short)
            sub_ex = None if ex_labels is None else [ex_labels[b] for b in short]
            es, ei = self._exact(q[short], k, allowed, sub_ex)
            for j, b in enumerate(short):
                scores_out[b], labels_out[b] = es[j][ei[j] >= 0], ei[j][ei[j] >= 0]
        return pad_results(scores_out, labels_out, k)

    def _params(self, selector):
        """FAISS search parameters for the current knobs; the unfiltered ones (or the tombstones' selector) are
        built once and kept, as building them costs about as much as a small search's bookkeeping."""
        if selector is not None and selector is not self._alive_sel:
            return fb.search_params(self.config, selector)
        key = (selector is None, self.config.hnsw_ef_search, self.config.ivf_nprobe)
        if self._kept_params is None or self._kept_params[0] != key:
            self._kept_params = (key, fb.search_params(self.config, selector))
        return self._kept_params[1]

    def set_search_params(self, **kw) -> None:
        """Change search-time knobs in place: ``hnsw_ef_search``, ``ivf_nprobe``, ``refine_factor`` (positive
        ints), ``exact_block`` and ``filter_exact_below``. Build-time fields (backend, M, nlist, PQ) are
        refused: changing them here would make the saved manifest describe an index that was not built."""
        checked = {}
        for key, v in kw.items():  # check every value first: a refused call changes nothing
            if key not in SEARCH_KNOBS:
                raise ConfigError(
                    f"{key!r} is not a search-time parameter (one of {', '.join(SEARCH_KNOBS)}); "
                    "build-time parameters need a rebuild: VectorIndex.build(ids, vectors, IndexConfig(...))"
                )
            if key == "filter_exact_below":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ConfigError(f"filter_exact_below must be a fraction in [0, 1], got {v!r}", field=key)
                checked[key] = float(v)
            elif isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{key} must be a positive integer, got {v!r}", field=key)
            else:
                checked[key] = int(v)
        for key, v in checked.items():
            setattr(self.config, key, v)

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the index to directory ``path`` atomically (:mod:`twotower.index.storage`); ``extra`` goes
        into the manifest (recall, version, ...)."""
        manifest = storage.new_manifest(self.dim, len(self), len(self.alive), self.model_version, self.config, extra)
        arrays = {"ids": self.ids, "alive": self.alive, "vectors": self.vectors, **self.catalogue}
        storage.write_index_dir(path, arrays, self._faiss_index, manifest)

    @classmethod
    def load(
        cls, path: str | Path, expect_model_version: str | None = None, allow_version_mismatch: bool = False
    ) -> VectorIndex:
        """Load an index; checksums are verified first, so a truncated file is a clear error, not a crash."""
        path = Path(path)
        manifest = storage.read_index_manifest(path)
        mv = manifest.get("model_version")
        if expect_model_version is not None and mv != expect_model_version and not allow_version_mismatch:
            raise VersionMismatch(
                f"index {path} was built from model version {mv}, but the user encoder is version "
                f"{expect_model_version}; rebuild the index from this model's embeddings, or pass "
                "allow_version_mismatch=True (--allow-version-mismatch) if you really mean to mix them"
            )
        if "adaptive" in manifest:
            raise IndexError_(
                f"{path} is an adaptive index (a prefix index re-scored at full width): open it with "
                "twotower.index.adaptive.open_index"
            )
        arrays, faiss_index = storage.read_index_data(path)
        return cls.from_stored(manifest, arrays, faiss_index)

    @classmethod
    def from_stored(cls, manifest: dict, arrays: dict[str, np.ndarray], faiss_index) -> VectorIndex:
        """The index a verified manifest and its arrays (:mod:`twotower.index.storage`) describe."""
        idx = cls(manifest["dim"], from_dict(IndexConfig, manifest["config"]), manifest.get("model_version"))
        rows = arrays["vectors"]
        if rows.dtype != np.dtype(idx.config.rows_dtype) or rows.shape[1:] != (idx.dim,):
            raise IndexError_(
                f"the index's rows are {rows.dtype} {list(rows.shape)}, its manifest says {idx.config.rows_dtype} "
                f"[N, {idx.dim}]: the directory was altered; rebuild the index or roll back"
            )
        idx._faiss_index = faiss_index
        idx.ids, idx.alive, idx.vectors = arrays["ids"], arrays["alive"], arrays["vectors"]
        idx.catalogue = {k: arrays[k] for k in storage.ADDED_ARRAYS if k in arrays}
        return idx

    def info(self) -> dict:
        return json.loads(
            json.dumps(
                {
                    "dim": self.dim,
                    "count": len(self),
                    "backend": self.config.backend,
                    "model_version": self.model_version,
                }
            )
        )


def _rows(emb: np.ndarray, dtype: str) -> np.ndarray:
    """The index's own rows for the float32 vectors ``emb`` [n, D]: a read-only float32 array as it is (nobody
    can change it under us; a memory map stays one), a writeable one copied, float16 converted in slices
    (no whole float32 temporary)."""
    if dtype == "float32":
        return emb if not emb.flags.writeable else emb.copy()
    out = np.empty(emb.shape, np.float16)
    for lo, hi in in_slices(emb, 1 << 18):
        out[lo:hi] = emb[lo:hi]
    return out
