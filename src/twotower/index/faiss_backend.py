"""The FAISS side of :class:`~twotower.index.vector_index.VectorIndex`: building HNSW / IVF-Flat / IVF-PQ
indexes from an :class:`~twotower.index.base.IndexConfig`, their search-time parameters, and the ID
selectors that apply filters inside a search.

Every index scores by inner product (the model's score on unit vectors). FAISS is imported lazily, with
the install hint, and :func:`set_faiss_threads` is the one way callers (the service) set its OpenMP
thread count.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

import numpy as np

from .base import IndexConfig
from .embeddings import release_rows

log = logging.getLogger(__name__)

KMEANS_POINTS_PER_CENTROID = 39  # FAISS's k-means warns below this many training points per centroid


def faiss_module() -> ModuleType:
    """The ``faiss`` module, or ImportError with the install command."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a core dependency
        raise ImportError("FAISS is required for ANN backends: pip install faiss-cpu") from exc
    return faiss


def set_faiss_threads(threads: int) -> None:
    """Set FAISS's OpenMP thread count for this process (searches and builds)."""
    faiss_module().omp_set_num_threads(int(threads))


def new_faiss_index(cfg: IndexConfig, dim: int, train: np.ndarray) -> Any:
    """An empty FAISS index for ``cfg.backend`` (not ``exact``), trained on ``train`` float32 [N, D] where the
    backend needs training (IVF). ValueError when the corpus is too small for the lists / codebooks asked for,
    or ``pq_m`` does not divide ``dim``."""
    faiss = faiss_module()
    ip = faiss.METRIC_INNER_PRODUCT
    if cfg.backend == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, ip)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        return index
    per = KMEANS_POINTS_PER_CENTROID
    nlist = cfg.ivf_nlist or max(1, min(len(train) // per, int(4 * np.sqrt(max(len(train), 1)))))
    quantizer = faiss.IndexFlatIP(dim)
    if cfg.backend == "ivfflat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    else:
        if dim % cfg.pq_m:
            raise ValueError(f"pq_m ({cfg.pq_m}) must divide the dimension ({dim})")
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, cfg.pq_m, cfg.pq_bits, ip)
    need = max(nlist, 2**cfg.pq_bits if cfg.backend == "ivfpq" else 1)
    if len(train) < need:
        raise ValueError(
            f"{cfg.backend} with nlist={nlist}"
            + (f", pq_bits={cfg.pq_bits}" if cfg.backend == "ivfpq" else "")
            + f" needs at least {need} vectors to train, got {len(train)}; "
            "use a smaller ivf_nlist / pq_bits or the hnsw / exact backend"
        )
    pq_wants = per * 2**cfg.pq_bits if cfg.backend == "ivfpq" else 0
    if len(train) < pq_wants:
        log.warning(
            "ivfpq: %d vectors train %d centroids per sub-quantiser (pq_bits=%d); k-means wants at least %d, "
            "so the codes will be coarse and recall low. For a corpus this small use the ivfflat or hnsw "
            "backend (PQ saves little memory here), or pq_bits=%d.",
            len(train), 2**cfg.pq_bits, cfg.pq_bits, pq_wants, int(np.log2(max(len(train) // per, 2))),
        )  # fmt: skip
    sample = train[np.random.default_rng(0).permutation(len(train))[: max(nlist * 64, pq_wants, 10000)]]
    release_rows(train)  # the random draw touched most pages of a memory-mapped export
    index.train(sample)
    index.quantizer_trains_alone = 0
    # the Python-side quantizer the C++ index points to lives as long as it does. IVF-PQ's exact re-scoring
    # is not FAISS's IndexRefineFlat (it would hold a second float32 copy of every vector): VectorIndex
    # re-scores the PQ shortlist from its own rows, memory-mapped once the index is loaded
    index.__dict__["_keep"] = (quantizer,)
    return index


def search_params(cfg: IndexConfig, selector: Any) -> Any:
    """FAISS search parameters for ``cfg``'s backend and search knobs, filtering by ``selector`` (or None)."""
    faiss = faiss_module()
    if cfg.backend == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=max(cfg.hnsw_ef_search, 1))
    return faiss.SearchParametersIVF(sel=selector, nprobe=cfg.ivf_nprobe)


def refines(cfg: IndexConfig) -> bool:
    """Whether searches re-score the FAISS shortlist exactly from the index's rows (IVF-PQ with ``refine``)."""
    return cfg.backend == "ivfpq" and cfg.refine


def bitmap_selector(mask: np.ndarray) -> Any:
    """A selector of the labels where ``mask`` (bool [N]) is True."""
    faiss = faiss_module()
    bits = np.packbits(mask, bitorder="little")
    sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    sel.__dict__["_bits"] = bits  # the selector points into this buffer
    return sel


def excluding_selector(labels: np.ndarray, base: Any = None) -> Any:
    """A selector of every label not in ``labels`` (int64 [M], M >= 1), and in ``base`` when given."""
    faiss = faiss_module()
    not_ex = faiss.IDSelectorNot(faiss.IDSelectorBatch(len(labels), faiss.swig_ptr(labels)))
    not_ex.__dict__["_keep"] = labels
    if base is None:
        return not_ex
    sel = faiss.IDSelectorAnd(base, not_ex)
    sel.__dict__["_keep"] = (base, not_ex)
    return sel


def knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's SIMD brute-force scan: (scores float32 [B, k], labels int64 [B, k]) by inner product."""
    faiss = faiss_module()
    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


def write(index: Any, path: str) -> None:
    """Write ``index`` in FAISS's own format (no pickle)."""
    faiss_module().write_index(index, path)


def read(path: str) -> Any:
    """Read an index written by :func:`write`. An IVF-PQ index written before the re-scoring moved out of
    FAISS (an ``IndexRefineFlat`` around it, with its own float32 copy of the vectors) comes back as the
    IVF-PQ alone: the index's rows re-score it now, and the copy is freed."""
    faiss = faiss_module()
    index = faiss.read_index(path)
    if isinstance(index, faiss.IndexRefine):
        index = faiss.clone_index(faiss.downcast_index(index.base_index))
    return index
