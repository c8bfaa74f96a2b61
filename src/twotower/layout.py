"""On-disk names and numbering that more than one layer reads: the prepared dataset's format, its split
labels and the hash salts of each id namespace.

The writer (``data/prepare``) and every reader (``data/dataset``, the service's filters and new-item
hashing) take them from here, so a reader never imports the writer to learn the format.
"""

from __future__ import annotations

import numpy as np

#: Version of the prepared-dataset layout; a reader refuses any other.
DATASET_FORMAT_VERSION = 1

#: Hash namespaces: equal strings in different namespaces never share an embedding row by construction.
SALT_USER, SALT_ITEM, SALT_AUTHOR, SALT_FEATURE = 1, 2, 3, 4

#: Split labels in ``split_loo.npy`` / ``split_time.npy``.
SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = 0, 1, 2
SPLITS = {"train": SPLIT_TRAIN, "valid": SPLIT_VALID, "test": SPLIT_TEST}

# Evaluation protocols (every quality figure names one). ``strict``: nothing of the test event (its time,
# item, actions, surface) reaches the user vector; the request time is the last history event's.
# ``request_time``: the target event's timestamp (and surface) is the request's, HSTU's convention.
PROTOCOLS = ("strict", "request_time")

#: event_surface is int16: 0 = none, 1..MAX_SURFACES index the manifest's surface vocabulary.
MAX_SURFACES = int(np.iinfo(np.int16).max)

#: The arrays of a prepared dataset, each ``<name>.npy`` (shapes and dtypes in ``data/prepare.py``).
DATASET_ARRAYS = (
    "user_offsets",
    "event_item",
    "event_ts",
    "event_actions",
    "event_surface",
    "event_weight",
    "split_loo",
    "split_time",
    "item_hash",
    "item_author_hash",
    "item_feat_hash",
    "user_hash",
    "user_feat_hash",
)
#: Optional item arrays: text vectors (float16 [N, E]), semantic-ID codes (int32 [N, L + 1]), cold-start flags.
DATASET_OPTIONAL_ARRAYS = ("item_text", "item_sid", "item_cold")
DATASET_FILES = frozenset(
    {
        "manifest.json",
        "items.parquet",
        "users.parquet",
        "codebook.safetensors",
        *(f"{a}.npy" for a in (*DATASET_ARRAYS, *DATASET_OPTIONAL_ARRAYS)),
    }
)


def feature_token(column: str, value: object) -> str:
    """The string a categorical feature value is hashed as: ``"column=value"``."""
    return f"{column}={value}"
