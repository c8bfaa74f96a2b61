"""Rerank inside a request (#21): the served ranker's answer equals the offline ranker's, its history equals the
Featurizer's, a ranker of another retriever is refused, a new ranker hot-swaps under load, and a service
without a ranker answers from retrieval with a counted warning."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from conftest import small_run_config
from fastapi.testclient import TestClient
from test_serve import metric
from test_serve_support import TOKEN, settings, shared_artifacts

import twotower
from twotower.data import SequenceData
from twotower.errors import ArtifactError
from twotower.features import Featurizer
from twotower.jobs.mine import mine_negatives
from twotower.jobs.serving import publish_ranker
from twotower.model.ranker import load_ranker
from twotower.serve.app import create_app
from twotower.serve.bundle import load_bundle
from twotower.serve.items import ItemTable
from twotower.serve.rerank import ranker_histories
from twotower.train.hard_negatives import MineConfig
from twotower.train.ranker import RankerConfig, candidate_inputs, train_ranker
from twotower.train.trainer import Trainer

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


@pytest.fixture(scope="module")
def rankers(art, tmp_path_factory):
    """Two rankers for the served model (seeds 0 and 1) and one for another model."""
    base = tmp_path_factory.mktemp("rankers")
    data = SequenceData.load(art.data)
    mine_negatives(art.run, base / "mined", MineConfig(rank_from=1, rank_to=30, count=6), data, progress=False)
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        cfg = RankerConfig(steps=20, batch=32, seed=seed, history=12)
        train_ranker(art.run, base / "mined", base / name, cfg, data, progress=False)
        out[name] = base / name
    Trainer(data, small_run_config(epochs=1, seed=5), base / "other_run").fit(progress=False)
    mine_negatives(base / "other_run", base / "mined2", MineConfig(rank_from=1, rank_to=30, count=6), data, False)
    train_ranker(base / "other_run", base / "mined2", base / "other", RankerConfig(steps=2, batch=8), data, False)
    out["other"] = base / "other"
    return out


def _user(data: SequenceData, u: int) -> str:
    return str(data.user_ids()[u])


def test_the_served_rerank_equals_the_offline_ranker(art, rankers, tmp_path):
    root = art.copy_root(tmp_path / "root")
    publish_ranker(rankers["a"], root)
    data = SequenceData.load(art.data)
    ranker, _, version = load_ranker(rankers["a"])
    feat = Featurizer(data, ranker.cfg)
    with TestClient(create_app(settings(root))) as c:
        assert c.get("/readyz").json()["ranker"]["version"] == version
        for u in (1, 4, 9):
            user = _user(data, u)
            plain = c.post("/v1/retrieve", json={"user_id": user, "k": 20}).json()
            got = c.post("/v1/retrieve", json={"user_id": user, "k": 5, "rerank": {"candidates": 20}}).json()
            assert got["ranker_version"] == version and "warnings" not in got
            # offline: the same shortlist and retrieval scores, the user's whole history as the Featurizer builds it
            ids = np.array([[data.item_ids().tolist().index(i["item_id"]) for i in plain["items"]]])
            prior = torch.tensor([[i["score"] for i in plain["items"]]])
            end = np.array([data.user_offsets[u + 1]])
            with torch.no_grad():
                logits = ranker(feat.histories_before(np.array([u]), end), candidate_inputs(feat, ids), prior)[0]
            order = torch.argsort(logits, descending=True, stable=True)[:5]
            assert [i["item_id"] for i in got["items"]] == [plain["items"][j]["item_id"] for j in order.tolist()]
            np.testing.assert_allclose([i["score"] for i in got["items"]], logits[order].numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose([i["retrieval_score"] for i in got["items"]], prior[0, order].numpy(), 1e-6)
        assert metric(c, "twotower_rerank_total", result="reranked") == 3
    with twotower.Retriever.load(root) as r:  # the Python API runs the service's path: the same answer
        rec = r.recommend(user, k=5, rerank=20)
        assert list(rec.item_ids) == [i["item_id"] for i in got["items"]] and rec.ranker_version == version
        np.testing.assert_allclose(rec.scores, [i["score"] for i in got["items"]], atol=1e-5)
        np.testing.assert_allclose(rec.retrieval_scores, [i["retrieval_score"] for i in got["items"]], atol=1e-6)


def test_the_rankers_history_with_sent_events_equals_the_featurizers(art, rankers):
    data = SequenceData.load(art.data)
    ranker, _, _ = load_ranker(rankers["a"])
    bundle = load_bundle(art.root)
    feat = Featurizer(data, ranker.cfg)
    items = data.item_ids()
    def distinct_tail(u: int) -> bool:  # shuffled events are re-sorted by time: ties would have no true order
        lo_, hi_ = data.user_offsets[u], data.user_offsets[u + 1]
        return hi_ - lo_ >= 25 and len(np.unique(data.event_ts[hi_ - 21 : hi_])) == 21

    users = np.array([u for u in range(data.num_users) if distinct_tail(u)][:3])
    assert len(users) == 3
    lo, hi = data.user_offsets[users], data.user_offsets[users + 1]
    cut = hi - np.array([0, 3, 20])  # the dataset ends earlier: the rest arrive with the request (shuffled)
    sent = []
    for c_, h in zip(cut, hi):
        rows = np.random.default_rng(0).permutation(np.arange(c_, h))
        sent.append(([str(items[data.event_item[r]]) for r in rows], data.event_actions[rows].astype(np.int64),
                     data.event_ts[rows].astype(np.int64), data.event_surface[rows].astype(np.int64)))  # fmt: skip
    table: ItemTable = bundle.items
    cfg = ranker.cfg
    got = ranker_histories(table, data, lo, cut, sent, cfg.max_len, cfg.num_actions, cfg.time_buckets)
    want = feat.histories_before(users, hi)
    for name in ("actions", "surface", "gap", "length"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for name in ("item", "author", "feat"):
        assert torch.equal(getattr(got.history, name), getattr(want.history, name)), name


def test_a_ranker_of_another_retriever_is_refused_unless_published_with_allow_mismatch(art, rankers, tmp_path):
    root = art.copy_root(tmp_path / "root")
    with pytest.raises(ArtifactError, match="trained against retriever"):
        publish_ranker(rankers["other"], root)
    assert not (root / "rankers" / "CURRENT").exists()  # nothing was published
    publish_ranker(rankers["a"], root)
    with TestClient(create_app(settings(root, reload_poll_s=0))) as c:
        served = c.get("/readyz").json()["ranker"]["version"]
        # CURRENT pointed by hand at a mismatched ranker: the reload is refused, the old one keeps serving
        _, _, other = load_ranker(rankers["other"])
        shutil.copytree(rankers["other"] / "checkpoint", root / "rankers" / other / "checkpoint")
        (root / "rankers" / "CURRENT").write_text(other + "\n")
        r = c.post("/admin/reload", headers=AUTH)
        assert r.status_code == 409 and "publish-ranker" in r.json()["error"]
        assert c.get("/readyz").json()["ranker"]["version"] == served
        # told: published with --allow-mismatch, it loads (its tables have the served model's shapes)
        publish_ranker(rankers["other"], root, allow_mismatch=True)
        assert c.post("/admin/reload", headers=AUTH).status_code == 200
        ready = c.get("/readyz").json()["ranker"]
        assert ready["version"] == other and ready["allow_mismatch"] is True


def test_without_a_ranker_rerank_is_answered_from_retrieval_with_a_warning(art):
    data = SequenceData.load(art.data)
    with TestClient(create_app(settings(art.root))) as c:
        assert c.get("/readyz").json()["ranker"] is None
        body = {"user_id": _user(data, 3), "k": 4}
        plain = c.post("/v1/retrieve", json=body).json()
        got = c.post("/v1/retrieve", json={**body, "rerank": {"candidates": 50}}).json()
        assert got["items"] == plain["items"] and "no ranker" in got["warnings"][0]
        assert "ranker_version" not in got
        assert metric(c, "twotower_rerank_total", result="no_ranker") == 1
        bad = c.post("/v1/retrieve", json={**body, "rerank": {"candidates": 10**9}})
        assert bad.status_code == 422 and "candidates" in bad.text
        # a per-request shortlist is for adaptive indexes; this one is exact
        bad = c.post("/v1/retrieve", json={**body, "shortlist": 8})
        assert bad.status_code == 422 and "not an adaptive" in bad.json()["error"]


def test_a_new_ranker_hot_swaps_under_load_with_no_failed_request(art, rankers, tmp_path):
    root = art.copy_root(tmp_path / "root")
    publish_ranker(rankers["a"], root)
    _, _, va = load_ranker(rankers["a"])
    _, _, vb = load_ranker(rankers["b"])
    data = SequenceData.load(art.data)
    failures, seen, stop = [], set(), threading.Event()
    with TestClient(create_app(settings(root, reload_poll_s=0))) as c:

        def client(i: int) -> None:
            n = 0
            while not stop.is_set() or n < 5:
                body = {"user_id": _user(data, (i * 7 + n) % 40), "k": 5, "rerank": {"candidates": 30}}
                r = c.post("/v1/retrieve", json=body)
                if r.status_code != 200 or len(r.json()["items"]) != 5:
                    failures.append(r.text)
                else:
                    seen.add(r.json()["ranker_version"])
                n += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        publish_ranker(rankers["b"], root)
        swap = c.post("/admin/reload", headers=AUTH).json()
        # only the ranker changed: the reload says so
        assert swap["changed"] and swap["previous_ranker_version"] == va and swap["ranker_version"] == vb
        after = c.post("/v1/retrieve", json={"user_id": _user(data, 1), "k": 5, "rerank": {"candidates": 30}})
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert after.json()["ranker_version"] == vb and seen <= {va, vb} and vb in seen
