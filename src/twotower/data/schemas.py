"""Column mappings of the input files: which column of an interaction log, item table or user table holds what.

The readers (:mod:`twotower.data.readers`, :mod:`twotower.data.tables`) turn files into normalised Arrow
tables through these mappings; :class:`~twotower.data.config.PrepareConfig` carries one of each and saves
them in the dataset manifest. Only the id and time columns of a log are required; every other mapping is
optional. A mapped column that the file lacks is a :class:`~twotower.errors.DataError` naming the file's
columns and the option that maps it, raised when the file is read (the file is needed to know).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .rules import ActionRule, parse_rules

#: Actions are stored as a uint8 bitmask per event, so a log maps at most this many actions (columns + rules).
MAX_ACTIONS = 8


@dataclass
class LogSchema:
    """Column mapping of an interaction log. Only the three id/time columns are required."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    actions: list[str] = field(default_factory=list)  # 0/1 (or boolean) columns -> multi-hot actions
    # action name -> rule on a numeric column, e.g. {"liked": "rating >= 4"} (twotower.data.rules); these
    # actions follow the ``actions`` columns in the bitmask, in order
    action_rules: dict[str, str] = field(default_factory=dict)
    surface: str | None = None  # categorical: where the interaction happened
    weight: str | None = None  # per-event training weight
    delimiter: str | None = None  # CSV only; None: tab for .tsv/.tab files, else ","

    def __post_init__(self) -> None:
        self.rules()

    def rules(self) -> list[ActionRule]:
        """The parsed action rules. ConfigError for a bad rule, a name used twice (a rule named like an action
        column) or more than :data:`MAX_ACTIONS` actions in all."""
        rules = parse_rules(self.action_rules)
        names = self.action_names()
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(
                f"action name(s) {twice} used twice (action columns {self.actions}, rules {list(self.action_rules)}); "
                "give every action its own name",
                field="action_rules",
            )
        if len(names) > MAX_ACTIONS:
            raise ConfigError(
                f"{len(names)} actions ({len(self.actions)} action columns + {len(rules)} action rules): at most "
                f"{MAX_ACTIONS} are supported (a uint8 bitmask per event); drop some",
                field="action_rules",
            )
        return rules

    def action_names(self) -> list[str]:
        """The names of the actions, bit by bit: the 0/1 columns, then the rules."""
        return [*self.actions, *self.action_rules]

    def columns(self) -> list[str]:
        """The file columns this mapping reads, each once, in a fixed order."""
        ruled = [rule.column for rule in parse_rules(self.action_rules)]
        used = [self.user_id, self.item_id, self.timestamp, *self.actions, *ruled, self.surface, self.weight]
        return list(dict.fromkeys(c for c in used if c))


@dataclass
class ItemSchema:
    """Column mapping of an optional item table."""

    item_id: str = "item_id"
    author_id: str | None = None  # creator / author / artist
    features: list[str] = field(default_factory=list)  # single-valued categorical columns
    multi_valued: dict[str, str] = field(default_factory=dict)  # column -> separator, e.g. genres "|"
    # free-text columns (title, description, ...): joined as "column: value" lines and embedded by the frozen
    # sentence encoder (twotower.data.text, needs `pip install 'twotower[text]'`)
    text: list[str] = field(default_factory=list)
    delimiter: str | None = None  # None: tab for .tsv/.tab files, else ","


@dataclass
class UserSchema:
    """Column mapping of an optional user table."""

    user_id: str = "user_id"
    features: list[str] = field(default_factory=list)
    delimiter: str | None = None  # None: tab for .tsv/.tab files, else ","
