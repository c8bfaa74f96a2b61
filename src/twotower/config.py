"""Typed dataclass configs: load from / save to JSON or TOML, passed whole, saved with every artifact.

Every stage has one config dataclass; nested dataclasses are (de)serialised recursively. Unknown keys are
an error that names the key and the valid ones, so a typo in a config file never silently does nothing.
Values are type-checked against the field annotations (an int is accepted where a float is expected, a
bool is never taken for a number) and range-checked by each dataclass's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass (possibly nested) -> plain JSON-serialisable dict."""
    return dataclasses.asdict(cfg)


def check(ok: bool, name: str, value: Any, allowed: str, field: str | None = None) -> None:
    """Range check for ``__post_init__``: ConfigError ``"name = value is not allowed; allowed"`` unless ``ok``.

    The error's ``field`` is ``field`` (default ``name``), for a check whose ``name`` is an expression of
    several fields (``"time_valid_frac + time_test_frac"``).
    """
    if not ok:
        raise ConfigError(f"{name} = {value!r} is not allowed; {allowed}", field=field or name)


def _is_int(value: Any) -> bool:
    # bool is an Integral: `dim = true` must not pass as 1; NumPy integers are Integrals too
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(obj: Any, name: str, lo: int, hi: int | None = None) -> None:
    """``obj.name`` must be an integer >= ``lo`` (and <= ``hi`` when given)."""
    value = getattr(obj, name)
    ok = _is_int(value) and value >= lo and (hi is None or value <= hi)
    check(ok, name, value, f"it must be an integer >= {lo}" if hi is None else f"it must be an integer in [{lo}, {hi}]")


def check_float(obj: Any, name: str, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
    """``obj.name`` must be a finite number in ``[lo, hi]``; ``lo_open`` / ``hi_open`` exclude an end."""
    value = getattr(obj, name)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > lo if lo_open else value >= lo)
    ok = ok and (value < hi if hi_open else value <= hi)
    if hi == math.inf:
        allowed = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
        allowed = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    check(ok, name, value, f"it must be {allowed}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_KIND = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_NAME = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}


def _type_error(key: str, value: Any, expected: str) -> ConfigError:
    got = _NAME.get(type(value), type(value).__name__)
    hint = " (remove the quotes)" if isinstance(value, str) and expected in ("an integer", "a number") else ""
    return ConfigError(f"{key} = {value!r} is {got}; expected {expected}{hint}")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (``key`` names it in errors); int -> float where a float is due."""
    origin = typing.get_origin(tp)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise _type_error(key, value, "a table/object")
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key) if len(args) == 1 else value
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            parts = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else [value]
            raise _type_error(key, value, f"a list: {key} = {json.dumps(parts, default=str)}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        seq = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple or tp is tuple else seq
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, "a table/object")
        _, inner = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, value, _KIND[float])
        return float(value)
    if tp in (bool, int, str):
        # bool is a subclass of int: `dim = true` must not pass as 1
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise _type_error(key, value, _KIND[tp])
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and bad values raise ConfigError.

    ``where`` names the source in messages: a file path, then ``file.toml [table]`` for nested tables.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if _is_dataclass_type(tp) and isinstance(v, dict):
            kwargs[k] = from_dict(tp, v, _nested(where, k))
            continue
        try:
            kwargs[k] = _coerce(tp, v, k)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}", field=k) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}", field=getattr(exc, "field", None)) from exc


def _nested(where: str, key: str) -> str:
    """``x.toml`` + ``model`` -> ``x.toml [model]``; ``x.toml [a]`` + ``b`` -> ``x.toml [a.b]``."""
    if where.endswith("]") and " [" in where:
        head, table = where[:-1].rsplit(" [", 1)
        return f"{head} [{table}.{key}]"
    return f"{where} [{key}]"


def load(cls: type[T], path: str | Path) -> T:
    """Load a dataclass config from a ``.json`` or ``.toml`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing .toml or .json file")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse ({exc}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table/object at the top level, got {type(data).__name__}")
    return from_dict(cls, data, where=str(path))


def save(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as pretty JSON."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")
