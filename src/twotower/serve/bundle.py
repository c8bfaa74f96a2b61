"""One served version, loaded together: the model, its online head as served, the index and the item tables.

The artifact root the service serves from (assembled by :func:`twotower.jobs.serving.build_artifacts`,
``twotower serve-prepare``)::

    models/<model_version>/checkpoints/best/   model.safetensors + config.json + state.json (no optimizer)
    models/<model_version>/data_path.txt       the prepared dataset (item id strings and hash tables)
    embeddings/<model_version>/                the candidate tower over the corpus (``twotower export``); an
                                               unsplit model's no-history vector comes from its users_sample
    index/                                     index root: versions/<v>/, CURRENT, history.json
    states.db                                  SQLite feature store (default; Redis via TWOTOWER_STORE_URL)
    data/                                      optional: a dataset that overrides data_path.txt

One pointer decides what is served: ``index/CURRENT``. Its manifest names the model version, whose weights
are ``models/<model_version>``, and the feature store is read under that same version. Publishing a new model
is therefore: ``build_artifacts`` (copy the model, export, refresh states, build and publish an index), then
``POST /admin/reload``. Only safetensors, JSON, FAISS and ``.npy`` (``allow_pickle=False``) files are ever
read. Loading needs the model's config only (:mod:`twotower.model.checkpoint`), never the training code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import SequenceData
from ..errors import ArtifactError, TwotowerError
from ..features import Featurizer
from ..index.adaptive import AdaptiveIndex, open_index
from ..index.publish import current_version, load_current, published_versions
from ..index.vector_index import VectorIndex
from ..model import ModelConfig, TwoTower
from ..model.checkpoint import load_model, served_dataset
from .head import OnlineEncoder
from .items import FeatureIndex, ItemTable, item_feature_columns
from .rerank import ServedRanker, load_served_ranker
from .unsplit import UnsplitEncoder, average_user

log = logging.getLogger(__name__)


@dataclass
class Bundle:
    """Everything one served version needs, loaded together and swapped as one reference."""

    model: TwoTower
    model_config: ModelConfig
    model_version: str
    index: VectorIndex | AdaptiveIndex  # adaptive: a prefix index re-scored at full width (same search API)
    index_version: str
    items: ItemTable
    actions: dict[str, int]  # action name -> bit
    surfaces: dict[str, int]  # surface name -> embedding index (0 = none/unknown)
    encoder: OnlineEncoder | UnsplitEncoder  # the online head as served (traced or eager), or the unsplit rule
    data: SequenceData | None = None  # the served dataset (memory-mapped): user histories (ranker, GET /demo)
    ranker: ServedRanker | None = None  # ROOT/rankers/CURRENT, checked against the model (see .rerank)

    @property
    def state_shape(self) -> tuple[int, int]:
        """(T, D) of one user's cached state (``ModelConfig.cached_state_shape``): the hybrid's state tokens x
        dim, or the unsplit tower's user vector (T = 1)."""
        return self.model_config.cached_state_shape

    @property
    def context_len(self) -> int:
        """At most this many sent events reach the user vector: the head's ``context_len`` (hybrid), or the
        encoder's ``max_len`` (unsplit: they are the whole history of a user without a cached vector)."""
        cfg = self.model_config
        return cfg.context_len if cfg.online_head else cfg.max_len


ID_CHUNK = 16_384


def item_id_table(data: SequenceData) -> tuple[np.ndarray, dict[str, int]]:
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


def _with_additions(
    version: str, added: dict[str, np.ndarray], ids: np.ndarray, lookup: dict[str, int], hashed: tuple
) -> tuple[np.ndarray, dict[str, int], tuple]:
    """The dataset's item table grown by the index's catalogue additions (dense ids N, N+1, ...)."""
    new = added["added_ids"].astype(str).tolist()
    widths = [a.shape[1] for a in hashed]
    got = [added[k].shape[1] for k in ("added_item", "added_author", "added_feat")]
    if got != widths or any(i in lookup for i in new):
        raise ArtifactError(
            f"index {version}'s added items do not fit the dataset (widths {got} vs {widths}, or ids already in it); "
            "upsert them again from the current model (`twotower index upsert`)"
        )
    lookup = {**lookup, **{i: len(ids) + r for r, i in enumerate(new)}}
    grown = np.concatenate([ids, np.array(new, dtype=object)])
    parts = (added["added_item"], added["added_author"], added["added_feat"])
    return grown, lookup, tuple(np.concatenate([a, b.astype(a.dtype)]) for a, b in zip(hashed, parts))


def load_bundle(
    root: str | Path,
    ef_search: int | None = None,
    trace_head: bool = True,
    previous: Bundle | None = None,
    version: str | None = None,
) -> Bundle:
    """Load the version ``ROOT/index/CURRENT`` names (or the published index ``version``), with its model and
    item tables; checks they agree.

    ``trace_head``: serve the online head as a traced graph (checked against eager, see :mod:`.head`).
    ``previous``: the bundle this one replaces (a reload); its head graph is reused when it fits, instead of
    tracing again (each trace keeps ~3 MiB for good)."""
    root = Path(root)
    if not (root / "index").is_dir():
        raise ArtifactError(f"{root} has no index/; assemble it with `twotower serve-prepare --run RUN --artifacts`")
    # both verify checksums: a corrupt file is an error here, not at request time
    if version is None:
        index_version, index = current_version(root / "index"), load_current(root / "index")
    else:
        index_version, index = version, open_index(root / "index" / "versions" / version)
    model_dir = root / "models" / index.model_version
    if not (model_dir / "checkpoints").is_dir():
        raise ArtifactError(
            f"index {index_version} was built from model {index.model_version}, but {model_dir} does not exist; "
            "publish indexes with build_artifacts (it copies the model) or copy the run there"
        )
    model, cfg, version = load_model(model_dir)
    if version != index.model_version:
        raise ArtifactError(f"{model_dir} holds model {version}, the index expects {index.model_version}; rebuild")
    if index.dim != cfg.dim:
        raise ArtifactError(f"index dim {index.dim} != model dim {cfg.dim}; rebuild the index")
    data = SequenceData.load(served_dataset(root, model_dir), mmap=True)
    feat = Featurizer(data, cfg)
    ids, lookup = item_id_table(data)
    hashed = (feat.item_hash, feat.item_author, feat.item_feat)
    text = feat.item_text
    if index.catalogue:  # items upserted after training (`twotower index upsert`)
        ids, lookup, hashed = _with_additions(index_version, index.catalogue, ids, lookup, hashed)
        if text is not None:
            extra = index.catalogue.get("added_text")
            if extra is None or extra.shape[1] != text.shape[1]:
                raise ArtifactError(f"index {index_version}'s added items lack the text vectors the model reads")
            text = np.concatenate([text, extra.astype(text.dtype)])
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
        hash=np.ascontiguousarray(hashed[0]),
        author=np.ascontiguousarray(hashed[1]),
        feat=np.ascontiguousarray(hashed[2]),
        num_hashes=cfg.num_hashes,
        item_buckets=cfg.item_buckets,
        features=FeatureIndex.build(feat_hash, item_feature_columns(data.manifest, feat_hash)),
        text=text,
    )
    actions = {name: i for i, name in enumerate(data.manifest.get("actions", [])[: max(cfg.num_actions, 0)])}
    surfaces = {name: i + 1 for i, name in enumerate(data.manifest.get("surfaces", [])) if i < cfg.num_surfaces}
    model.requires_grad_(False)
    if cfg.online_head:
        like = previous.encoder if previous is not None and isinstance(previous.encoder, OnlineEncoder) else None
        encoder: OnlineEncoder | UnsplitEncoder = OnlineEncoder(model, table.feat.shape[1], trace_head, like)
    else:
        encoder = UnsplitEncoder(model, average_user(root / "embeddings" / version, cfg.dim, cfg.similarity))
    ranker = load_served_ranker(root, version, cfg)
    return Bundle(model, cfg, version, index, index_version, table, actions, surfaces, encoder, data, ranker)


@dataclass
class IndexFallback:
    """The service started on an older published version because CURRENT's does not load."""

    wanted: str  # what CURRENT names ("" when CURRENT itself is missing or unreadable)
    serving: str  # the newest published version that loads
    error: str  # why ``wanted`` did not load


def load_serving_bundle(
    root: str | Path, ef_search: int | None = None, trace_head: bool = True
) -> tuple[Bundle, IndexFallback | None]:
    """The bundle to start serving: CURRENT's version, else the newest published version that loads (and the
    :class:`IndexFallback` that says so). A service (re)started while CURRENT names a corrupt version would
    otherwise not start at all, though an older, good version is on disk; a running service in the same
    situation refuses the reload and keeps serving (409). Raises :class:`ArtifactError` naming the fix when no
    published version loads."""
    root = Path(root)
    try:
        return load_bundle(root, ef_search, trace_head), None
    except Exception as exc:
        if not (root / "index").is_dir():
            raise
        try:
            wanted = current_version(root / "index")
        except TwotowerError:
            wanted = ""
        error = f"{type(exc).__name__}: {exc}"
        for v in published_versions(root / "index"):
            if v == wanted:
                continue
            try:
                bundle = load_bundle(root, ef_search, trace_head, version=v)
            except Exception as other:  # try the next older one
                log.warning("published index %s does not load either: %s", v, other)
                continue
            return bundle, IndexFallback(wanted, v, error)
        raise ArtifactError(
            f"cannot serve: the published index {wanted or '(CURRENT unreadable)'} does not load ({error}), and no "
            f"other published version under {root / 'index'} does; point CURRENT at a good version with "
            f"`twotower index rollback --root {root / 'index'} --to VERSION`, or rebuild with `twotower "
            "serve-prepare` (or `twotower index build`)"
        ) from exc
