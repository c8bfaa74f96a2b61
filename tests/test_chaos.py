"""The fast part of the chaos suite (issue 17; the long one is ``python benchmarks/chaos.py``): real
``python -m twotower`` processes SIGKILLed at seeded random points, re-run or resumed, then checked for
leftovers, for outputs that load, and against an uninterrupted run. Plus what the suite found killed jobs
leaving for good, now removed by the next run: an export's or a model copy's temporaries (``.EMB.tmp-<pid>``),
and a complete index version that a build killed before publishing it left unnamed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEAD_PID = 4_194_305  # above Linux's largest pid_max: never a live process


def _load_chaos_jobs():
    spec = importlib.util.spec_from_file_location("chaos_jobs", REPO / "benchmarks" / "chaos_jobs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_jobs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos_jobs()


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """Uninterrupted reference runs of prepare, train (3 epochs), export and index build, timed."""
    return chaos.build_reference(
        tmp_path_factory.mktemp("chaos") / "ref", jobs=chaos.JOBS[:3] + ("index build",), epochs=3
    )


def _trials(ref, tmp_path: Path, job: str, seed: int) -> list:
    rng = np.random.default_rng(seed)
    points = rng.uniform(0.0, ref.durations[job], 2)
    return [chaos.kill_trial(ref, job, tmp_path / f"t{i}", float(p), prefill=i == 1) for i, p in enumerate(points)]


@pytest.mark.parametrize("job", ["prepare", "index build"])
def test_killed_job_rerun_leaves_nothing_and_equals_an_uninterrupted_run(ref, tmp_path, job):
    """Two kills (the second with the reference output in place, to be replaced): after the re-run, no temporary
    name is left, the output loads, and it equals the reference (prepared arrays byte for byte; the published
    index's ids and vectors)."""
    for t in _trials(ref, tmp_path, job, seed=17):
        assert t.failures == [] and t.leftovers == [], t


def test_train_killed_after_a_checkpoint_resumes_to_the_same_weights(ref, tmp_path):
    """`twotower train` SIGKILLed just after its first checkpoint (epoch ends, and every 0.5 s here), then `--resume`:
    the final last/best weights and metrics.csv (time and throughput aside) equal the uninterrupted run's."""
    t = chaos.kill_trial(ref, "train", tmp_path / "t", 0.05, prefill=False, after="checkpoints/last/state.json")
    assert t.killed and t.rerun == "--resume", t
    assert t.failures == [] and t.leftovers == [], t


def test_export_removes_what_killed_exports_left(ref, tmp_path):
    """A killed export left `.EMB.tmp-<pid>` beside its output for good; the next export removes the
    temporaries of dead processes (holding only export files), and keeps a live process's and foreign ones."""
    from twotower.jobs.export import export_items

    out = tmp_path / "emb"
    dead = tmp_path / f".emb.tmp-{DEAD_PID}"
    dead.mkdir()
    (dead / "embeddings.npy").write_bytes(b"half")
    (dead_old := tmp_path / f".emb.old-{DEAD_PID}-x1").mkdir()
    (live := tmp_path / f".emb.tmp-{os.getppid()}").mkdir()  # our parent is alive: a running export
    (foreign := tmp_path / f".emb.tmp-{DEAD_PID - 1}").mkdir()
    (foreign / "notes.txt").write_text("not an export's")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference export ran (chaos.job_env): bit-equal vectors need the same kernels
    try:
        export_items(ref.run, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert not dead.exists() and not dead_old.exists() and live.exists() and foreign.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["emb", live.name, foreign.name])
    assert chaos.check_export(ref, out) == []


def test_model_copy_removes_what_killed_copies_left(ref, tmp_path):
    from twotower.jobs.serving import copy_model
    from twotower.model.checkpoint import load_model

    _, _, version = load_model(ref.run)
    models = tmp_path / "models"
    (models / f".{version}.tmp-{DEAD_PID}" / "checkpoints").mkdir(parents=True)  # a killed copy
    copy_model(ref.run, models / version, version)
    assert sorted(p.name for p in models.iterdir()) == [version]
    assert load_model(models / version)[2] == version


# Loaded at start-up by the `index build` below (sitecustomize): SIGKILL the build when it is about to write
# history.json, i.e. after the new version directory is complete and before anything names it.
KILL_BEFORE_PUBLISHING = """
import os, pathlib, signal

_write_text = pathlib.Path.write_text


def _die_before_history(self, *args, **kwargs):
    if self.name.startswith(".history.json.tmp"):
        os.kill(os.getpid(), signal.SIGKILL)
    return _write_text(self, *args, **kwargs)


pathlib.Path.write_text = _die_before_history
"""


def test_index_build_killed_before_publishing_leaves_no_unpublished_version(ref, tmp_path):
    """A build killed between writing `versions/<v>` and publishing it left a complete version no history
    names, for good (found with the kill below); the next build removes it when its builder is gone, and
    leaves versions of live builds and versions without a recorded builder alone."""
    import json
    import shutil
    import signal
    import subprocess

    from twotower.index.base import IndexConfig
    from twotower.index.publish import build_and_publish, history

    root = tmp_path / "index"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_BEFORE_PUBLISHING)
    env = {**chaos.job_env(), "PYTHONPATH": os.pathsep.join([str(hook), chaos.job_env()["PYTHONPATH"]])}
    argv = ["index", "build", "--emb", str(ref.emb), "--out", str(root), "--backend", "exact"]
    proc = subprocess.run(chaos.twotower_cmd(*argv), env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    [orphan] = [p for p in (root / "versions").iterdir()]
    assert history(root) == [] and (orphan / "manifest.json").is_file()
    # a version of a live build, and one without a recorded builder: not ours to remove
    live, unknown = root / "versions" / "live-build", root / "versions" / "hand-made"
    for d, pid in ((live, os.getppid()), (unknown, None)):
        shutil.copytree(orphan, d)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest.pop("builder_pid", None)
        (d / "manifest.json").write_text(json.dumps({**manifest, **({"builder_pid": pid} if pid else {})}))
    new = build_and_publish(ref.emb, root, IndexConfig(backend="exact"))["version"]
    assert sorted(p.name for p in (root / "versions").iterdir()) == sorted([new, live.name, unknown.name])
    assert history(root) == [new] and chaos.leftovers(root) == []
