"""The job half of the chaos suite (run by ``benchmarks/chaos.py``; its fast part is ``tests/test_chaos.py``).

``prepare``, ``train``, ``export``, ``refresh-states`` and ``index build`` run as real subprocesses
(``python -m twotower ...``) on a tiny synthetic log and are SIGKILLed after a random delay within the job's
measured uninterrupted duration; then the same command runs again (``train``: ``--resume`` when a checkpoint
exists, else ``--overwrite``). Every other trial starts with the reference output already in place, so the
kill can land while an earlier output is being replaced. After the re-run:

* no leftover: no name holding ``.tmp``, ``.old`` or ``tmp-`` anywhere in the trial directory, and no complete
  index version that no history names;
* no corrupt artifact: the output loads (``SequenceData``, ``load_model``, ``load_embeddings``, the store with
  every user's state, ``load_current``);
* the result equals the uninterrupted reference run's: prepared arrays byte for byte, final ``last`` and
  ``best`` weights and ``metrics.csv`` (time and throughput aside) of a resumed run, exported vectors of the
  same checkpoint, every stored state, the published index's ids and vectors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("chaos")

# A tiny hybrid model (the service needs online_head); one torch thread, so two jobs never fight for the
# cores and a resumed run can be compared bit for bit; a checkpoint every half second, so most kills after
# the start of training have one to resume from.
RUN_TOML = """\
[model]
dim = 16
num_heads = 2
num_layers = 1
max_len = 20
item_buckets = 1024
author_buckets = 64
user_buckets = 1024
feature_buckets = 64
dropout = 0.1
online_head = true
state_tokens = 1
context_len = 4

[train]
epochs = {epochs}
batch_tokens = 512
warmup_steps = 5
num_uniform = 32
eval_users = 100
log_every = 5
max_lag = 8
threads = 1
checkpoint_every_s = 0.5
patience = 100  # no early stop: the run is as long as its epochs
seed = {seed}
"""
JOBS = ("prepare", "train", "export", "refresh-states", "index build")
REFRESH_BATCH = "50"  # users per store transaction: several batches, so a kill can land between them


def twotower_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "twotower", *args]


def job_env() -> dict[str, str]:
    """The environment of every job subprocess: this checkout's sources first, one BLAS/OpenMP thread."""
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{path}" if path else src, "OMP_NUM_THREADS": "1"}


def run_job(args: list[str], cwd: Path, log_name: str = "job.log") -> float:
    """Run ``twotower ARGS`` to completion (RuntimeError with its log tail otherwise); returns its seconds."""
    t0 = time.perf_counter()
    with open(cwd / log_name, "ab") as f:
        rc = subprocess.run(twotower_cmd(*args), cwd=cwd, env=job_env(), stdout=f, stderr=f).returncode
    if rc != 0:
        tail = (cwd / log_name).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`twotower {' '.join(args)}` exited with {rc}:\n{tail}")
    return time.perf_counter() - t0


def kill_after(
    args: list[str], cwd: Path, delay: float, wait_for: Path | None = None, log_name: str = "job.log"
) -> tuple[int | None, float]:
    """Start ``twotower ARGS`` and SIGKILL it ``delay`` seconds later (after ``wait_for`` exists, when given).
    Returns (None when it was killed, else the exit status it finished with first; its seconds)."""
    t0 = time.perf_counter()
    with open(cwd / log_name, "ab") as f:
        proc = subprocess.Popen(twotower_cmd(*args), cwd=cwd, env=job_env(), stdout=f, stderr=f)
        while wait_for is not None and not wait_for.exists() and proc.poll() is None:
            time.sleep(0.01)
        try:
            proc.wait(timeout=delay)
            return proc.returncode, time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None, time.perf_counter() - t0


def leftovers(root: Path) -> list[str]:
    """Names under ``root`` that a writer uses only in flight (``.tmp``, ``.old``, ``tmp-``)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if ".tmp" in name or ".old" in name or "tmp-" in name:
                found.append(str(Path(dirpath, name).relative_to(root)))
    return sorted(found)


@dataclass
class Reference:
    """Uninterrupted runs of every job, the inputs of the trials and the results they must equal."""

    work: Path
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.work / "log.parquet"

    @property
    def config(self) -> Path:
        return self.work / "run.toml"

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def run(self) -> Path:
        return self.work / "run"

    @property
    def emb(self) -> Path:
        return self.work / "emb"

    @property
    def index(self) -> Path:
        return self.work / "index"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.work / 'states.db'}"

    def command(self, job: str, out: Path) -> list[str]:
        """The job's arguments with its output at ``out``."""
        if job == "prepare":
            return ["prepare", "--log", str(self.log), "--action-cols", "click,like", "--surface-col", "surface",
                    "--out", str(out)]  # fmt: skip
        if job == "train":
            return ["train", "--data", str(self.data), "--config", str(self.config), "--out", str(out), "--no-progress"]
        if job == "export":
            return ["export", "--run", str(self.run), "--out", str(out), "--no-progress"]
        if job == "refresh-states":
            return ["refresh-states", "--run", str(self.run), "--store", f"sqlite:///{out}", "--batch", REFRESH_BATCH,
                    "--no-progress"]  # fmt: skip
        if job == "index build":
            return ["index", "build", "--emb", str(self.emb), "--backend", "hnsw", "--out", str(out)]
        raise ValueError(job)


OUTPUT = {"prepare": "data", "train": "run", "export": "emb", "refresh-states": "states.db", "index build": "index"}


def build_reference(work: Path, seed: int = 0, jobs=JOBS, epochs: int = 24) -> Reference:
    """Synthesize a tiny log, then run each of ``jobs`` once, uninterrupted, timing each. ``epochs``: of the
    run (24: about half of the ``train`` command's time is training, the rest start-up and data loading)."""
    ref = Reference(work)
    work.mkdir(parents=True, exist_ok=True)
    ref.config.write_text(RUN_TOML.format(seed=seed, epochs=epochs))
    run_job(["synth", "--users", "300", "--items", "500", "--events", "6000", "--seed", str(seed),
             "--out", str(ref.log)], work)  # fmt: skip
    for job in jobs:
        out = work / OUTPUT[job]
        ref.durations[job] = round(run_job(ref.command(job, out), work), 2)
        log.info("reference %s: %.1f s", job, ref.durations[job])
    return ref


# --- checks of a trial's output against the reference ------------------------------------------------------
def _same_npy(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def check_prepare(ref: Reference, out: Path) -> list[str]:
    from twotower.data import SequenceData

    SequenceData.load(out)
    return [f"{p.name} differs" for p in sorted(ref.data.glob("*.npy")) if not _same_npy(p, out / p.name)]


def _metric_rows(run: Path) -> list[list[str]]:
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    # without the wall-clock time column and the throughput rows: the run's content, not its speed
    return [r[1:] for r in rows if not r[4].endswith("_per_s")]


def check_train(ref: Reference, out: Path) -> list[str]:
    from safetensors.numpy import load_file

    from twotower.model.checkpoint import load_model

    load_model(out)
    bad = []
    for which in ("last", "best"):
        a = load_file(ref.run / "checkpoints" / which / "model.safetensors")
        b = load_file(out / "checkpoints" / which / "model.safetensors")
        if a.keys() != b.keys() or any(not np.array_equal(a[k], b[k]) for k in a):
            bad.append(f"checkpoints/{which} weights differ from the uninterrupted run's")
    if _metric_rows(ref.run) != _metric_rows(out):
        bad.append("metrics.csv differs from the uninterrupted run's (time and throughput aside)")
    return bad


def check_export(ref: Reference, out: Path) -> list[str]:
    from twotower.index.embeddings import load_embeddings

    ids_a, emb_a, _ = load_embeddings(ref.emb)
    ids_b, emb_b, _ = load_embeddings(out)
    bad = [] if np.array_equal(ids_a, ids_b) and np.array_equal(emb_a, emb_b) else ["exported vectors differ"]
    if not _same_npy(ref.emb / "users_sample.npy", out / "users_sample.npy"):
        bad.append("users_sample.npy differs")
    return bad


def read_states(url: str, run: Path) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """(versions, found bool [U], states float32 [U, T, D]) of every user of the run's dataset."""
    from twotower.data import SequenceData
    from twotower.model.checkpoint import load_model
    from twotower.store import open_store

    _, cfg, version = load_model(run)
    users = list(SequenceData.load(Path((run / "data_path.txt").read_text().strip())).user_ids().astype(str))
    store = open_store(url, create=False)
    try:
        got = store.get_many(users, version, (cfg.state_tokens, cfg.dim))
        return store.versions(), got.found, got.states
    finally:
        store.close()


def check_refresh(ref: Reference, out: Path) -> list[str]:
    va, found_a, sa = read_states(ref.store_url, ref.run)
    vb, found_b, sb = read_states(f"sqlite:///{out}", ref.run)
    bad = [] if va == vb else [f"store holds {vb}, the uninterrupted run's {va}"]
    if not found_b.all():
        bad.append(f"{int((~found_b).sum())} users without a state")
    elif not np.array_equal(sa, sb):
        bad.append(f"states differ (max abs diff {float(np.abs(sa - sb).max()):.2e})")
    return bad


def check_index(ref: Reference, out: Path) -> list[str]:
    from twotower.index.publish import current_version, history, load_current

    a, b = load_current(ref.index), load_current(out)
    bad = [] if np.array_equal(a.ids, b.ids) and np.array_equal(a.vectors, b.vectors) else ["ids/vectors differ"]
    hist = history(out)
    if current_version(out) not in hist or any(not (out / "versions" / v).is_dir() for v in hist):
        bad.append(f"CURRENT / history.json disagree with versions/: {hist}")
    return bad


CHECKS = {"prepare": check_prepare, "train": check_train, "export": check_export,
          "refresh-states": check_refresh, "index build": check_index}  # fmt: skip


@dataclass
class Trial:
    job: str
    point_s: float  # the kill's delay after the start
    killed: bool  # False: the job finished before the point
    seconds: float  # how long it ran (to the kill or to its end)
    prefilled: bool  # the reference output was in place (the kill may land while it is replaced)
    rerun: str  # what ran after the kill
    leftovers: list[str]
    failures: list[str]
    note: str = ""


def unpublished_versions(index_root: Path) -> list[str]:
    """Complete version directories no history names (a build killed between writing and publishing)."""
    from twotower.index.publish import history

    names = set(history(index_root))
    vdir = index_root / "versions"
    return sorted(p.name for p in vdir.iterdir() if not p.name.startswith(".") and p.name not in names)


def kill_trial(ref: Reference, job: str, trial: Path, point_s: float, prefill: bool, after: str | None = None) -> Trial:
    """One kill of ``job`` at ``point_s`` seconds (after the output's path ``after`` exists, when given), the
    re-run, and the checks."""
    trial.mkdir(parents=True)
    out = trial / OUTPUT[job]
    src = ref.work / OUTPUT[job]
    if prefill:
        (shutil.copy2 if src.is_file() else shutil.copytree)(src, out)
    args = ref.command(job, out)
    rc, seconds = kill_after(args, trial, point_s, wait_for=out / after if after else None)
    rerun, note = "re-run", ""
    if job == "train":
        from twotower.model.checkpoint import resolve

        ckpt = resolve(out / "checkpoints" / "last")
        rerun = "--resume" if ckpt else "--overwrite"
        args = [*args, rerun]
        if ckpt and rc is None:
            note = f"killed after the checkpoint of step {json.loads((ckpt / 'state.json').read_text())['step']}"
    failures = []
    if rc not in (None, 0):
        failures.append(f"the job failed on its own with exit status {rc}")
    try:
        if rc is None:
            run_job(args, trial)
        else:
            rerun = "none (finished first)"
        failures += CHECKS[job](ref, out)
    except Exception as exc:  # a re-run that fails, or an output that does not load: a failure of the trial
        failures.append(f"{type(exc).__name__}: {str(exc)[-500:]}")
    left = [p for p in leftovers(trial) if p != "job.log"]
    if job == "index build" and (out / "versions").is_dir():  # a complete version no history names is one too
        left += [f"unpublished version {v}" for v in unpublished_versions(out)]
    return Trial(job, round(point_s, 3), rc is None, round(seconds, 2), prefill, rerun, left, failures, note)


def job_trials(ref: Reference, work: Path, points: int, seed: int, jobs=JOBS) -> list[Trial]:
    """``points`` kills of each job at seeded random points within its measured duration: the reference run's,
    or a shorter uninterrupted run since (a trial whose job finished before its point). Every other trial
    starts with the reference output in place (not ``train``: a finished run is continued, not replaced)."""
    rng = np.random.default_rng(seed)
    trials = []
    for job in jobs:
        duration = ref.durations[job]
        for i in range(points):
            point = float(rng.uniform(0.0, duration))
            trial_dir = work / f"{job.replace(' ', '-')}-{i:02d}"
            t = kill_trial(ref, job, trial_dir, point, prefill=i % 2 == 1 and job != "train")
            trials.append(t)
            if not t.killed:
                duration = min(duration, t.seconds)
            log.info("%s kill at %.2f s (%s): %s", job, point, t.rerun, t.failures or t.leftovers or "ok")
            if not t.failures and not t.leftovers:
                shutil.rmtree(trial_dir)  # kept for inspection otherwise
    return trials


def summarize_jobs(trials: list[Trial]) -> list[dict]:
    """One table row per job: trials, failed trials, leftover names, and where the kills landed."""
    rows = []
    for job in dict.fromkeys(t.job for t in trials):
        ts = [t for t in trials if t.job == job]
        killed = sum(t.killed for t in ts)
        reruns = ", ".join(f"{k} x{v}" for k, v in Counter(t.rerun for t in ts).items())
        rows.append({"fault": f"SIGKILL {job}", "trials": len(ts), "failures": sum(bool(t.failures) for t in ts),
                     "leftovers": sum(len(t.leftovers) for t in ts), "rss_growth": "",
                     "note": f"{killed} killed, {len(ts) - killed} done before the point; {reruns}"})  # fmt: skip
    return rows
