"""Replacing a directory whole: write the new one beside it, then swap it in with two renames.

A directory cannot be renamed onto a non-empty one, so the swap is two renames: the previous ``out`` to
``old``, then the complete new directory ``tmp`` to ``out``. Every writer of a whole-directory artifact
(a prepared dataset, an embeddings export, a checkpoint, a served model copy) goes through :func:`swap_dir`,
so each gets the same guarantees: readers see the previous or the new directory, an exception between the
renames still finishes the swap (the new directory is complete), or puts the previous one back, and the
previous copy is deleted once the new one is in place.

Writers name their temporary and moved-aside siblings ``.<name>.tmp-<pid>-<x>`` / ``.<name>.old-<pid>-<x>``
(:func:`sibling_names`). A writer killed before its swap finished leaves them behind; the next run of that
writer removes those of processes that are gone (:func:`remove_leftovers`), never a live process's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger(__name__)

# `.<name>.tmp-<pid>` or `.<name>.old-<pid>`, with the random tail tempfile.mkdtemp adds (or none: older runs)
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(-\w+)?")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace the small file ``path`` (a pointer such as ``CURRENT``) whole: readers see the old or the new text,
    never half. The temporary is ``.<name>.tmp-<pid>`` beside it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def file_in_the_way(out: Path) -> str | None:
    """Why directory ``out`` cannot be used (``"is a file"``, or the file among its parents that keeps it from
    being created), or None when it exists as a directory or can be created."""
    blocker = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocker is None or blocker.is_dir():
        return None
    return "is a file" if blocker == out else f"cannot be created: {blocker} is a file"


def swap_dir(tmp: Path, out: Path, old: Path) -> None:
    """Move the complete directory ``tmp`` to ``out``; a previous ``out`` waits at ``old`` in between (a
    reader may fall back to it there) and is deleted once ``out`` is in place. ``old`` must be this writer's
    own name: a directory already there is an older copy (of ``out``, or, with ``out`` missing, the only one
    left by a kill between the renames, kept until the new ``out`` is in place)."""
    try:
        if out.exists():
            if old.exists():
                shutil.rmtree(old)  # older than `out`
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        # judged by what is on disk (a signal may land just after a rename): stopped between the renames,
        # finish the swap, else put the previous copy back
        if not out.exists() and tmp.exists():
            try:
                os.replace(tmp, out)
            except OSError:
                try:
                    if old.exists():
                        os.replace(old, out)
                except OSError:
                    pass  # `old` stays where readers look for it (see the docstring)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)


def sibling_names(out: Path) -> tuple[Path, Path]:
    """Fresh, empty ``(tmp, old)`` directories beside ``out`` for :func:`swap_dir`: ``.<name>.tmp-<pid>-<x>``
    and ``.<name>.old-<pid>-<x>``. Fresh names, so that a kept leftover of this pid neither blocks this run
    nor is deleted by it. ``tmp`` gets ordinary permissions (``mkdtemp`` makes it private)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o755)
    return tmp, old


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists. Our own pid on a leftover is a process of another pid namespace
    (a container that is gone): not alive."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OverflowError:  # beyond any pid: never a process
        return False
    return True


def remove_leftovers(
    parent: Path, files: Collection[str], name: str | None = None, what: str = "output", job: str = "run"
) -> list[Path]:
    """Delete the temporary and moved-aside directories (:func:`sibling_names`) that killed writers left in
    ``parent``; returns those deleted.

    Only directories named for ``name`` (None: for any name), whose process is gone (:func:`pid_alive`)
    and that hold nothing but ``files`` (what the writer writes) are deleted, each with a warning naming
    ``what`` it was and which ``job`` left it; one holding anything else is logged and left alone.
    """
    removed = []
    if not parent.is_dir():
        return removed
    for path in sorted(parent.iterdir()):
        match = _LEFTOVER.fullmatch(path.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if not path.is_dir() or path.is_symlink() or pid_alive(int(match["pid"])):
            continue
        if not {p.name for p in path.iterdir()} <= set(files):
            log.warning("leaving %s alone: it looks like a %s leftover but holds other files", path, job)
            continue
        state = "new" if match["kind"] == "tmp" else "previous"
        log.warning("removing %s, the %s %s of an earlier %s that was killed", path, state, what, job)
        shutil.rmtree(path)
        removed.append(path)
    return removed
