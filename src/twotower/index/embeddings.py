"""Reading an embeddings export (written by :mod:`twotower.jobs.export`): the index's input.

An export directory ``EMB_DIR/`` holds ``embeddings.npy`` (float32 | float16 [N, D], unit rows), ``ids.npy``
(int64 [N], the index's external ids), ``item_ids.parquet``, ``users_sample.npy`` and ``manifest.json``
(``kind``, model version, dim, count, dtype, ...). This module only reads: the index layer never imports the
job that writes it. Only ``.npy`` (``allow_pickle=False``) and JSON are read.
"""

from __future__ import annotations

import json
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
