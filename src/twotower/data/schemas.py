"""Column mappings of the input files: which column of an interaction log, item table or user table holds what.

The readers (:mod:`twotower.data.readers`, :mod:`twotower.data.tables`) turn files into normalised Arrow
tables through these mappings; :class:`~twotower.data.config.PrepareConfig` carries one of each and saves
them in the dataset manifest. Only the id and time columns of a log are required; every other mapping is
optional. A mapped column that the file lacks is a :class:`~twotower.errors.DataError` naming the file's
columns and the option that maps it, raised when the file is read (the file is needed to know).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Actions are stored as a uint8 bitmask per event, so a log maps at most this many action columns.
MAX_ACTIONS = 8


@dataclass
class LogSchema:
    """Column mapping of an interaction log. Only the three id/time columns are required."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    actions: list[str] = field(default_factory=list)  # 0/1 (or boolean) columns -> multi-hot actions
    surface: str | None = None  # categorical: where the interaction happened
    weight: str | None = None  # per-event training weight
    delimiter: str | None = None  # CSV only; None: tab for .tsv/.tab files, else ","

    def columns(self) -> list[str]:
        """The file columns this mapping reads, each once, in a fixed order."""
        used = [self.user_id, self.item_id, self.timestamp, *self.actions, self.surface, self.weight]
        return list(dict.fromkeys(c for c in used if c))


@dataclass
class ItemSchema:
    """Column mapping of an optional item table."""

    item_id: str = "item_id"
    author_id: str | None = None  # creator / author / artist
    features: list[str] = field(default_factory=list)  # single-valued categorical columns
    multi_valued: dict[str, str] = field(default_factory=dict)  # column -> separator, e.g. genres "|"
    delimiter: str | None = None  # None: tab for .tsv/.tab files, else ","


@dataclass
class UserSchema:
    """Column mapping of an optional user table."""

    user_id: str = "user_id"
    features: list[str] = field(default_factory=list)
    delimiter: str | None = None  # None: tab for .tsv/.tab files, else ","
