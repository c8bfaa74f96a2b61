"""Stable multi-hashing of entity ids (users, items, authors, feature values).

Every id is turned into a string and hashed by ``num_hashes`` independent SipHash-2-4 functions (one
16-byte key each) with pandas' vectorised ``hash_array``. The 64-bit values depend only on the id's UTF-8
bytes and the key, so they are identical across processes, machines and ``PYTHONHASHSEED``.

Prepared datasets store the raw 64-bit values; the model maps them into its table size with
:func:`to_buckets`: ``1 + h mod (buckets - 1)``, so bucket 0 stays reserved for padding.

Collisions. For ``n`` distinct ids and ``b`` buckets per hash, a given id shares a bucket on one hash with
at least one other id with probability ``1 - exp(-n / b)``; it is indistinguishable from another id only if
that happens on all ``H`` hashes with the *same* partner: expected number of fully colliding pairs is
``C(n, 2) / b**H``. Example: n = 1e6 items, b = 2**20, H = 2: 62 % of ids share one bucket with someone,
but only ~0.45 fully colliding pairs are expected; with H = 1 that would be ~477k pairs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

PAD = 0


def _key(seed: int) -> str:
    # hash_array needs exactly 16 bytes of key; the seed picks an independent SipHash function.
    return f"twotower{seed:08d}"[:16]


def hash64(values: np.ndarray | pd.Series | list, seed: int) -> np.ndarray:
    """Stable 64-bit hash of each value's string form. ``uint64 [N]``; never returns 0 (0 = padding)."""
    arr = np.asarray(pd.Series(values, dtype="object").astype(str).to_numpy(dtype=object))
    out = pd.util.hash_array(arr, hash_key=_key(seed), categorize=True).astype(np.uint64, copy=False)
    out[out == 0] = 1  # 0 is reserved for padding; a real zero hash has probability 2**-64
    return out


def hash_seed(salt: int, h: int = 0) -> int:
    """The one rule that names a hash function: hash ``h`` of namespace ``salt`` (see ``layout.SALT_*``)."""
    return 1000 * salt + h


def multi_hash(values: np.ndarray | pd.Series | list, num_hashes: int, salt: int = 0) -> np.ndarray:
    """``num_hashes`` independent stable hashes per value: ``uint64 [N, H]``.

    ``salt`` separates namespaces (users vs items vs authors) so equal strings in different
    namespaces do not share embeddings by construction.
    """
    if num_hashes < 1:
        raise ValueError(f"num_hashes must be >= 1, got {num_hashes}")
    cols = [hash64(values, seed=hash_seed(salt, h)) for h in range(num_hashes)]
    return np.stack(cols, axis=1) if cols else np.zeros((len(values), 0), np.uint64)


def token_hash(values: np.ndarray | pd.Series | list, salt: int) -> np.ndarray:
    """One stable hash per feature token (the first hash function of ``salt``): ``uint64 [N]``."""
    return hash64(values, seed=hash_seed(salt))


def to_buckets(h: np.ndarray, buckets: int) -> np.ndarray:
    """Map raw 64-bit hashes into ``[1, buckets)``; raw 0 (padding) stays 0. Same shape, ``int64``."""
    if buckets < 2:
        raise ValueError(f"buckets must be >= 2 (bucket 0 is padding), got {buckets}")
    h = np.asarray(h, dtype=np.uint64)
    out = (h % np.uint64(buckets - 1)).astype(np.int64) + 1
    out[h == 0] = PAD
    return out


def expected_full_collisions(n: int, buckets: int, num_hashes: int) -> float:
    """Expected number of id pairs that collide on every one of ``num_hashes`` hashes."""
    return n * (n - 1) / 2 / float(buckets - 1) ** num_hashes


def expected_shared_fraction(n: int, buckets: int) -> float:
    """Probability that an id shares its bucket (on one hash) with at least one of ``n - 1`` others."""
    return 1.0 - math.exp(-(n - 1) / (buckets - 1))
