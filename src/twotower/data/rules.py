"""Action rules: a rating or score column mapped to named 0/1 actions, so a ratings file needs no preprocessing.

A rule is one comparison of a log column with a number::

    rule   := <column> <op> <number>        op: >=  >  <=  <  ==  !=
    action := <name> ":" <rule>             on the command line: --action "liked: rating >= 4"

e.g. ``liked: rating >= 4``, ``disliked: rating <= 2``, ``loved: rating == 5``, ``rated: rating > 0``. The
column is everything before the operator (spaces around it are dropped, so ``rating:float`` or ``my score``
are columns too); the number is any finite decimal (``3.5`` keeps half-stars as they are). There is no
``and``/``or`` and nothing is evaluated as Python: two thresholds are two actions.

A rule is true where the column's value compares true; a null (empty) or NaN value makes it false. Rules are
applied to each streamed chunk of the log with Arrow compute (:func:`evaluate`); a value that is no number
is a :class:`~twotower.errors.DataError` naming it and its data row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigError, DataError
from .columns import is_text

#: Comparison operators -> Arrow compute functions.
OPS = {
    ">=": pc.greater_equal,
    "<=": pc.less_equal,
    "==": pc.equal,
    "!=": pc.not_equal,
    ">": pc.greater,
    "<": pc.less,
}
# the column and the number hold no operator character, so exactly one operator is found; the two-character
# operators are tried first (``>=`` must not parse as ``>`` and a number ``=4``)
_RULE = re.compile(r"^\s*(?P<column>[^<>=!]*?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<number>[^<>=!]*?)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
EXAMPLE = '"liked: rating >= 4"'


@dataclass(frozen=True)
class ActionRule:
    """A parsed rule: action ``name`` is true where ``column <op> value``."""

    name: str
    column: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.name}: {self.column} {self.op} {self.value:g}"


def _refuse(name: str, expr: str, what: str) -> ConfigError:
    return ConfigError(
        f"action rule '{name}: {expr}': {what}. A rule is '<column> <op> <number>' with op one of "
        f"{', '.join(OPS)}, e.g. {EXAMPLE}",
        field="action_rules",
    )


def parse_rule(name: str, expr: str) -> ActionRule:
    """``"rating >= 4"`` named ``name`` -> :class:`ActionRule`; ConfigError naming the rule, the fault and the form."""
    if not isinstance(expr, str):
        raise _refuse(name, str(expr), f"a rule is a string, got {type(expr).__name__}")
    if not _NAME.match(name):
        raise _refuse(name, expr, "the action name must be letters, digits, '_', '.' or '-' (no spaces)")
    m = _RULE.match(expr)
    if m is None:
        hint = ""
        if "=>" in expr or "=<" in expr:
            hint = " (write '>=' / '<=': the '=' comes second)"
        elif re.search(r"(?<![<>=!])=(?!=)", expr):
            hint = " (equality is '==')"
        raise _refuse(name, expr, f"expected one column, one comparison operator and one number{hint}")
    column, op, number = m["column"], m["op"], m["number"]
    if not column:
        raise _refuse(name, expr, "the column name is missing before the operator")
    try:
        value = float(number)
    except ValueError:
        raise _refuse(name, expr, f"{number!r} is not a number" if number else "the number is missing") from None
    if not math.isfinite(value):
        raise _refuse(name, expr, f"{number!r} is not a finite number")
    return ActionRule(name, column, op, value)


def split_action(text: str) -> tuple[str, str]:
    """``"liked: rating >= 4"`` (a ``--action`` value) -> ``("liked", "rating >= 4")``; ConfigError otherwise."""
    name, sep, expr = text.partition(":")
    if not sep or not name.strip():
        raise ConfigError(
            f"action {text!r}: expected '<name>: <column> <op> <number>', e.g. {EXAMPLE}", field="action_rules"
        )
    return name.strip(), expr.strip()


def parse_rules(rules: dict[str, str]) -> list[ActionRule]:
    """Every rule of a ``{name: expr}`` mapping, parsed, in order."""
    return [parse_rule(name, expr) for name, expr in rules.items()]


def evaluate(rule: ActionRule, col: pa.Array | pa.ChunkedArray, path: str | Path, row0: int) -> np.ndarray:
    """bool [R]: where ``rule`` holds on ``col`` (one chunk of the log, its first value at data row ``row0 + 1``).

    Numbers and numeric text compare as float64; null, NaN and empty text are false. Text that is no number is a
    DataError naming the value and its data row.
    """
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if is_text(col.type):  # an empty text cell is no value, as an empty numeric CSV cell is null
        col = pc.if_else(pc.equal(col, "").fill_null(False), pa.scalar(None, col.type), col)
    try:
        num = col.cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise _not_numeric(rule, col, path, row0) from None
    hit = OPS[rule.op](num, pa.scalar(rule.value, pa.float64()))
    hit = pc.and_(hit.fill_null(False), pc.invert(pc.is_nan(num).fill_null(False)))  # NaN != 4 is true in IEEE
    return hit.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _not_numeric(rule: ActionRule, col: pa.Array | pa.ChunkedArray, path: str | Path, row0: int) -> DataError:
    """The error for a rule column that holds something Arrow cannot read as a number: the first such value."""
    reason = f"column {rule.column!r} ({col.type}) must hold numbers"
    for i, v in enumerate(col.to_pylist()):  # only on the error path
        try:
            if v not in (None, ""):
                float(v)
        except (TypeError, ValueError):
            reason = f"column {rule.column!r} must hold numbers, found {v!r} at data row {row0 + i + 1}"
            break
    return DataError(f"{path}: {reason} (action rule '{rule}'); fix the value or leave the cell empty (= false)")
