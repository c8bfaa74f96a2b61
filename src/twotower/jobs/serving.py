"""The serving-artifact job (``twotower serve-prepare``): assemble, or add a model version to, the artifact root
the online service serves from.

Steps, in an order that keeps the root servable at every moment: copy the run's checkpoint (weights and
configs, no optimizer) to ``models/<v>``, export the item embeddings, write the users' states into the store,
then build and publish the index last, so that ``index/CURRENT`` only ever names a version whose model copy
and states exist. The root's layout is described in :mod:`twotower.serve.bundle` (the reading side).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import ArtifactError
from ..fsutil import remove_leftovers, sibling_names, swap_dir, write_text_atomic
from ..index import IndexConfig
from ..index.publish import build_and_publish
from ..model.checkpoint import load_model, load_state_version, resolve
from .export import export_items
from .refresh import refresh_states

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json", "state.json")


def copy_model(run: Path, dest: Path, version: str) -> None:
    """Copy the run's best (else last) checkpoint without optimizer state, atomically. It is resolved the way
    ``load_model`` resolves it (a kill mid-save leaves ``.best.old``), and must be ``version``."""
    src = resolve(run / "checkpoints" / "best") or resolve(run / "checkpoints" / "last")
    if src is None:
        raise ArtifactError(f"{run} has no checkpoint (checkpoints/best or last); train it first")
    copied = load_state_version(src)
    if copied != version:
        raise ArtifactError(f"{src} holds model version {copied}, not {version}: the run changed while it was read")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a killed copy's temporaries (the pid in their names is gone): removed, never a running job's
    remove_leftovers(dest.parent, ("checkpoints", "data_path.txt"), dest.name, what="model copy", job="serve-prepare")
    tmp, old = sibling_names(dest)
    try:
        (tmp / "checkpoints" / "best").mkdir(parents=True)
        for name in CHECKPOINT_FILES:
            shutil.copy2(src / name, tmp / "checkpoints" / "best" / name)
        data_path = (run / "data_path.txt").read_text().strip()
        (tmp / "data_path.txt").write_text(data_path + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        raise
    swap_dir(tmp, dest, old)


def build_artifacts(
    run: str | Path,
    root: str | Path,
    backend: str = "hnsw",
    store_url: str | None = None,
    index_config: IndexConfig | None = None,
    recall_floor: float = 0.95,
    as_of: int | None = None,
    progress: bool = False,
) -> dict:
    """Assemble (or add a model version to) an artifact root from a trained run (hybrid or unsplit).

    Steps: copy the checkpoint to ``models/<v>``, export item embeddings, write the users' states into the
    store (``store_url``, default ``sqlite:///ROOT/states.db``) as of ``as_of`` (default: after the last
    event), build and publish the index last, so that ``CURRENT`` names a version whose states exist.
    Returns the root, model and index versions, the index's measured recall, the store URL and the number of
    states written.
    """
    run, root = Path(run), Path(root)
    if not (run / "data_path.txt").is_file():
        raise ArtifactError(f"{run} does not record its dataset (data_path.txt); is it a `twotower train` run?")
    _, _, version = load_model(run)
    root.mkdir(parents=True, exist_ok=True)
    copy_model(run, root / "models" / version, version)
    emb_dir = root / "embeddings" / version
    export_items(root / "models" / version, emb_dir, progress=progress)
    url = store_url or f"sqlite:///{(root / 'states.db').resolve()}"
    report = refresh_states(root / "models" / version, url, as_of=as_of, progress=progress)
    config = index_config or IndexConfig(backend=backend)
    published = build_and_publish(emb_dir, root / "index", config, recall_floor=recall_floor, progress=progress)
    log.info(
        "artifact root %s: model %s, index %s, %d user states written (fresh ones kept)",
        root,
        version,
        published["version"],
        report.encoded,
    )
    return {
        "root": str(root),
        "model_version": version,
        "index_version": published["version"],
        "recall": published["recall"],
        "store_url": url,
        "states_written": report.encoded,
    }


def publish_ranker(ranker_dir: str | Path, root: str | Path, allow_mismatch: bool = False) -> dict:
    """Copy a trained ranker into ``ROOT/rankers/<ranker version>`` and point ``ROOT/rankers/CURRENT`` at it
    (``POST /admin/reload`` then hot-swaps it). The ranker must have been trained against the model the root
    serves (``index/CURRENT``'s), unless ``allow_mismatch`` (recorded in ``publish.json``, which the service
    honours). Returns the ranker and model versions and where it went."""
    import json

    from ..index.base import read_manifest
    from ..index.publish import current_path
    from ..model.ranker import load_ranker

    ranker_dir, root = Path(ranker_dir), Path(root)
    if not (root / "index").is_dir():
        raise ArtifactError(f"{root} is not an artifact root; run `twotower serve-prepare` first")
    serving = read_manifest(current_path(root / "index"), verify=False)["model_version"]
    _, config, version = load_ranker(ranker_dir, expect_retriever=serving, allow_mismatch=allow_mismatch)
    dest = root / "rankers" / version
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not (dest / "checkpoint").is_dir():
        tmp, old = sibling_names(dest)
        try:
            shutil.copytree(ranker_dir / "checkpoint", tmp / "checkpoint")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        swap_dir(tmp, dest, old)
    meta = {"allow_mismatch": bool(allow_mismatch), "retriever_version": config.get("retriever_version"),
            "published_for_model": serving, "source": str(ranker_dir.resolve())}  # fmt: skip
    (dest / "publish.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_text_atomic(root / "rankers" / "CURRENT", version + "\n")  # a reload reads the old or the new name
    log.info("ranker %s published to %s (trained for %s, serving model %s)", version, dest,
             config.get("retriever_version"), serving)  # fmt: skip
    return {"ranker_version": version, "model_version": serving, "path": str(dest),
            "retriever_version": config.get("retriever_version")}  # fmt: skip
