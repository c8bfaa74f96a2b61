"""Writing a prepared dataset directory: its arrays, tables and manifest, swapped in whole.

Layout written (all arrays ``.npy``; ``E`` events, ``U`` users, ``N`` items, ``H`` hashes, ``F`` features)::

    manifest.json          counts, config, action names, surface vocabulary, input checksums
    user_offsets.npy       int64  [U + 1]   user u's events are rows offsets[u]:offsets[u+1]
    event_item.npy         int32  [E]       dense item index, time-ordered within each user
    event_ts.npy           int64  [E]       seconds
    event_actions.npy      uint8  [E]       multi-hot bitmask (bit i = manifest["actions"][i])
    event_surface.npy      int16  [E]       0 = none, else index into manifest["surfaces"] + 1 (at most 32,767)
    event_weight.npy       float32[E]
    split_loo.npy          uint8  [E]       0 train, 1 validation, 2 test (per-user leave-last-out)
    split_time.npy         uint8  [E]       same labels, global time split
    item_hash.npy          uint64 [N, H]    raw stable hashes (model maps them to buckets)
    item_author_hash.npy   uint64 [N, H]    0 where the item has no author
    item_feat_hash.npy     uint64 [N, F]    one hash per "field=value" token, 0 = padding
    user_hash.npy          uint64 [U, H]
    user_feat_hash.npy     uint64 [U, Fu]
    item_text.npy          float16[N, E]    optional: item text through the sentence encoder (unit, 0 = none)
    item_sid.npy           int32  [N, L+1]  optional: semantic-ID codes per level, then the unique suffix
    item_cold.npy          uint8  [N]       optional: 1 = held out by the cold-start protocol
    codebook.safetensors                    optional: the semantic IDs' residual k-means centroids
    items.parquet          item_id, train counts per split scheme, first/last seen
    users.parquet          user_id, number of events

The names are :data:`twotower.layout.DATASET_ARRAYS` / ``DATASET_FILES``, which the reader
(:mod:`twotower.data.dataset`) takes from there too. Writing is atomic: everything goes to a temporary
sibling directory that :func:`twotower.fsutil.swap_dir` renames into place, so an interrupted run leaves no
half-written dataset and a re-run replaces it whole; the siblings a killed run left are removed by the next.
Only an earlier prepared dataset (or an empty directory) is replaced (:func:`check_out`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from ..fsutil import remove_leftovers, sibling_names, swap_dir
from ..layout import DATASET_ARRAYS, DATASET_FILES, DATASET_OPTIONAL_ARRAYS, SPLIT_TRAIN


def check_out(out: Path, inputs: Iterable[str | Path | None] = ()) -> None:
    """Refuse an ``out`` whose replacement would destroy anything but an earlier prepared dataset.

    ``out`` is replaced whole, so it must be absent, an empty directory, or a directory holding only what
    prepare writes (its ``manifest.json`` included); and no input file may lie inside it.
    """
    resolved = out.resolve()
    for path in inputs:
        if path is not None and Path(path).resolve().is_relative_to(resolved):
            raise DataError(
                f"--out {out} contains the input {path}; prepare replaces --out whole and would delete it. "
                "Choose an --out outside the input files"
            )
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(
            f"--out {out} exists and is a file or a symbolic link, not a directory; choose another --out or "
            f"delete {out} first"
        )
    if not out.exists():
        return
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if name not in DATASET_FILES]
    if entries and ("manifest.json" not in entries or foreign):
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        why = f"it holds files prepare did not write ({shown})" if foreign else "it has no manifest.json"
        raise DataError(
            f"--out {out} is not an earlier prepared dataset: {why}. Prepare replaces --out whole, so choose "
            f"another --out or delete {out} first"
        )


def stats_tables(
    item_ids: pa.Array, user_ids: pa.Array, item: np.ndarray, ts: np.ndarray, offsets: np.ndarray,
    split_loo: np.ndarray, split_time: np.ndarray,
) -> dict[str, pa.Table]:  # fmt: skip
    """``items.parquet`` (train counts per split scheme, first/last seen) and ``users.parquet`` (events per
    user). ``item`` int32 [E] and ``ts`` int64 [E] in (user, time) order, ``offsets`` int64 [U + 1]."""
    num_items = len(item_ids)

    def first_last(values: np.ndarray, fn) -> np.ndarray:
        outv = np.full(num_items, -1 if fn is np.maximum else np.iinfo(np.int64).max, np.int64)
        fn.at(outv, item, values)
        return outv

    items = pa.table(
        {
            "item_id": item_ids,
            "count_all": np.bincount(item, minlength=num_items).astype(np.int64),
            "count_train_loo": np.bincount(item[split_loo == SPLIT_TRAIN], minlength=num_items).astype(np.int64),
            "count_train_time": np.bincount(item[split_time == SPLIT_TRAIN], minlength=num_items).astype(np.int64),
            "first_ts": first_last(ts, np.minimum),
            "last_ts": first_last(ts, np.maximum),
        }
    )
    return {"items.parquet": items, "users.parquet": pa.table({"user_id": user_ids, "num_events": np.diff(offsets)})}


def write_dataset(
    out: Path, arrays: dict[str, np.ndarray], tables: dict[str, pa.Table], manifest: dict, codebook=None
) -> None:
    """Write the dataset to a temporary sibling of ``out``, then swap it in with two renames.

    ``arrays`` are :data:`~twotower.layout.DATASET_ARRAYS`, in that order. The old ``out`` (checked by
    :func:`check_out`) is moved aside before the new one is renamed into place and deleted after. An
    exception between the renames still finishes the swap, as the new dataset is then complete; a kill
    there leaves ``out`` missing and both siblings, which the next run removes (logged).
    """
    assert tuple(arrays)[: len(DATASET_ARRAYS)] == DATASET_ARRAYS
    assert set(tuple(arrays)[len(DATASET_ARRAYS) :]) <= set(DATASET_OPTIONAL_ARRAYS)
    out = Path(os.path.abspath(out))  # "out/.." and "." have a real name and parent
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out.parent, DATASET_FILES, out.name, what="dataset", job="prepare")
    tmp, old = sibling_names(out)
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        for name, table in tables.items():
            pq.write_table(table, tmp / name)
        if codebook is not None:
            codebook.save(tmp / "codebook.safetensors")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks complete
        check_out(out)  # again: the run may have been long
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        raise
    swap_dir(tmp, out, old)
