"""``twotower index upsert``: publish new items into the served index without retraining.

A new item is known by its row in an item table (the same columns ``prepare`` maps: id, author, categorical
features, text). The job runs the served model's candidate tower over those features, its text (the frozen
sentence encoder, when the model reads text) and its semantic ID (coded with the dataset's codebook, when the
model reads semantic IDs; a model trained with another codebook is refused), adds the vectors to a copy of
the current index, measures the copy against exact search on the export's user sample (the recall gate of
``index build``) and publishes it as a new version. The new items travel with that version
(``added_*.npy``, :data:`twotower.index.storage.ADDED_ARRAYS`), so the service knows their id strings from
the next reload on: a request after ``POST /admin/reload`` can retrieve them.

A model trained with ``model.id_dropout`` reads a new item without its id (its id row was never trained, and
the model learnt to place items by content); other models read the item's hashed id as they would any
unseen id. Ids already in the catalogue are refused (re-encode those with ``export`` + ``index build``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..data import tables
from ..data.dataset import SequenceData
from ..data.entities import pad_token_hashes
from ..data.schemas import ItemSchema
from ..data.semantic_ids import CODEBOOK_FILE, Codebook, assign_codes, check_codebook, prefix_hashes
from ..errors import ArtifactError, DataError
from ..features import Featurizer
from ..features.inputs import ItemInputs
from ..hashing import multi_hash, to_buckets
from ..index.adaptive import open_index
from ..index.base import IndexConfig
from ..index.publish import current_version, history, publish_index
from ..index.storage import ADDED_ARRAYS
from ..index.vector_index import VectorIndex
from ..layout import SALT_AUTHOR, SALT_FEATURE, SALT_ITEM
from ..model.checkpoint import load_model, served_dataset

log = logging.getLogger(__name__)


@torch.no_grad()
def upsert_items(root: str | Path, items_path: str | Path, schema: ItemSchema, recall_floor: float = 0.95) -> dict:
    """Encode the items of ``items_path`` and publish them into ``ROOT/index`` as a new version; returns the
    new version, the items added, their dense ids and the measured recall."""
    root = Path(root)
    t0 = time.perf_counter()
    index_root = root / "index"
    base_version = current_version(index_root)
    index = open_index(index_root / "versions" / base_version)
    model_dir = root / "models" / index.model_version
    model, cfg, version = load_model(model_dir)
    if version != index.model_version:
        raise ArtifactError(f"{model_dir} holds model {version}, the index expects {index.model_version}; rebuild")
    data = SequenceData.load(served_dataset(root, model_dir), mmap=True)
    feat = Featurizer(data, cfg)  # refuses a dataset of another codebook or text width than the model's
    table = tables.read_items(items_path, schema)
    new_ids = [str(v) for v in table.column("item_id").to_pylist()]
    _check_new(new_ids, data, index.catalogue)
    inputs = _item_inputs(table, new_ids, data, feat, cfg)
    vectors = model.encode_items(inputs).float().numpy()  # [n, D]
    first = data.num_items + len(index.catalogue.get("added_ids", ()))
    dense = np.arange(first, first + len(new_ids), dtype=np.int64)
    index.upsert(dense, vectors)
    index.catalogue = _grown(index.catalogue, new_ids, inputs)
    queries = _queries(root, version, index)
    full_ids = index.ids[index.alive] if isinstance(index, VectorIndex) else index.inner.ids[index.inner.alive]
    oracle = VectorIndex.build(full_ids, _full_rows(index), IndexConfig(backend="exact"))
    extra = {
        "catalogue": {"first_id": data.num_items, "added": len(index.catalogue["added_ids"])},
        "codebook": cfg.codebook or None,
        "upserted_from": base_version,
        "upsert_seconds": round(time.perf_counter() - t0, 2),
    }
    published = publish_index(index_root, history(index_root), index, oracle, queries, recall_floor, version, extra)
    log.info("upserted %d items into %s -> %s", len(new_ids), base_version, published["version"])
    return {"version": published["version"], "items": new_ids, "ids": dense.tolist(), "recall": published["recall"]}


def upsert_schema(root: str | Path) -> ItemSchema:
    """The item-table mapping the served model's dataset was prepared with (the default of ``index upsert``)."""
    from .. import config as cfgmod

    root = Path(root)
    index = open_index(root / "index" / "versions" / current_version(root / "index"))
    data = SequenceData.load(served_dataset(root, root / "models" / index.model_version), mmap=True)
    items = (data.manifest.get("config") or {}).get("items") or {}
    return cfgmod.from_dict(ItemSchema, items, where=f"{data.root}/manifest.json [config.items]")


def _check_new(new_ids: list[str], data: SequenceData, catalogue: dict[str, np.ndarray]) -> None:
    if not new_ids:
        raise DataError("the item table has no rows: nothing to upsert")
    if len(set(new_ids)) != len(new_ids):
        raise DataError("the item table repeats an item id; give each new item one row")
    known = set(data.item_ids().astype(str).tolist()) | set(catalogue.get("added_ids", np.zeros(0, str)).tolist())
    dup = [i for i in new_ids if i in known]
    if dup:
        raise DataError(
            f"items {dup[:5]} are already in the catalogue; upsert publishes new items only (re-encode known ones "
            "with `twotower export` + `twotower index build`)"
        )


def _item_inputs(table, new_ids: list[str], data: SequenceData, feat: Featurizer, cfg) -> ItemInputs:
    """The model's bucketed inputs of the new items, in the featurizer's layout (feature tokens, then the
    semantic-ID prefix tokens; the same widths as the dataset's items)."""
    n, H = len(new_ids), cfg.num_hashes
    item = to_buckets(multi_hash(new_ids, H, SALT_ITEM), cfg.item_buckets)
    if cfg.id_dropout > 0:
        item[:] = 0  # the model learnt to place items without their id; this id row was never trained
    authors = table.column("author_id")
    author = np.zeros((n, H), np.int64)
    has = np.asarray(authors.is_valid())
    if has.any():
        raw = multi_hash(authors.fill_null("").to_numpy(zero_copy_only=False), H, SALT_AUTHOR)
        author[has] = to_buckets(raw[has], cfg.author_buckets)
    width = feat.item_feat.shape[1]
    codes = None
    text = None
    if cfg.text_dim or cfg.codebook:  # the text vector is read by the tower, or coded into a semantic ID
        from ..data.text import embed_texts

        if "text" not in table.column_names:
            raise DataError(
                "the served model reads item text or semantic IDs (codes of the text): map the new items' text "
                "columns (--item-text, or ItemSchema.text)"
            )
        cache = (data.manifest.get("config") or {}).get("text_cache")  # where prepare cached the corpus's texts
        vec, _ = embed_texts([t or "" for t in table.column("text").to_pylist()], cache)
        vec = vec.astype(np.float16).astype(np.float32)  # what the dataset stores (float16)
        if cfg.text_dim:
            if vec.shape[1] != cfg.text_dim:
                raise ArtifactError(f"the encoder gives {vec.shape[1]}-dim vectors, the model reads {cfg.text_dim}")
            text = torch.from_numpy(vec)
        if cfg.codebook:
            book = Codebook.load(Path(data.root) / CODEBOOK_FILE)
            check_codebook(cfg.codebook, book, "the served model")
            codes = prefix_hashes(assign_codes(book, vec))
    n_sid = 0 if codes is None else codes.shape[1]
    tokens = pad_token_hashes(table.column("features"), width - n_sid, SALT_FEATURE, "new item")
    raw_feat = tokens if codes is None else np.concatenate([tokens, codes], axis=1)
    feats = to_buckets(raw_feat, cfg.feature_buckets)
    return ItemInputs(torch.from_numpy(item), torch.from_numpy(author), torch.from_numpy(feats), text)


def _grown(catalogue: dict[str, np.ndarray], new_ids: list[str], inputs: ItemInputs) -> dict[str, np.ndarray]:
    """The catalogue additions with the new items appended (:data:`ADDED_ARRAYS`; ``added_text`` when the
    model reads text)."""
    new = {
        "added_ids": np.array(new_ids, dtype=str),
        "added_item": inputs.item.numpy(),
        "added_author": inputs.author.numpy(),
        "added_feat": inputs.feat.numpy(),
    }
    if inputs.text is not None:
        new["added_text"] = inputs.text.numpy().astype(np.float16)
    if not catalogue:
        return new
    ids = np.concatenate([catalogue["added_ids"].astype(str), new["added_ids"]])
    rest = {k: np.concatenate([catalogue[k], new[k]]) for k in ADDED_ARRAYS[1:] if k in new}
    return {"added_ids": ids, **rest}


def _full_rows(index) -> np.ndarray:
    """The live items' full-width vectors (the oracle's data)."""
    if isinstance(index, VectorIndex):
        return index.vectors[index.alive]
    return index.full[index.inner.alive].astype(np.float32)


def _queries(root: Path, version: str, index) -> np.ndarray:
    """The export's user sample (the queries the index will serve), else item vectors."""
    sample = root / "embeddings" / version / "users_sample.npy"
    if sample.is_file():
        q = np.load(sample, allow_pickle=False)
        if len(q):
            return q[:1000].astype(np.float32)
    rows = _full_rows(index)
    return rows[np.random.default_rng(0).choice(len(rows), min(len(rows), 1000), replace=False)]
