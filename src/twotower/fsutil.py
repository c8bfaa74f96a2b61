"""Replacing a directory whole: write the new one beside it, then swap it in with two renames.

A directory cannot be renamed onto a non-empty one, so the swap is two renames: the previous ``out`` to
``old``, then the complete new directory ``tmp`` to ``out``. Every writer of a whole-directory artifact
(a prepared dataset, an embeddings export, a checkpoint, a served model copy) goes through :func:`swap_dir`,
so each gets the same guarantees: readers see the previous or the new directory, an exception between the
renames still finishes the swap (the new directory is complete), or puts the previous one back, and the
previous copy is deleted once the new one is in place.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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
