"""The artifact root the online service serves from: how to assemble it from a run, and how to load it.

Layout of ``ROOT/``::

    models/<model_version>/checkpoints/best/   model.safetensors + config.json + state.json (no optimizer)
    models/<model_version>/data_path.txt       the prepared dataset (item id strings and hash tables)
    embeddings/<model_version>/                the candidate tower over the corpus (``twotower export``)
    index/                                     index root: versions/<v>/, CURRENT, history.json
    states.db                                  SQLite feature store (default; Redis via TWOTOWER_STORE_URL)
    data/                                      optional: a dataset that overrides data_path.txt

One pointer decides what is served: ``index/CURRENT``. Its manifest names the model version, whose weights
are ``models/<model_version>``, and the feature store is read under that same version. Publishing a new model
is therefore: :func:`build_artifacts` (copy the model, export, refresh states, build and publish an index),
then ``POST /admin/reload``. Only safetensors, JSON, FAISS and ``.npy`` (``allow_pickle=False``) files are
ever read.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import SequenceData
from ..errors import ArtifactError
from ..features import Featurizer
from ..fsutil import swap_dir
from ..hashing import multi_hash, to_buckets, token_hash
from ..index import IndexConfig
from ..index.publish import build_and_publish, current_version, load_current
from ..index.vector_index import VectorIndex
from ..layout import SALT_FEATURE, SALT_ITEM, feature_token
from ..model import TwoTower
from ..model import checkpoint as ckpt
from ..train.config import RunConfig
from ..train.load import load_run as load_model
from .head import OnlineEncoder

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json", "state.json")


def _refuse_unsplit(cfg: RunConfig, where: Path) -> None:
    if not cfg.model.online_head:
        raise ArtifactError(
            f"{where} is an unsplit model (model.online_head = false); the online service needs a hybrid "
            "model: train with online_head = true (e.g. configs/ml1m_hybrid.toml)"
        )


def _copy_model(run: Path, dest: Path, version: str) -> None:
    """Copy the run's best (else last) checkpoint without optimizer state, atomically. It is resolved the way
    ``load_model`` resolves it (a kill mid-save leaves ``.best.old``), and must be ``version``."""
    src = ckpt.resolve(run / "checkpoints" / "best") or ckpt.resolve(run / "checkpoints" / "last")
    if src is None:
        raise ArtifactError(f"{run} has no checkpoint (checkpoints/best or last); train it first")
    copied = ckpt.load_state_version(src)
    if copied != version:
        raise ArtifactError(f"{src} holds model version {copied}, not {version}: the run changed while it was read")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoints" / "best").mkdir(parents=True)
    for name in CHECKPOINT_FILES:
        shutil.copy2(src / name, tmp / "checkpoints" / "best" / name)
    data_path = (run / "data_path.txt").read_text().strip()
    (tmp / "data_path.txt").write_text(data_path + "\n")
    swap_dir(tmp, dest, dest.with_name(f".{dest.name}.old-{os.getpid()}"))


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
    """Assemble (or add a model version to) an artifact root from a trained hybrid run.

    Steps: copy the checkpoint to ``models/<v>``, export item embeddings, write the users' states into the
    store (``store_url``, default ``sqlite:///ROOT/states.db``) as of ``as_of`` (default: after the last
    event), build and publish the index last, so that ``CURRENT`` names a version whose states exist.
    """
    from ..export import export_items
    from ..refresh import refresh_states

    run, root = Path(run), Path(root)
    if not (run / "data_path.txt").is_file():
        raise ArtifactError(f"{run} does not record its dataset (data_path.txt); is it a `twotower train` run?")
    _, cfg, version = load_model(run)
    _refuse_unsplit(cfg, run)
    root.mkdir(parents=True, exist_ok=True)
    _copy_model(run, root / "models" / version, version)
    emb_dir = root / "embeddings" / version
    export_items(root / "models" / version, emb_dir, progress=progress)
    url = store_url or f"sqlite:///{(root / 'states.db').resolve()}"
    report = refresh_states(root / "models" / version, url, as_of=as_of, progress=progress)
    config = index_config or IndexConfig(backend=backend)
    published = build_and_publish(emb_dir, root / "index", config, recall_floor=recall_floor)
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


# Item-feature columns of the built-in MovieLens-1M reader (twotower.data.movielens writes "genre=Comedy",
# "year=1995", "decade=1990s" tokens directly, so its manifest's item schema lists no columns).
BUILTIN_ITEM_COLUMNS = {"ml-1m": ("genre", "year", "decade")}


def item_feature_columns(manifest: dict, feat_hash: np.ndarray) -> frozenset[str] | None:
    """Names of the item-table columns the dataset's ``column=value`` feature tokens come from, for validating
    filters; None when the manifest does not say (the tokens exist but their column names are unknown).

    Sources: ``manifest["item_feature_columns"]`` when recorded, the built-in readers' columns, the prepare
    config's item schema (``features`` + ``multi_valued``); a dataset without any item feature has none."""
    if isinstance(manifest.get("item_feature_columns"), list):
        return frozenset(map(str, manifest["item_feature_columns"]))
    if manifest.get("dataset") in BUILTIN_ITEM_COLUMNS:
        return frozenset(BUILTIN_ITEM_COLUMNS[manifest["dataset"]])
    schema = (manifest.get("config") or {}).get("items") or {}
    columns = frozenset([*schema.get("features", []), *schema.get("multi_valued", {})])
    if columns or not np.any(feat_hash):
        return columns
    return None


@dataclass
class FeatureIndex:
    """Item-table feature tokens -> items: the (token hash, dense item) pairs of every item, sorted by hash.

    The dataset keeps one 64-bit hash per ``"column=value"`` token (``item_feat_hash``), the same hash
    ``prepare`` computed, so a filter value is found by hashing it and a binary search: no string table.
    ``columns``: the column names tokens come from (see :func:`item_feature_columns`; None = unknown).
    """

    keys: np.ndarray  # uint64 [P] sorted token hashes
    items: np.ndarray  # int64 [P] dense item index of each
    columns: frozenset[str] | None = None

    @classmethod
    def build(cls, feat_hash: np.ndarray, columns: frozenset[str] | None = None) -> FeatureIndex:
        """From ``uint64 [N, F]`` token hashes (0 = padding)."""
        rows, cols = np.nonzero(feat_hash)
        keys = feat_hash[rows, cols]
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], rows[order].astype(np.int64), columns)

    def _ranges(self, column: str, values: list[str]) -> tuple[np.ndarray, np.ndarray]:
        h = token_hash([feature_token(column, v) for v in values], SALT_FEATURE)
        return np.searchsorted(self.keys, h, "left"), np.searchsorted(self.keys, h, "right")

    def _gather(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        parts = [self.items[a:b] for a, b in zip(lo, hi) if b > a]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def items_with(self, column: str, values: list[str]) -> np.ndarray:
        """Dense items whose ``column`` has any of ``values``: sorted unique int64 [m]."""
        return self._gather(*self._ranges(column, values))

    def absent_values(self, column: str, values: list[str]) -> list[str]:
        """The ``values`` no item has in ``column`` (a typo, or a value of another column)."""
        lo, hi = self._ranges(column, values)
        return [v for v, a, b in zip(values, lo, hi) if b == a]

    def matching(self, features: dict[str, list[str]]) -> np.ndarray:
        """Items matching every column (AND) with any of its values (OR): sorted int64 [m]."""
        return self.match(features)[0]

    def match(self, features: dict[str, list[str]]) -> tuple[np.ndarray, dict[str, list[str]]]:
        """:meth:`matching` and :meth:`absent_values` of every column from one hash and search per value:
        (items sorted int64 [m], ``{column: absent values}`` for the columns that have any, in request order)."""
        out: np.ndarray | None = None
        absent: dict[str, list[str]] = {}
        for column, values in features.items():
            lo, hi = self._ranges(column, values)
            missing = [v for v, a, b in zip(values, lo, hi) if b == a]
            if missing:
                absent[column] = missing
            if out is None or len(out):  # once empty, only the absent values are still needed
                got = self._gather(lo, hi)
                out = got if out is None else np.intersect1d(out, got, assume_unique=True)
        return (np.zeros(0, np.int64) if out is None else out), absent


@dataclass
class ItemTable:
    """The corpus as the service sees it: id strings <-> dense index, and the model's hashed item tables.

    ``ids``: object [N]; ``hash``/``author``: int64 [N, H]; ``feat``: int64 [N, F] (bucketed, 0 = padding).
    """

    ids: np.ndarray
    lookup: dict[str, int]
    hash: np.ndarray
    author: np.ndarray
    feat: np.ndarray
    num_hashes: int
    item_buckets: int
    features: FeatureIndex

    def dense(self, item_ids: list[str]) -> np.ndarray:
        """Dense indices of ``item_ids``, -1 where unknown. int64 [n].

        A plain dict: ~0.15 us per id, where ``pd.Index.get_indexer`` costs ~150-370 us per call whatever the
        number of ids (measured on 1M ids, pandas 3) and is called twice on every request path."""
        get = self.lookup.get
        return np.fromiter((get(i, -1) for i in item_ids), np.int64, len(item_ids))

    def hashed(self, item_ids: list[str], dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(item, author, feat) bucket ids for ``item_ids`` [n]: table rows for known items; unknown items are
        hashed on the fly exactly as ``prepare`` hashes them (so they still embed) with no author/features."""
        n = len(item_ids)
        known = dense >= 0
        row = np.where(known, dense, 0)
        item = np.where(known[:, None], self.hash[row], 0)
        author = np.where(known[:, None], self.author[row], 0)
        feat = np.where(known[:, None], self.feat[row], 0)
        if n and not known.all():
            new = [item_ids[i] for i in np.flatnonzero(~known)]
            item[~known] = to_buckets(multi_hash(new, self.num_hashes, SALT_ITEM), self.item_buckets)
        return item, author, feat


@dataclass
class Bundle:
    """Everything one served version needs, loaded together and swapped as one reference."""

    model: TwoTower
    config: RunConfig
    model_version: str
    index: VectorIndex
    index_version: str
    items: ItemTable
    actions: dict[str, int]  # action name -> bit
    surfaces: dict[str, int]  # surface name -> embedding index (0 = none/unknown)
    encoder: OnlineEncoder  # the online head as served (traced graph, or eager)

    @property
    def state_shape(self) -> tuple[int, int]:
        return self.config.model.state_tokens, self.config.model.dim


def _dataset_dir(root: Path, model_dir: Path) -> Path:
    if (root / "data" / "manifest.json").is_file():
        return root / "data"
    rec = model_dir / "data_path.txt"
    if not rec.is_file():
        raise ArtifactError(f"{model_dir} has no data_path.txt and {root}/data is absent; rebuild the artifact root")
    return Path(rec.read_text().strip())


ID_CHUNK = 16_384


def _item_id_table(data: SequenceData) -> tuple[np.ndarray, dict[str, int]]:
    """Item id strings, object [N], and id -> dense index (~80 MB per 1M ids), built in 16k-id slices.

    A reload runs this in a thread beside live requests. Converting 1M ids in one call holds the GIL for
    ~100 ms per step (Arrow -> Python strings, then the dict), and every request in flight waits; per slice,
    each hold is a few ms."""
    col = data.item_id_column()
    ids = np.empty(len(col), dtype=object)
    lookup: dict[str, int] = {}
    for lo in range(0, len(col), ID_CHUNK):
        part = col.slice(lo, ID_CHUNK).to_numpy(zero_copy_only=False)
        ids[lo : lo + len(part)] = part
        lookup.update(zip(part.tolist(), range(lo, lo + len(part))))
    return ids, lookup


def load_bundle(root: str | Path, ef_search: int | None = None, trace_head: bool = True) -> Bundle:
    """Load the version ``ROOT/index/CURRENT`` names, with its model and item tables; checks they agree.

    ``trace_head``: serve the online head as a traced graph (checked against eager, see :mod:`.head`)."""
    root = Path(root)
    if not (root / "index").is_dir():
        raise ArtifactError(f"{root} has no index/; assemble it with `twotower serve-prepare --run RUN --artifacts`")
    index_version = current_version(root / "index")
    index = load_current(root / "index")  # verifies checksums: a corrupt file is an error here, not at request time
    model_dir = root / "models" / index.model_version
    if not (model_dir / "checkpoints").is_dir():
        raise ArtifactError(
            f"index {index_version} was built from model {index.model_version}, but {model_dir} does not exist; "
            "publish indexes with build_artifacts (it copies the model) or copy the run there"
        )
    model, cfg, version = load_model(model_dir)
    _refuse_unsplit(cfg, model_dir)
    if version != index.model_version:
        raise ArtifactError(f"{model_dir} holds model {version}, the index expects {index.model_version}; rebuild")
    if index.dim != cfg.model.dim:
        raise ArtifactError(f"index dim {index.dim} != model dim {cfg.model.dim}; rebuild the index")
    data = SequenceData.load(_dataset_dir(root, model_dir), mmap=True)
    feat = Featurizer(data, cfg.model)
    ids, lookup = _item_id_table(data)
    if len(index.ids) and (index.ids.min() < 0 or index.ids.max() >= len(ids)):
        raise ArtifactError(f"index {index_version} holds item ids outside the dataset's {len(ids)} items; rebuild")
    if len(lookup) != len(ids):
        raise ArtifactError("the dataset's item ids are not unique; re-run `twotower prepare`")
    if ef_search is not None and index.config.backend == "hnsw":
        index.set_search_params(hnsw_ef_search=ef_search)
    feat_hash = np.asarray(data.item_feat_hash)
    table = ItemTable(
        ids=ids,
        lookup=lookup,
        hash=np.ascontiguousarray(feat.item_hash),
        author=np.ascontiguousarray(feat.item_author),
        feat=np.ascontiguousarray(feat.item_feat),
        num_hashes=cfg.model.num_hashes,
        item_buckets=cfg.model.item_buckets,
        features=FeatureIndex.build(feat_hash, item_feature_columns(data.manifest, feat_hash)),
    )
    actions = {name: i for i, name in enumerate(data.manifest.get("actions", [])[: max(cfg.model.num_actions, 0)])}
    surfaces = {name: i + 1 for i, name in enumerate(data.manifest.get("surfaces", [])) if i < cfg.model.num_surfaces}
    model.requires_grad_(False)
    encoder = OnlineEncoder(model, table.feat.shape[1], trace=trace_head)
    return Bundle(model, cfg, version, index, index_version, table, actions, surfaces, encoder)
