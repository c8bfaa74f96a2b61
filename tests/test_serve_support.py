"""Shared, built-once artifacts for the service tests (no tests here; imported by tests/test_serve*.py).

pytest would build a session fixture once per module that defines it, so the expensive part (train a tiny
hybrid model, export, index, write states) is cached in this module instead: ~3 s once per test process.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKEN = "test-admin-token-0123456789abcdef"
_CACHE: dict[str, ServeArtifacts] = {}


@dataclass
class ServeArtifacts:
    root: Path  # artifact root (exact index, SQLite states written as of ``as_of``)
    run: Path  # the training run
    data: Path  # the prepared dataset
    as_of: int  # states encode every event before this time

    def copy_root(self, dest: Path) -> Path:
        """A private copy of the root, for tests that publish, corrupt or delete artifacts."""
        shutil.copytree(self.root, dest)
        return dest


def shared_artifacts(tmp_path_factory, synth_data: Path) -> ServeArtifacts:
    if "main" in _CACHE:
        return _CACHE["main"]
    from test_online import hybrid_config

    from twotower.data import SequenceData
    from twotower.jobs.serving import build_artifacts
    from twotower.train.trainer import Trainer

    base = tmp_path_factory.mktemp("serve")
    data = SequenceData.load(synth_data)
    cfg = hybrid_config(epochs=1, eval_users=0, subject_prob=0.3)
    cfg.model.positions = "learned+time"  # time-gap buckets reach the model: the service's gaps must be right
    Trainer(data, cfg, base / "run").fit(progress=False)
    as_of = int(np.median(data.event_ts))  # half of the events arrive after the snapshot: real contexts
    build_artifacts(base / "run", base / "root", backend="exact", as_of=as_of)
    _CACHE["main"] = ServeArtifacts(base / "root", base / "run", synth_data, as_of)
    return _CACHE["main"]


def settings(root: Path, **kw):
    from twotower.serve import ServeSettings

    return ServeSettings(artifacts=root, admin_token=TOKEN, **kw)


def wait_ready(url: str, proc=None, seconds: float = 60.0) -> None:
    """Poll ``url``/readyz until it answers 200; fail the test after ``seconds``, or at once if ``proc`` (the
    server's subprocess) exits."""
    import time

    import httpx
    import pytest

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}) before it was ready")
        time.sleep(0.1)
    pytest.fail(f"the server was not ready in {seconds:.0f} s")
