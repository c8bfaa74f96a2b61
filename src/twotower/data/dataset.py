"""A prepared dataset loaded back from disk, with views for training windows and evaluation examples.

Training examples are never materialised one per position: a *window* is ``(user, start, end)`` over the
user's time-ordered events; the model reads ``[user token, events start..end-2]`` and predicts
``events start..end-1`` position by position under a causal mask, so one window carries ``end - start``
examples whose histories are strictly earlier events.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..layout import DATASET_ARRAYS, DATASET_FORMAT_VERSION, DATASET_OPTIONAL_ARRAYS, SPLIT_TRAIN, SPLITS

_ARRAYS = DATASET_ARRAYS


def _check_lengths(root: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """Every array's first axis against the manifest's counts: a truncated or swapped file is a clear error
    here rather than an IndexError deep in training."""
    try:
        rows = {
            "event": int(manifest["num_events"]),
            "user": int(manifest["num_users"]),
            "item": int(manifest["num_items"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{root}/manifest.json lacks the dataset's counts ({exc}); re-run `twotower prepare`") from exc
    for name, a in arrays.items():
        kind = "event" if name.startswith(("event_", "split_")) else "item" if name.startswith("item_") else "user"
        want = rows[kind] + (name == "user_offsets")
        if len(a) != want:
            raise DataError(
                f"{root}/{name}.npy has {len(a):,} rows, the manifest says {want:,} ({kind}s); the dataset is "
                "damaged, re-run `twotower prepare`"
            )


@dataclass
class SequenceData:
    """Arrays of a prepared dataset (see :mod:`twotower.data.prepare` for shapes)."""

    root: Path
    manifest: dict
    user_offsets: np.ndarray
    event_item: np.ndarray
    event_ts: np.ndarray
    event_actions: np.ndarray
    event_surface: np.ndarray
    event_weight: np.ndarray
    split_loo: np.ndarray
    split_time: np.ndarray
    item_hash: np.ndarray
    item_author_hash: np.ndarray
    item_feat_hash: np.ndarray
    user_hash: np.ndarray
    user_feat_hash: np.ndarray
    item_text: np.ndarray | None = None  # float16 [N, E] sentence-encoder vectors of the item text
    item_sid: np.ndarray | None = None  # int32 [N, L + 1] semantic-ID codes, then the unique suffix
    item_cold: np.ndarray | None = None  # uint8 [N] 1 = held out by the cold-start protocol

    @classmethod
    def load(cls, root: str | Path, mmap: bool = False) -> SequenceData:
        root = Path(root)
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise DataError(f"{root} is not a prepared dataset (no manifest.json); run `twotower prepare` first")
        manifest = json.loads(mpath.read_text())
        if manifest.get("format_version") != DATASET_FORMAT_VERSION:
            raise DataError(
                f"{root} was prepared with format {manifest.get('format_version')}, this version reads "
                f"{DATASET_FORMAT_VERSION}; re-run `twotower prepare`"
            )
        arrays = {}
        for name in _ARRAYS:
            f = root / f"{name}.npy"
            if not f.is_file():
                raise DataError(f"{root} lacks {f.name}; the dataset is incomplete, re-run `twotower prepare`")
            try:
                arrays[name] = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as exc:  # truncated or not an array file
                raise DataError(f"{f} is unreadable ({exc}); re-run `twotower prepare`") from exc
        for name in DATASET_OPTIONAL_ARRAYS:
            f = root / f"{name}.npy"
            if f.is_file():
                try:
                    arrays[name] = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise DataError(f"{f} is unreadable ({exc}); re-run `twotower prepare`") from exc
        _check_lengths(root, manifest, arrays)
        return cls(root=root, manifest=manifest, **arrays)

    @property
    def text_dim(self) -> int:
        """E of the item text vectors (0 when the dataset has none)."""
        return 0 if self.item_text is None else int(self.item_text.shape[1])

    @property
    def codebook_version(self) -> str | None:
        """The version of the semantic IDs' codebook (None when the dataset has no semantic IDs)."""
        return (self.manifest.get("codebook") or {}).get("version") if self.item_sid is not None else None

    # --- sizes -----------------------------------------------------------------------------------------
    @property
    def num_users(self) -> int:
        return len(self.user_offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_hash)

    @property
    def num_events(self) -> int:
        return len(self.event_item)

    @property
    def num_actions(self) -> int:
        return len(self.manifest.get("actions", []))

    @property
    def num_surfaces(self) -> int:
        return len(self.manifest.get("surfaces", []))

    def action_mask(self, names: list[str]) -> np.ndarray:
        """bool [E]: events carrying any of the actions ``names`` (``event_actions`` is a bitmask over the
        manifest's ``actions``). An unknown name is a DataError listing the dataset's actions."""
        have = list(self.manifest.get("actions", []))
        unknown = [a for a in names if a not in have]
        if unknown:
            raise DataError(f"actions {unknown} are not in this dataset; its actions are {have}")
        bits = sum(1 << have.index(a) for a in names)
        return (self.event_actions.astype(np.int64) & bits) != 0

    def split(self, scheme: str) -> np.ndarray:
        """Per-event split labels, uint8 [E]; scheme is "loo" (leave-last-out) or "time"."""
        if scheme not in ("loo", "time"):
            raise ValueError(f"unknown split scheme {scheme!r}; use 'loo' or 'time'")
        return self.split_loo if scheme == "loo" else self.split_time

    def item_ids(self) -> np.ndarray:
        """Original item id strings, object [N] (index = dense item index)."""
        return self.item_id_column().to_numpy(zero_copy_only=False)

    def item_id_column(self) -> pa.ChunkedArray:
        """The item id strings as Arrow [N] (no Python objects yet: convert in slices where that matters)."""
        col = self._side_column("items.parquet", "item_id")
        return col if pa.types.is_string(col.type) or pa.types.is_large_string(col.type) else col.cast(pa.string())

    def user_ids(self) -> np.ndarray:
        return self._side_column("users.parquet", "user_id").to_numpy(zero_copy_only=False)

    def item_train_counts(self, scheme: str) -> np.ndarray:
        """Training-split interaction count per item, int64 [N] (popularity, exact logQ)."""
        return self._side_column("items.parquet", f"count_train_{scheme}").to_numpy()

    def _side_column(self, file: str, column: str) -> pa.ChunkedArray:
        """One column of the dataset's items / users table; a damaged file is a DataError naming it."""
        try:
            return pq.read_table(self.root / file, columns=[column]).column(0)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{self.root / file} is unreadable ({exc}); re-run `twotower prepare`") from exc

    # --- examples --------------------------------------------------------------------------------------
    def user_of_event(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_users), np.diff(self.user_offsets))

    def train_windows(self, scheme: str, max_len: int) -> np.ndarray:
        """Windows covering every training target exactly once: int64 [W, 3] of (user, start, end).

        Training targets of a user form a prefix of its sequence under both schemes (events are
        time-sorted and the splits are by time), so windows tile that prefix from its end in steps of
        ``max_len``; each window's first target keeps at least the user token as history.
        """
        split = self.split(scheme)
        user = self.user_of_event()
        n_train = np.bincount(user[split == SPLIT_TRAIN], minlength=self.num_users)
        starts0 = self.user_offsets[:-1]
        n_win = -(-n_train // max_len)  # ceil
        u = np.repeat(np.arange(self.num_users), n_win)
        k = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)
        end = starts0[u] + n_train[u] - k * max_len
        start = np.maximum(starts0[u], end - max_len)
        return np.stack([u, start, end], axis=1).astype(np.int64)

    def eval_targets(self, scheme: str, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(user [T], target event row [T]) for split ``which`` ("valid" | "test").

        Leave-last-out has one target per user; under the time split each user's *first* event in the
        split is its target (history = all earlier events, as it would be at serving time).
        """
        split = self.split(scheme)
        rows = np.flatnonzero(split == SPLITS[which])
        user = self.user_of_event()[rows]
        first = np.unique(user, return_index=True)[1]
        return user[first], rows[first]
