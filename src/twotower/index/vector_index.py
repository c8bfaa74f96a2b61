"""Exact and FAISS (HNSW, IVF-Flat, IVF-PQ) inner-product indexes behind one class.

The exact backend (blocked ``Q @ Vᵀ`` + top-k) is the oracle for every test. FAISS backends apply the
filters inside the search with ID selectors where they can (tombstones, allow-lists, one query's seen
items); a batch with different exclusions per query over-fetches and post-filters, and any row left with
fewer than ``k`` valid results is completed by the exact search over what the filters allow, so a filtered
search always returns ``k`` items when ``k`` exist. Very small allow-lists are searched exactly (a graph
walk restricted to 1 % of the nodes loses its way).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import IndexError_, VersionMismatch
from .base import IndexConfig, as_queries, check_finite, normalise_exclude, pad_results, read_manifest, write_manifest
from .exact import blocked_topk

SEARCH_KNOBS = ("hnsw_ef_search", "ivf_nprobe", "refine_factor", "exact_block", "filter_exact_below")

log = logging.getLogger(__name__)
FORMAT = 1


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError("FAISS is required for ANN backends: pip install faiss-cpu") from exc
    return faiss


class VectorIndex:
    """Items (external int64 ids) with unit vectors [N, D]; see the module docstring."""

    def __init__(self, dim: int, config: IndexConfig | None = None, model_version: str = "unknown"):
        self.dim, self.config, self.model_version = dim, config or IndexConfig(), model_version
        self.ids = np.zeros(0, np.int64)  # external id of each internal label
        self.alive = np.zeros(0, bool)
        self.vectors = np.zeros((0, dim), np.float32)
        self._faiss_index = None
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None  # (sorted live ids, their labels)
        self._alive_sel = None
        self._n_alive: int | None = None  # cached: counting 1M flags costs more than a FAISS search
        # Query rows the ANN search returned short (filters, or too few items in the probed lists) and that
        # exact search completed. If it climbs, raise ivf_nprobe / hnsw_ef_search: each one costs a scan.
        self.completed_exactly = 0

    # --- building and mutation -------------------------------------------------------------------------
    @classmethod
    def build(
        cls, ids: np.ndarray, embeddings: np.ndarray, config: IndexConfig | None = None, model_version: str = "unknown"
    ) -> VectorIndex:
        """Index ``embeddings`` [N, D] (unit norm) under ``ids`` [N] (unique int64)."""
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
            _faiss().omp_set_num_threads(cfg.threads)
        if cfg.backend != "exact":
            idx._faiss_index = idx._new_faiss(emb)
        idx._append(ids, emb)
        return idx

    def _new_faiss(self, train: np.ndarray):
        faiss, cfg, d = _faiss(), self.config, self.dim
        ip = faiss.METRIC_INNER_PRODUCT
        if cfg.backend == "hnsw":
            index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, ip)
            index.hnsw.efConstruction = cfg.hnsw_ef_construction
            return index
        nlist = cfg.ivf_nlist or max(1, min(len(train) // 39, int(4 * np.sqrt(max(len(train), 1)))))
        quantizer = faiss.IndexFlatIP(d)
        if cfg.backend == "ivfflat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        else:
            if d % cfg.pq_m:
                raise ValueError(f"pq_m ({cfg.pq_m}) must divide the dimension ({d})")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, cfg.pq_bits, ip)
        need = max(nlist, 2**cfg.pq_bits if cfg.backend == "ivfpq" else 1)
        if len(train) < need:
            raise ValueError(
                f"{cfg.backend} with nlist={nlist}"
                + (f", pq_bits={cfg.pq_bits}" if cfg.backend == "ivfpq" else "")
                + f" needs at least {need} vectors to train, got {len(train)}; "
                "use a smaller ivf_nlist / pq_bits or the hnsw / exact backend"
            )
        pq_wants = 39 * 2**cfg.pq_bits if cfg.backend == "ivfpq" else 0  # k-means: 39 points per centroid
        if len(train) < pq_wants:
            log.warning(
                "ivfpq: %d vectors train %d centroids per sub-quantiser (pq_bits=%d); k-means wants at least %d, "
                "so the codes will be coarse and recall low. For a corpus this small use the ivfflat or hnsw "
                "backend (PQ saves little memory here), or pq_bits=%d.",
                len(train), 2**cfg.pq_bits, cfg.pq_bits, pq_wants, int(np.log2(max(len(train) // 39, 2))),
            )  # fmt: skip
        sample = train[np.random.default_rng(0).permutation(len(train))[: max(nlist * 64, pq_wants, 10000)]]
        index.train(sample)
        index.quantizer_trains_alone = 0
        self._ivf = index
        if cfg.backend == "ivfpq" and cfg.refine:
            index = faiss.IndexRefineFlat(index)
        index.__dict__["_keep"] = quantizer  # keep the Python-side quantizer alive with the index
        return index

    def _append(self, ids: np.ndarray, emb: np.ndarray) -> None:
        if self._faiss_index is not None and len(emb):
            self._faiss_index.add(emb)
        self.ids = np.concatenate([self.ids, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), bool)])
        self.vectors = np.concatenate([self.vectors, emb]) if len(self.vectors) else emb.copy()
        self._invalidate()

    def _invalidate(self) -> None:
        self._lookup, self._alive_sel, self._n_alive = None, None, None

    @property
    def n_alive(self) -> int:
        if self._n_alive is None:
            self._n_alive = int(self.alive.sum())
        return self._n_alive

    def labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Internal labels of live ``ids`` (-1 where unknown or deleted). int64, same shape."""
        if self._lookup is None:
            live = np.flatnonzero(self.alive)
            order = np.argsort(self.ids[live], kind="stable")
            self._lookup = (self.ids[live][order], live[order])
        keys, labels = self._lookup
        ids = np.asarray(ids, dtype=np.int64)
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

    # --- search ----------------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, exclude=None, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product. queries [B, D] -> (scores float32 [B, K], ids int64 [B, K])."""
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
        if self._faiss_index is None or small_allow:
            return self._exact(q, k, allowed, ex_labels)
        return self._ann(q, k, allowed, allow is not None, ex_labels)

    def _exact(self, q: np.ndarray, k: int, allowed: np.ndarray, ex_labels) -> tuple[np.ndarray, np.ndarray]:
        n_dead = len(allowed) - (self.n_alive if allowed is self.alive else int(allowed.sum()))
        n_ex = 0 if ex_labels is None else max((len(e) for e in ex_labels), default=0)
        few = len(q) <= 8  # FAISS's per-query scan up to 8 queries, the GEMM tiles from 9 on
        if few and n_dead + n_ex <= 1024 and len(self.vectors):
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
        It costs a full scan per query, so with the fused kernel it serves single queries only.
        The top ``k + extra`` of everything hold the top ``k`` of what the filters let through."""
        fetch = min(k + extra, len(self.vectors))
        D, L = _faiss().knn(q, self.vectors, fetch, metric=_faiss().METRIC_INNER_PRODUCT)
        return self._first_k(D, L, k, allowed, ex_labels)

    def _first_k(self, D: np.ndarray, L: np.ndarray, k: int, allowed: np.ndarray | None, ex_labels):
        """Over-fetched (scores [B, F], labels [B, F]) -> the first ``k`` per row that are valid (label >= 0),
        allowed (when ``allowed`` is given) and not among the row's exclusions, as padded external ids."""
        scores, ids = [], []
        for b in range(len(D)):
            ok = L[b] >= 0
            if allowed is not None:
                ok &= allowed[np.maximum(L[b], 0)]
            if ex_labels is not None and len(ex_labels[b]):
                ok &= ~np.isin(L[b], ex_labels[b])
            scores.append(D[b][ok][:k])
            ids.append(self.ids[L[b][ok][:k]])
        return pad_results(scores, ids, k)

    def _params(self, selector):
        faiss, cfg = _faiss(), self.config
        if cfg.backend == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=max(cfg.hnsw_ef_search, 1))
        ivf = faiss.SearchParametersIVF(sel=selector, nprobe=cfg.ivf_nprobe)
        if cfg.backend == "ivfpq" and cfg.refine:
            return faiss.IndexRefineSearchParameters(k_factor=float(cfg.refine_factor), base_index_params=ivf)
        return ivf

    def _bitmap_selector(self, mask: np.ndarray):
        faiss = _faiss()
        bits = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        sel.__dict__["_bits"] = bits  # the selector points into this buffer
        return sel

    def _ann(self, q, k, allowed, has_allow, ex_labels):
        faiss = _faiss()
        base = None
        if has_allow or self.n_alive < len(self.alive):
            if not has_allow and self._alive_sel is not None:
                base = self._alive_sel
            else:
                base = self._bitmap_selector(allowed)
                if not has_allow:
                    self._alive_sel = base
        n_allowed = int(allowed.sum()) if has_allow else self.n_alive
        post_ex = ex_labels  # exclusions still to drop from FAISS's output (the rows' own list stays in ex_labels)
        if ex_labels is not None and len(q) == 1:
            # One query: its exclusions go inside the search as a selector.
            excl = ex_labels[0]
            if len(excl):
                not_ex = faiss.IDSelectorNot(faiss.IDSelectorBatch(len(excl), faiss.swig_ptr(excl)))
                not_ex.__dict__["_keep"] = excl
                sel = not_ex if base is None else faiss.IDSelectorAnd(base, not_ex)
                sel.__dict__["_keep"] = (base, not_ex)
                base = sel
            post_ex = None
        extra = 0 if post_ex is None else max(len(e) for e in post_ex)
        fetch = min(k + extra, len(self.alive))
        D, L = self._faiss_index.search(q, fetch, params=self._params(base))
        scores_out, ids_out, short = [], [], []
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
            ids_out.append(self.ids[lab])
        if short:  # the graph / probed lists ran dry under the filters: complete these rows exactly
            self.completed_exactly += len(short)
            sub_ex = None if ex_labels is None else [ex_labels[b] for b in short]
            es, ei = self._exact(q[short], k, allowed, sub_ex)
            for j, b in enumerate(short):
                scores_out[b], ids_out[b] = es[j][ei[j] >= 0], ei[j][ei[j] >= 0]
        return pad_results(scores_out, ids_out, k)

    def set_search_params(self, **kw) -> None:
        """Change search-time knobs in place: ``hnsw_ef_search``, ``ivf_nprobe``, ``refine_factor`` (positive
        ints), ``exact_block`` and ``filter_exact_below``. Build-time fields (backend, M, nlist, PQ) are
        refused: changing them here would make the saved manifest describe an index that was not built."""
        checked = {}
        for key, v in kw.items():  # check every value first: a refused call changes nothing
            if key not in SEARCH_KNOBS:
                raise ValueError(
                    f"{key!r} is not a search-time parameter (one of {', '.join(SEARCH_KNOBS)}); "
                    "build-time parameters need a rebuild: VectorIndex.build(ids, vectors, IndexConfig(...))"
                )
            if key == "filter_exact_below":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                    raise ValueError(f"filter_exact_below must be a fraction in [0, 1], got {v!r}")
                checked[key] = float(v)
            elif isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
            else:
                checked[key] = int(v)
        for key, v in checked.items():
            setattr(self.config, key, v)

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> None:
        """Write the index to directory ``path`` atomically (temp dir + rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = ["ids.npy", "alive.npy", "vectors.npy"]
        np.save(tmp / "ids.npy", self.ids)
        np.save(tmp / "alive.npy", self.alive)
        np.save(tmp / "vectors.npy", self.vectors)
        if self._faiss_index is not None:
            _faiss().write_index(self._faiss_index, str(tmp / "faiss.index"))  # FAISS's own format, no pickle
            files.append("faiss.index")
        from ..config import to_dict

        manifest = {
            "format": FORMAT,
            "kind": "twotower-index",
            "dim": self.dim,
            "count": len(self),
            "slots": len(self.alive),
            "model_version": self.model_version,
            "config": to_dict(self.config),
            "metric": "inner_product",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        write_manifest(tmp, manifest, files)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)

    @classmethod
    def load(
        cls, path: str | Path, expect_model_version: str | None = None, allow_version_mismatch: bool = False
    ) -> VectorIndex:
        """Load an index; checksums are verified first, so a truncated file is a clear error, not a crash."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest.get("kind") != "twotower-index":
            raise IndexError_(f"{path} is not a twotower index directory")
        mv = manifest.get("model_version")
        if expect_model_version is not None and mv != expect_model_version and not allow_version_mismatch:
            raise VersionMismatch(
                f"index {path} was built from model version {mv}, but the user encoder is version "
                f"{expect_model_version}; rebuild the index from this model's embeddings, or pass "
                "allow_version_mismatch=True (--allow-version-mismatch) if you really mean to mix them"
            )
        from ..config import from_dict

        idx = cls(manifest["dim"], from_dict(IndexConfig, manifest["config"]), mv)
        try:
            idx.ids = np.load(path / "ids.npy", allow_pickle=False)
            idx.alive = np.load(path / "alive.npy", allow_pickle=False)
            idx.vectors = np.load(path / "vectors.npy", allow_pickle=False)
            if (path / "faiss.index").exists():
                idx._faiss_index = _faiss().read_index(str(path / "faiss.index"))
        except (OSError, ValueError, RuntimeError) as exc:
            raise IndexError_(f"cannot read index {path}: {exc}; rebuild it or roll back") from exc
        if idx._faiss_index is not None and idx._faiss_index.ntotal != len(idx.alive):
            raise IndexError_(
                f"{path}: FAISS index holds {idx._faiss_index.ntotal} vectors, manifest "
                f"{len(idx.alive)}; rebuild the index"
            )
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
