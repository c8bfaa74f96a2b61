"""The run's metrics: ``metrics.csv`` (always) and TensorBoard (when installed), one row per scalar.

``metrics.csv`` has the columns ``time, epoch, step, kind, name, value`` and survives kills and resumes:

* every row is flushed as it is written, so a ``kill -9`` loses no row already logged;
* the header is written whenever the file is new or empty (a run killed before its first row left an
  empty file, and its resume used to write rows without a header);
* a resume keeps exactly the rows its checkpoint had seen (``rows`` in the checkpoint's state) and drops the
  ones logged after it, which the resumed run logs again: the file ends as an uninterrupted run's would.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEADER = ["time", "epoch", "step", "kind", "name", "value"]


class MetricsLog:
    """Append-only scalar log of a run directory. ``rows``: data rows in ``metrics.csv`` so far."""

    def __init__(self, out: Path, keep_rows: int | None = None, resume_step: int = 0):
        """``keep_rows``: on a resume, the number of data rows the checkpoint saw (None = keep every row).
        ``resume_step``: the checkpoint's step, from which TensorBoard drops events written after it."""
        self.path = out / "metrics.csv"
        self.rows = _truncate(self.path, keep_rows)
        self._file = open(self.path, "a", newline="", buffering=1)  # noqa: SIM115 - closed by close()
        self._csv = csv.writer(self._file)
        if self._file.tell() == 0:
            self._csv.writerow(HEADER)
            self._file.flush()
        self._tb = _tensorboard(out, resume_step)

    def scalar(self, epoch: int, step: int, kind: str, name: str, value: Any) -> None:
        """Log one value (``kind``: train | valid); flushed before returning."""
        self._csv.writerow([round(time.time(), 1), epoch, step, kind, name, value])
        self._file.flush()
        self.rows += 1
        if self._tb is not None:
            self._tb.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _truncate(path: Path, keep_rows: int | None) -> int:
    """Cut ``path`` to its header and first ``keep_rows`` data rows (all when None); returns the rows kept.

    A partial last line (a kill mid-write) is dropped either way. Rewritten through a temporary file and an
    atomic rename, so a kill here leaves the old file or the new one.
    """
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    partial = bool(lines) and not lines[-1].endswith("\n")
    if partial:
        lines.pop()
    has_header = bool(lines) and lines[0].rstrip("\r\n") == ",".join(HEADER)
    data = lines[1:] if has_header else lines
    kept = data if keep_rows is None else data[:keep_rows]
    if len(kept) != len(data) or not has_header or partial:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(",".join(HEADER) + "\r\n" + "".join(kept) if kept else "")
        os.replace(tmp, path)
        if len(kept) != len(data):
            log.info("metrics.csv: dropped %d rows logged after the checkpoint", len(data) - len(kept))
    return len(kept)


def _tensorboard(out: Path, resume_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: `pip install tensorboard`
        return None
    # purge_step: events after the checkpoint are dropped, as the resumed run writes them again
    return SummaryWriter(str(out / "tb"), purge_step=resume_step or None)
