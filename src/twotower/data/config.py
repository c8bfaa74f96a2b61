""":class:`PrepareConfig`: how ``twotower prepare`` turns logs into a dataset. Saved in the dataset manifest.

Values are range-checked when the config is built (in code, or from a file by :func:`twotower.config.load`):
a bad one is a :class:`~twotower.errors.ConfigError` whose message names the field, the value and what is
allowed, and whose ``field`` attribute names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check, check_float, check_int
from .schemas import ItemSchema, LogSchema, UserSchema

#: Hashes per id (multi-hash embeddings): at most 8, one uint64 column each.
MAX_HASHES = 8


@dataclass
class PrepareConfig:
    """How to turn logs into sequences. Saved in the manifest."""

    num_hashes: int = 2
    max_item_features: int = 16  # tokens beyond this are dropped (logged)
    max_user_features: int = 16
    time_valid_frac: float = 0.1  # global time split: last 10 % of events (by time) are test,
    time_test_frac: float = 0.1  # the 10 % before them validation
    # Item text (ItemSchema.text, or the built-in reader's title and genres): embedded once by the frozen sentence
    # encoder into item_text.npy; the vectors are cached by content hash under text_cache (None: the user cache)
    # None: embed when ItemSchema.text names columns; True: also the built-in reader's text (and an error when
    # there is none); False: never (no encoder needed)
    text: bool | None = None
    text_cache: str | None = None
    # Semantic IDs (twotower.data.semantic_ids): residual k-means of the item text vectors, levels x codes;
    # 0 levels = none. Their prefixes become item feature tokens (item_sid_hash.npy) and codebook.safetensors.
    semantic_id_levels: int = 0
    semantic_id_codes: int = 64
    # Cold-start protocol: this fraction of the items (drawn with cold_seed) keeps no event but the ones that
    # are a user's last (the leave-last-out test targets), so no model ever trains on them (item_cold.npy)
    cold_items: float = 0.0
    cold_seed: int = 0
    log: LogSchema = field(default_factory=LogSchema)
    items: ItemSchema = field(default_factory=ItemSchema)
    users: UserSchema = field(default_factory=UserSchema)

    def __post_init__(self) -> None:
        check_int(self, "num_hashes", 1, MAX_HASHES)
        for name in ("max_item_features", "max_user_features"):
            check_int(self, name, 0)  # 0 = no features
        check_int(self, "semantic_id_levels", 0, 8)
        check_int(self, "semantic_id_codes", 2, 1 << 16)
        check_int(self, "cold_seed", 0)
        check_float(self, "cold_items", 0.0, 1.0, hi_open=True)
        check_float(self, "time_valid_frac", 0.0, 1.0, hi_open=True)  # 0 = no time-split validation
        check_float(self, "time_test_frac", 0.0, 1.0, lo_open=True, hi_open=True)
        total = self.time_valid_frac + self.time_test_frac
        check(
            total < 1,
            "time_valid_frac + time_test_frac",
            total,
            "they must add up to less than 1 (the events before both parts, by time, are the training part)",
            field="time_valid_frac",
        )
