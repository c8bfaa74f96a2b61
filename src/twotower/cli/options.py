"""Command-line values into config dataclasses, with errors that name the flag the user typed.

Every config dataclass checks its values in ``__post_init__`` and raises :class:`~twotower.errors.ConfigError`
(a ``ValueError``) whose ``field`` attribute names the field at fault. A flag is named after its field
(``hnsw_m`` is ``--hnsw-m``), so a refused value is reported under its flag without reading the message;
for an error that names no field, the flags are checked one at a time to find it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")


def flag(field: str) -> str:
    """The command-line flag of a config field: ``hnsw_m`` -> ``--hnsw-m``."""
    return "--" + field.replace("_", "-")


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` the user set (argparse leaves an unset optional flag at None)."""
    return {k: v for k, v in values.items() if v is not None}


def replace_checked(cfg: T, values: dict[str, Any]) -> T:
    """``dataclasses.replace(cfg, **values)``, re-running the config's checks; a refusal names the flag.

    Raises ConfigError ``"--flag: <the config's message>"`` for the first flag whose value the config
    refuses on its own, or ``"command line: <message>"`` when only the combination is refused.
    """
    if not values:
        return cfg
    try:
        return dataclasses.replace(cfg, **values)
    except ValueError as whole:  # ConfigError is a ValueError; the configs' checks raise it
        field = getattr(whole, "field", None)
        if field in values:
            raise ConfigError(f"{flag(field)}: {whole}") from whole
        for name, value in values.items():
            try:
                dataclasses.replace(cfg, **{name: value})
            except ValueError as exc:
                raise ConfigError(f"{flag(name)}: {exc}") from exc
        raise ConfigError(f"command line: {whole}") from whole
