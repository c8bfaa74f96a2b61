"""Build an index from exported embeddings, measure its recall against exact, publish it atomically.

``INDEX_ROOT/`` layout::

    versions/<version>/     one directory per published index (manifest.json records recall)
    CURRENT                 the live version's name (replaced atomically with os.replace)
    history.json            published versions in order, for rollback

A build whose recall@100 against the exact search falls below the floor is refused and nothing changes.
Older versions stay on disk, so ``rollback`` is a pointer switch. A build killed half-way leaves only
temporary names (``versions/.<version>.tmp-<pid>-*``, ``.CURRENT.tmp-<pid>``), or, killed between writing
the new version and publishing it, a complete ``versions/<version>`` that no history names (its manifest
records the build's pid, ``builder_pid``); the next build removes those of processes that are gone
(:func:`remove_leftovers`), never a running build's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Collection
from pathlib import Path

import numpy as np

from ..errors import IndexError_, RecallTooLow
from ..fsutil import pid_alive, write_text_atomic
from ..fsutil import remove_leftovers as remove_leftover_dirs
from .adaptive import AdaptiveIndex, build_index, open_index
from .base import IndexConfig
from .embeddings import load_embeddings
from .storage import INDEX_FILES
from .vector_index import VectorIndex

log = logging.getLogger(__name__)


_RECALL_KNOBS = {  # what raises recall, per backend, in the words of `twotower index build`
    "exact": "exact search has recall 1",
    "hnsw": "raise --hnsw-ef-search (or build with a larger --hnsw-m)",
    "ivfflat": "raise --ivf-nprobe (or build with fewer lists, --ivf-nlist)",
    "ivfpq": "raise --ivf-nprobe and --refine-factor (past a few lists the refine factor sets recall), or use ivfflat",
}


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of ``exact`` [B, K] found in the same row of ``approx`` [B, K]."""
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) / max(1, int((e >= 0).sum())) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else float("nan")


MAX_COMPLETED = 0.01  # queries the ANN may leave short (completed by exact search) before a build is refused


def measure_recall(index: VectorIndex, oracle: VectorIndex, queries: np.ndarray, ks=(10, 100)) -> dict[str, float]:
    """Recall@k of ``index`` against ``oracle`` on ``queries``, its batched QPS, and ``completed_exactly``:
    the fraction of queries whose ANN search came back with fewer than k results and were completed by an
    exact scan (their recall is the exact scan's, so a high fraction hides an ANN that does not work)."""
    kmax = max(ks)
    _, truth = oracle.search(queries, kmax)
    index.completed_exactly = 0
    t0 = time.perf_counter()
    _, got = index.search(queries, kmax)
    secs = time.perf_counter() - t0
    out = {f"recall@{k}": recall_at(got[:, :k], truth[:, :k]) for k in ks}
    out["batched_qps"] = round(len(queries) / max(secs, 1e-9), 1)
    out["completed_exactly"] = round(index.completed_exactly / max(len(queries), 1), 4)
    return out


_POINTERS = ("CURRENT", "history.json")  # the small files write_text_atomic replaces


def remove_leftovers(root: str | Path, published: Collection[str] = ()) -> None:
    """Delete what killed builds left under ``root``: temporary version directories in ``versions/`` holding
    only index files, complete versions not in ``published`` (:func:`remove_unpublished`), and temporary
    pointer files (``.CURRENT.tmp-<pid>``), each only when its process is gone. A live build's temporaries,
    and anything holding other files, are left alone."""
    root = Path(root)
    remove_leftover_dirs(root / "versions", INDEX_FILES, what="index version", job="index build")
    remove_unpublished(root, published)
    for name in _POINTERS:
        for path in root.glob(f".{name}.tmp-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and path.is_file() and not path.is_symlink() and not pid_alive(int(pid)):
                log.warning("removing %s, a pointer file of an earlier index build that was killed", path)
                path.unlink()


def remove_unpublished(root: Path, published: Collection[str]) -> list[Path]:
    """Delete the complete version directories of builds killed after writing them and before publishing
    them: not in ``published``, their manifest's ``builder_pid`` gone, index files only. A version without a
    ``builder_pid`` (older builds, hand-made copies) or of a live build is left alone; returns those deleted."""
    removed: list[Path] = []
    vdir = Path(root) / "versions"
    if not vdir.is_dir():
        return removed
    for path in sorted(vdir.iterdir()):
        if path.name.startswith(".") or path.name in published or not path.is_dir() or path.is_symlink():
            continue
        try:
            pid = json.loads((path / "manifest.json").read_text()).get("builder_pid")
        except (OSError, ValueError, AttributeError):  # no manifest, garbled, or not an object: not ours to judge
            continue
        if not isinstance(pid, int) or pid_alive(pid) or not {p.name for p in path.iterdir()} <= INDEX_FILES:
            continue
        log.warning("removing %s, a version an earlier index build wrote but was killed before publishing", path)
        shutil.rmtree(path)
        removed.append(path)
    return removed


def history(root: str | Path) -> list[str]:
    """The versions published under ``root``, oldest first."""
    f = Path(root) / "history.json"
    if not f.is_file():
        return []
    try:
        hist = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise IndexError_(f"{f} is unreadable ({e}); restore it, or rebuild it from {root}/versions") from e
    names_ok = isinstance(hist, list) and all(
        isinstance(v, str) and "/" not in v and v not in ("", ".", "..") for v in hist
    )
    if not names_ok:
        raise IndexError_(f"{f} is not a list of version names; restore it, or rebuild it from {root}/versions")
    return hist


def current_version(root: str | Path) -> str:
    f = Path(root) / "CURRENT"
    if not f.is_file():
        raise IndexError_(f"{root} has no published index; run `twotower index build --out {root}`")
    return f.read_text().strip()


def published_versions(root: str | Path) -> list[str]:
    """Every version published under ``root``, newest first: ``history.json`` in reverse, then directories of
    ``versions/`` it does not list (newest name first; names start with their build time). Temporary names of
    builds in progress or killed (``.<v>.tmp-*``) are not versions. For choosing what to serve when CURRENT's
    version does not load; an unreadable history counts as empty."""
    root = Path(root)
    try:
        hist = history(root)
    except IndexError_:
        hist = []
    on_disk = (
        sorted(
            (p.name for p in (root / "versions").iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True
        )
        if (root / "versions").is_dir()
        else []
    )
    listed = [v for v in reversed(hist) if v in on_disk]
    return listed + [v for v in on_disk if v not in listed]


def current_path(root: str | Path) -> Path:
    return Path(root) / "versions" / current_version(root)


def build_and_publish(
    emb_dir: str | Path,
    root: str | Path,
    config: IndexConfig,
    recall_floor: float = 0.95,
    max_queries: int = 1000,
    progress: bool = False,
) -> dict:
    """Build ``config.backend`` over an export, measure recall on real user vectors, publish if it passes.
    ``progress``: a bar while the vectors go into the FAISS structure, and a log line per phase."""
    root = Path(root)
    if not 0.0 <= recall_floor <= 1.0:
        raise IndexError_(f"the recall floor is a recall@100 in [0, 1], got {recall_floor}")
    if root.exists() and not root.is_dir():
        raise IndexError_(f"--out {root} is a file; an index root is a directory (choose another --out)")
    earlier = history(root)  # a corrupt history fails here, before any work
    remove_leftovers(root, earlier)
    ids, emb, emb_manifest = load_embeddings(emb_dir)
    qfile = Path(emb_dir) / "users_sample.npy"
    queries = np.load(qfile) if qfile.is_file() else emb[:0]
    if len(queries) == 0:  # no user sample: item vectors stand in as queries
        queries = emb[np.random.default_rng(0).choice(len(emb), min(len(emb), max_queries), replace=False)]
    queries = queries[:max_queries].astype(np.float32)
    t0 = time.perf_counter()
    log.info("building %s over %d x %d vectors from %s", config.backend, len(ids), emb.shape[1], emb_dir)
    try:
        normalized = emb_manifest.get("normalized", True)
        index = build_index(ids, emb, config, emb_manifest["model_version"], normalized, progress)
    except ValueError as exc:  # NaN vectors, duplicate ids, a corpus too small for the IVF lists, a bad prefix
        raise IndexError_(f"{emb_dir}: {exc}") from exc
    build_s = time.perf_counter() - t0
    # the oracle is exact search at full width: an adaptive index is measured as the whole pipeline
    plain_exact = config.backend == "exact" and not config.prefix_dim
    oracle = index if plain_exact else VectorIndex.build(ids, emb, IndexConfig(backend="exact"))
    extra = {
        "build_seconds": round(build_s, 2),
        "embeddings": {k: emb_manifest[k] for k in ("model_version", "dim", "count", "dtype", "created_at")},
        "codebook": emb_manifest.get("codebook"),  # semantic IDs: the codebook the model was trained with
    }
    return publish_index(root, earlier, index, oracle, queries, recall_floor, emb_manifest["model_version"], extra)


def publish_index(
    root: Path,
    earlier: list[str],
    index: VectorIndex | AdaptiveIndex,
    oracle: VectorIndex,
    queries: np.ndarray,
    recall_floor: float,
    model_version: str,
    extra: dict,
) -> dict:
    """Measure ``index`` against exact search (``oracle``) on ``queries``; publish it as a new version under
    ``root`` (``earlier``: its history) if it passes the recall gate. ``extra`` joins the manifest."""
    config = index.config if isinstance(index, VectorIndex) else index.inner.config
    log.info("measuring recall@10/@100 against exact search on %d user vectors", len(queries))
    rec = measure_recall(index, oracle, queries)
    log.info(
        "%s over %d items: recall@10 %.4f recall@100 %.4f",
        config.backend,
        len(index),
        rec["recall@10"],
        rec["recall@100"],
    )
    if rec["completed_exactly"] > MAX_COMPLETED:
        raise RecallTooLow(
            f"{config.backend}: {rec['completed_exactly']:.1%} of the sample queries came back with fewer than 100 "
            f"results and needed an exact scan to complete (at most {MAX_COMPLETED:.0%} may), so the index would "
            f"serve them at exact-search cost; {_RECALL_KNOBS[config.backend]}. Nothing was published."
        )
    if rec["recall@100"] < recall_floor:
        raise RecallTooLow(
            f"{config.backend} recall@100 = {rec['recall@100']:.4f} is below the floor "
            f"{recall_floor}; {_RECALL_KNOBS[config.backend]}, or lower --recall-floor. "
            "Nothing was published."
        )
    kind = config.backend + (f"-p{config.prefix_dim}" if config.prefix_dim else "")
    version = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{model_version[:8]}-{kind}"
    while (root / "versions" / version).exists() or version in earlier:
        version += "x"
    extra = {
        "version": version,
        "recall": rec,
        "recall_queries": int(len(queries)),
        **extra,
        "builder_pid": os.getpid(),  # a kill before the switch below leaves it unpublished: see remove_unpublished
    }
    index.save(root / "versions" / version, extra=extra)
    hist = earlier + [version]
    write_text_atomic(root / "history.json", json.dumps(hist, indent=2) + "\n")
    write_text_atomic(root / "CURRENT", version + "\n")  # the switch: readers see the old or the new, never half
    return {"version": version, **extra}


def rollback(root: str | Path, to: str | None = None) -> str:
    """Point CURRENT at ``to`` (default: the version published before the current one); ``to`` must be a
    version published under this root (a name from its history, not a path)."""
    root = Path(root)
    hist, cur = history(root), current_version(root)
    if to is not None and to not in hist:
        raise IndexError_(f"{to!r} is not a version published under {root}; published: {hist}")
    if to is None:
        if cur not in hist or hist.index(cur) == 0:
            raise IndexError_(f"no version before {cur} to roll back to; published: {hist}")
        to = hist[hist.index(cur) - 1]
    if not (root / "versions" / to).is_dir():
        raise IndexError_(f"version {to} does not exist under {root}/versions; published: {hist}")
    open_index(root / "versions" / to)  # refuse to switch to something that does not load
    write_text_atomic(root / "CURRENT", to + "\n")
    return to


def load_current(
    root: str | Path, expect_model_version: str | None = None, allow_version_mismatch: bool = False
) -> VectorIndex | AdaptiveIndex:
    return open_index(current_path(root), expect_model_version, allow_version_mismatch)
