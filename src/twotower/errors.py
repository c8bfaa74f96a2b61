"""One error hierarchy: every failure twotower expects is a :class:`TwotowerError` whose message says what is
wrong and how to fix it.

The command line maps these to exit codes in one place (:func:`exit_code`): usage, configuration and input
errors exit 2 (as the README documents); an interrupted command exits 130; anything that is not a
``TwotowerError`` (or an ``OSError`` such as a full disk) is a bug and keeps its traceback. The service maps
the same classes to HTTP statuses in ``serve/errors.py``.

Each class also derives from the builtin it replaced (``ValueError`` for bad values, ``RuntimeError`` for a
state that cannot be used), so ``except ValueError`` written against older versions still catches it.
"""

from __future__ import annotations

#: Exit status of an expected failure: bad usage, a bad config or input, an unusable artifact.
EXIT_ERROR = 2
#: Exit status of a command stopped by Ctrl-C (SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


class TwotowerError(Exception):
    """Base of every expected failure; the message names the fix."""

    exit_code: int = EXIT_ERROR


# --- what the user gave ---------------------------------------------------------------------------------
class UsageError(TwotowerError, ValueError):
    """A command was called with arguments that do not fit together (e.g. neither --dataset nor --log)."""


class ConfigError(TwotowerError, ValueError):
    """A config file or dict does not match its dataclass, or a value is out of range.

    ``field`` names the config field at fault where there is one (``"hnsw_m"``), so a caller can point at
    its own spelling of it (the CLI's ``--hnsw-m``) without reading the message.
    """

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnsafeSettings(ConfigError):
    """The service's settings would run it insecurely (e.g. a default admin token outside dev mode)."""


class DataError(TwotowerError, ValueError):
    """Input data is malformed; the message says where and how to fix it."""


class OutputError(TwotowerError, ValueError):
    """An output path cannot be written as asked (it is a file, or holds something that must not be lost)."""


# --- what is on disk ------------------------------------------------------------------------------------
class ArtifactError(TwotowerError, RuntimeError):
    """An artifact (serving root, model copy, export) is missing something or is inconsistent."""


class CheckpointError(ArtifactError):
    """A checkpoint is missing, unreadable, or does not hash to the model version it records."""


class EmbeddingsError(ArtifactError, ValueError):
    """An embeddings export that is damaged or inconsistent (the message names the file and the fix)."""


class IndexError_(ArtifactError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """An index file is missing, corrupt or incompatible; the message names the fix."""


class VersionMismatch(IndexError_):
    """An artifact was built from another model version than the one it is paired with."""


class RecallTooLow(IndexError_):
    """The ANN index misses too many of the exact top-k; it was not published."""


class RefreshError(TwotowerError, ValueError):
    """The run cannot be refreshed (e.g. an unsplit model has no cached state); the message names the fix."""


# --- the feature store ----------------------------------------------------------------------------------
class StoreError(TwotowerError, RuntimeError):
    """The feature store cannot do what was asked; the message names the fix."""


class StoreUnavailable(StoreError):
    """The backend is down, unreachable or too slow: serve the cold-start path instead."""


class StoreConfigError(StoreError):
    """The store URL or its settings are wrong (unknown form or parameter, a directory, a missing file): waiting
    and retrying cannot help, so the service refuses to start; the message names the fix."""


class StoreMissing(StoreConfigError):
    """A reader was pointed at a store that does not exist (e.g. a mistyped SQLite path); the service refuses to
    start instead of serving every user cold-start from a new, empty store."""


# --- a request to the service ---------------------------------------------------------------------------
class RequestError(TwotowerError, ValueError):
    """The request is well-formed JSON but cannot be served as is; the message says what to change (422)."""


def exit_code(exc: BaseException) -> int | None:
    """The process exit status for ``exc``, or None when it is a bug (the caller re-raises it).

    ``TwotowerError`` -> its ``exit_code`` (2); ``OSError`` (a permission, a full disk) -> 2;
    ``KeyboardInterrupt`` -> 130.
    """
    if isinstance(exc, TwotowerError):
        return exc.exit_code
    if isinstance(exc, OSError):
        return EXIT_ERROR
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return None
