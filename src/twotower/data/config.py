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
    log: LogSchema = field(default_factory=LogSchema)
    items: ItemSchema = field(default_factory=ItemSchema)
    users: UserSchema = field(default_factory=UserSchema)

    def __post_init__(self) -> None:
        check_int(self, "num_hashes", 1, MAX_HASHES)
        for name in ("max_item_features", "max_user_features"):
            check_int(self, name, 0)  # 0 = no features
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
