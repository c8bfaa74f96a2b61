"""The corpus as the service sees it: item id strings <-> dense index, the model's hashed item tables, and the
item-feature index that filters (``filters.item_features``) are answered from.

Unknown item ids in a request are hashed on the fly exactly as ``prepare`` hashes them (one hash rule,
:mod:`twotower.hashing`), so they still embed; filter values are found by hashing ``column=value`` tokens
(:func:`twotower.layout.feature_token`) and a binary search, with no string table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hashing import multi_hash, to_buckets, token_hash
from ..layout import SALT_FEATURE, SALT_ITEM, feature_token

# Item-feature columns of the built-in MovieLens-1M reader (twotower.data.movielens writes "genre=Comedy",
# "year=1995", "decade=1990s" tokens directly, so its manifest's item schema lists no columns).
BUILTIN_ITEM_COLUMNS = {"ml-1m": ("genre", "year", "decade")}


def item_feature_columns(manifest: dict, feat_hash: np.ndarray) -> frozenset[str] | None:
    """Names of the item-table columns the dataset's ``column=value`` feature tokens come from, for validating
    filters; None when the manifest does not say (the tokens exist but their column names are unknown).

    Sources: ``manifest["item_feature_columns"]`` when recorded, the built-in readers' columns, the prepare
    config's item schema (``features`` + ``multi_valued``); a dataset without any item feature has none."""
    if isinstance(manifest.get("item_feature_columns"), list):
        return frozenset(map(str, manifest["item_feature_columns"]))
    if manifest.get("dataset") in BUILTIN_ITEM_COLUMNS:
        return frozenset(BUILTIN_ITEM_COLUMNS[manifest["dataset"]])
    schema = (manifest.get("config") or {}).get("items") or {}
    columns = frozenset([*schema.get("features", []), *schema.get("multi_valued", {})])
    if columns or not np.any(feat_hash):
        return columns
    return None


@dataclass
class FeatureIndex:
    """Item-table feature tokens -> items: the (token hash, dense item) pairs of every item, sorted by hash.

    The dataset keeps one 64-bit hash per ``"column=value"`` token (``item_feat_hash``), the same hash
    ``prepare`` computed, so a filter value is found by hashing it and a binary search: no string table.
    ``columns``: the column names tokens come from (see :func:`item_feature_columns`; None = unknown).
    """

    keys: np.ndarray  # uint64 [P] sorted token hashes
    items: np.ndarray  # int64 [P] dense item index of each
    columns: frozenset[str] | None = None

    @classmethod
    def build(cls, feat_hash: np.ndarray, columns: frozenset[str] | None = None) -> FeatureIndex:
        """From ``uint64 [N, F]`` token hashes (0 = padding)."""
        rows, cols = np.nonzero(feat_hash)
        keys = feat_hash[rows, cols]
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], rows[order].astype(np.int64), columns)

    def _ranges(self, column: str, values: list[str]) -> tuple[np.ndarray, np.ndarray]:
        h = token_hash([feature_token(column, v) for v in values], SALT_FEATURE)
        return np.searchsorted(self.keys, h, "left"), np.searchsorted(self.keys, h, "right")

    def _gather(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        parts = [self.items[a:b] for a, b in zip(lo, hi) if b > a]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def items_with(self, column: str, values: list[str]) -> np.ndarray:
        """Dense items whose ``column`` has any of ``values``: sorted unique int64 [m]."""
        return self._gather(*self._ranges(column, values))

    def absent_values(self, column: str, values: list[str]) -> list[str]:
        """The ``values`` no item has in ``column`` (a typo, or a value of another column)."""
        lo, hi = self._ranges(column, values)
        return [v for v, a, b in zip(values, lo, hi) if b == a]

    def matching(self, features: dict[str, list[str]]) -> np.ndarray:
        """Items matching every column (AND) with any of its values (OR): sorted int64 [m]."""
        return self.match(features)[0]

    def match(self, features: dict[str, list[str]]) -> tuple[np.ndarray, dict[str, list[str]]]:
        """:meth:`matching` and :meth:`absent_values` of every column from one hash and search per value:
        (items sorted int64 [m], ``{column: absent values}`` for the columns that have any, in request order)."""
        out: np.ndarray | None = None
        absent: dict[str, list[str]] = {}
        for column, values in features.items():
            lo, hi = self._ranges(column, values)
            missing = [v for v, a, b in zip(values, lo, hi) if b == a]
            if missing:
                absent[column] = missing
            if out is None or len(out):  # once empty, only the absent values are still needed
                got = self._gather(lo, hi)
                out = got if out is None else np.intersect1d(out, got, assume_unique=True)
        return (np.zeros(0, np.int64) if out is None else out), absent


@dataclass
class ItemTable:
    """The corpus as the service sees it: id strings <-> dense index, and the model's hashed item tables.

    ``ids``: object [N]; ``hash``/``author``: int64 [N, H]; ``feat``: int64 [N, F] (bucketed, 0 = padding).
    """

    ids: np.ndarray
    lookup: dict[str, int]
    hash: np.ndarray
    author: np.ndarray
    feat: np.ndarray
    num_hashes: int
    item_buckets: int
    features: FeatureIndex
    text: np.ndarray | None = None  # float16 [N, E] item text vectors, when the model reads text

    def dense(self, item_ids: list[str]) -> np.ndarray:
        """Dense indices of ``item_ids``, -1 where unknown. int64 [n].

        A plain dict: ~0.15 us per id, where ``pd.Index.get_indexer`` costs ~150-370 us per call whatever the
        number of ids (measured on 1M ids, pandas 3) and is called twice on every request path."""
        get = self.lookup.get
        return np.fromiter((get(i, -1) for i in item_ids), np.int64, len(item_ids))

    def hashed(self, item_ids: list[str], dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item, author, feat) bucket ids for ``item_ids`` [n]: table rows for known items; unknown items are
        hashed on the fly exactly as ``prepare`` hashes them (so they still embed) with no author/features."""
        n = len(item_ids)
        known = dense >= 0
        row = np.where(known, dense, 0)
        item = np.where(known[:, None], self.hash[row], 0)
        author = np.where(known[:, None], self.author[row], 0)
        feat = np.where(known[:, None], self.feat[row], 0)
        if n and not known.all():
            new = [item_ids[i] for i in np.flatnonzero(~known)]
            item[~known] = to_buckets(multi_hash(new, self.num_hashes, SALT_ITEM), self.item_buckets)
        return item, author, feat
