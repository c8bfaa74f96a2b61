"""Semantic IDs: residual k-means codes of item content vectors, and their prefixes as hashed feature tokens.

Residual quantisation (as in TIGER, Rajput et al. 2023, with k-means per level instead of an RQ-VAE):
level 1 clusters the content vectors into ``C`` centroids, level 2 clusters what is left after subtracting
each vector's level-1 centroid, and so on for ``L`` levels. An item's code ``(c1, ..., cL)`` is coarse to
fine, so items that share a prefix share meaning. A last ordinal ``u`` (0, 1, ... among items of the same
full code, in item order) makes codes unique.

The code prefixes ``(c1)``, ``(c1,c2)``, ... ``(c1..cL)`` enter the model as ``"sid<l>=c1-..-cl"`` feature
tokens (hashed like every other ``column=value`` token), so items that share a prefix share those
embedding rows, in the candidate tower and in history tokens alike. A new item gets its code from its
content vector alone (:func:`assign_codes`).

The codebook is a versioned artifact (``codebook.safetensors``: centroids float32 [L, C, E]; its version is
a hash of the centroids): the dataset, the model trained on it, its export and its index record the version,
and a mismatch is refused (:func:`check_codebook`). Clustering is FAISS k-means (``faiss.Kmeans``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, ConfigError
from ..hashing import token_hash
from ..layout import SALT_FEATURE, feature_token

CODEBOOK_FILE = "codebook.safetensors"


@dataclass
class Codebook:
    """Residual k-means centroids [L, C, E], what they were trained on (``source``) and their version."""

    centroids: np.ndarray
    source: str

    @property
    def levels(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def codes(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def version(self) -> str:
        """sha256 of the centroids' bytes and shape (16 hex digits): changes whenever a code could change."""
        h = hashlib.sha256(json.dumps(list(self.centroids.shape)).encode())
        h.update(np.ascontiguousarray(self.centroids, np.float32).tobytes())
        return h.hexdigest()[:16]

    def info(self) -> dict:
        return {"version": self.version, "levels": self.levels, "codes": self.codes, "source": self.source}

    def save(self, path: str | Path) -> None:
        from safetensors.numpy import save_file

        meta = {"source": self.source, "version": self.version}
        save_file({"centroids": np.ascontiguousarray(self.centroids, np.float32)}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Codebook:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path} does not exist: no codebook here; prepare with semantic IDs, or drop them")
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                book = cls(f.get_tensor("centroids").astype(np.float32), meta.get("source", ""))
        except Exception as exc:  # safetensors raises its own error types for a damaged header
            raise ArtifactError(f"{path} is not a readable codebook ({exc}); re-run `twotower prepare`") from exc
        if meta.get("version") and meta["version"] != book.version:
            raise ArtifactError(f"{path}: its centroids do not match the version it records; re-run `twotower prepare`")
        return book


def train_codebook(vectors: np.ndarray, levels: int, codes: int, source: str, seed: int = 0) -> Codebook:
    """Residual k-means over ``vectors`` float32 [N, E] (rows of zeros, i.e. items without content, are left
    out): ``levels`` x ``codes`` centroids. ConfigError when there are fewer content rows than ``codes``."""
    import faiss

    if levels < 1 or codes < 2:
        raise ConfigError(f"semantic IDs need levels >= 1 and codes >= 2, got {levels} x {codes}", field="semantic_ids")
    x = np.ascontiguousarray(vectors[np.any(vectors != 0, axis=1)], np.float32)
    if len(x) < codes:
        raise ConfigError(
            f"semantic IDs with {codes} codes per level need at least {codes} items with content, got {len(x)}; "
            "use fewer codes",
            field="semantic_ids",
        )
    E = x.shape[1]
    centroids = np.zeros((levels, codes, E), np.float32)
    residual = x.copy()
    for level in range(levels):
        km = faiss.Kmeans(E, codes, niter=25, seed=seed + level, verbose=False, min_points_per_centroid=1)
        km.train(residual)
        centroids[level] = km.centroids
        residual -= km.centroids[_nearest(residual, km.centroids)]
    return Codebook(centroids, source)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (L2) of each row: int64 [N]."""
    d = (x * x).sum(1, keepdims=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return d.argmin(1)


def assign_codes(book: Codebook, vectors: np.ndarray) -> np.ndarray:
    """Codes int64 [N, L] of content vectors [N, E] (a new item's code from its content alone); -1 rows for
    items without content (all-zero vectors)."""
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2 or x.shape[1] != book.centroids.shape[2]:
        raise ArtifactError(
            f"content vectors of shape {list(x.shape)} do not fit a codebook over {book.centroids.shape[2]} dims; "
            "embed the items with the encoder the codebook was trained on"
        )
    out = np.full((len(x), book.levels), -1, np.int64)
    has = np.any(x != 0, axis=1)
    residual = x[has].copy()
    for level in range(book.levels):
        c = _nearest(residual, book.centroids[level])
        out[has, level] = c
        residual -= book.centroids[level][c]
    return out


def unique_suffix(codes: np.ndarray) -> np.ndarray:
    """The ordinal of each row among the rows with the same full code (0, 1, ... in row order): int64 [N].
    ``(codes, suffix)`` is unique per item."""
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    first = np.r_[0, np.flatnonzero(np.diff(inverse[order])) + 1]
    starts = np.repeat(first, np.diff(np.r_[first, len(order)]))
    out = np.empty(len(codes), np.int64)
    out[order] = np.arange(len(order)) - starts
    return out


def prefix_hashes(codes: np.ndarray) -> np.ndarray:
    """uint64 [N, L]: the hashed prefix tokens (0 where an item has no content), as prepare hashes features.

    Every featurizer (training, evaluation, each service reload) computes these, so each distinct prefix is
    turned into its token and hashed once (1M items x 3 levels of 64 codes: 1.5 s here, 7.2 s one token per
    item and level)."""
    N, L = codes.shape
    out = np.zeros((N, L), np.uint64)
    has = np.flatnonzero(codes[:, 0] >= 0) if N else np.zeros(0, np.int64)
    if len(has) == 0:
        return out
    kept = codes[has].astype(np.int64)
    base = int(kept.max()) + 1
    key = np.zeros(len(has), np.int64)
    for level in range(L):
        if base ** (level + 1) < 2**62:  # the prefix as one integer: a 1-d unique
            key = key * base + kept[:, level]
            first, inv = np.unique(key, return_index=True, return_inverse=True)[1:]
        else:  # too many codes for one int64: unique rows
            first, inv = np.unique(kept[:, : level + 1], axis=0, return_index=True, return_inverse=True)[1:]
        tokens = [
            feature_token(f"sid{level + 1}", "-".join(map(str, row))) for row in kept[first, : level + 1].tolist()
        ]
        out[has, level] = token_hash(tokens, SALT_FEATURE)[inv.ravel()]
    return out


def check_codebook(recorded: str | None, book: Codebook | None, what: str) -> None:
    """Refuse a codebook other than the one ``what`` (a model, an index) was built with."""
    have = book.version if book is not None else None
    if (recorded or None) != have:
        raise ArtifactError(
            f"{what} was built with codebook {recorded or 'none'}, the items would be coded with {have or 'none'}; "
            "semantic IDs from another codebook mean other items. Use the dataset the model was trained on, or "
            "retrain on the new codebook"
        )
