"""The online service: train/serve equivalence, retrieval paths, micro-batching, hot swap, admin security."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError
from test_serve_support import TOKEN, settings, shared_artifacts

from twotower.data import SequenceData
from twotower.errors import ArtifactError, StoreError
from twotower.features import Featurizer
from twotower.index import IndexConfig
from twotower.index.embeddings import load_embeddings
from twotower.index.publish import build_and_publish
from twotower.index.vector_index import VectorIndex
from twotower.jobs.serving import build_artifacts
from twotower.serve import ServeSettings
from twotower.serve.app import create_app
from twotower.serve.bundle import load_bundle
from twotower.serve.context import parse_request
from twotower.serve.schemas import RetrieveRequest
from twotower.store import open_store


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


@pytest.fixture(scope="module")
def client(art):
    with TestClient(create_app(settings(art.root))) as c:
        yield c


def metric(c: TestClient, name: str, **labels) -> float:
    """Value of one Prometheus sample from /metrics (0 when absent)."""
    lab = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pat = re.compile(rf"^{re.escape(name)}(\{{{re.escape(lab)}\}})? (\S+)$", re.M) if lab else None
    text = c.get("/metrics").text
    m = (pat or re.compile(rf"^{re.escape(name)} (\S+)$", re.M)).search(text)
    return float(m.groups()[-1]) if m else 0.0


def dataset_request(data: SequenceData, u: int, snap: int, target: int, k: int = 10, first: int | None = None) -> dict:
    """The JSON a client would send for user ``u`` at event ``target`` with a state snapshotted at ``snap``
    (events from ``first``, default ``snap``: earlier ones are already in the state and must be ignored)."""
    items, users = data.item_ids().astype(str), data.user_ids().astype(str)
    actions, surfaces = data.manifest["actions"], data.manifest["surfaces"]

    def surface(row: int):
        s = int(data.event_surface[row])
        return surfaces[s - 1] if s else None

    events = [
        {
            "item_id": items[data.event_item[r]],
            "actions": [a for i, a in enumerate(actions) if (int(data.event_actions[r]) >> i) & 1],
            "timestamp": int(data.event_ts[r]),
            "surface": surface(r),
        }
        for r in range(snap if first is None else first, target)
    ]
    ctx = {"recent_events": events, "timestamp": int(data.event_ts[target]), "surface": surface(target)}
    return {"user_id": users[u], "context": ctx, "k": k}


def snapshot_rows(data: SequenceData, users: np.ndarray, as_of: int) -> np.ndarray:
    """Row of each user's first event at or after ``as_of`` (what the refresh job's state stops before)."""
    lo, hi = data.user_offsets[users], data.user_offsets[users + 1]
    return np.array([a + int((data.event_ts[a:b] < as_of).sum()) for a, b in zip(lo, hi)])


def stale_requests(art, client, n: int = 24):
    """(service, bundle, data, featurizer, (user, snapshot row, target row)) for ``n`` test users with events
    since the refresh job's snapshot (``art.as_of``)."""
    svc = client.app.state.service
    bundle = svc.retriever.bundle
    data = SequenceData.load(art.data)
    users, targets = data.eval_targets("loo", "test")
    snaps = snapshot_rows(data, users, art.as_of)
    pick = np.flatnonzero(targets > snaps)[:n]
    return svc, bundle, data, Featurizer(data, bundle.model_config), (users[pick], snaps[pick], targets[pick])


def test_service_vector_and_topk_equal_the_featurizer_path(art, client):
    """Raw JSON (item id strings, action names, timestamps) + the stored state == Featurizer rows -> model."""
    svc, bundle, data, feat, (u, s, t) = stale_requests(art, client)
    has_state = s > data.user_offsets[u]
    assert has_state.any() and (t - s > bundle.model_config.context_len).any()
    # clients may resend events the state already holds (two before the snapshot): ignored except as exclusions
    first = np.maximum(s - 2, data.user_offsets[u])
    bodies = [dataset_request(data, *x, first=f) for *x, f in zip(u, s, t, first)]
    parsed = [parse_request(RetrieveRequest.model_validate(b), bundle) for b in bodies]
    q_serve, paths = svc.retriever.user_vectors(bundle, parsed)
    assert paths == ["cached" if h else "cold_start" for h in has_state]
    with torch.no_grad():
        model = bundle.model
        state = model.encode_state(feat.histories_before(u, s)) * torch.from_numpy(has_state)[:, None, None]
        q_ref = model.encode_online(state, feat.context(u, s, t)).numpy()
    np.testing.assert_allclose(q_serve, q_ref, atol=1e-5)

    ids, emb, _ = load_embeddings(next((art.root / "embeddings").iterdir()))
    oracle = VectorIndex.build(ids, emb, IndexConfig(backend="exact"))
    item_ids = data.item_ids().astype(str)
    for b, body in enumerate(bodies[:8]):
        seen = np.unique(data.event_item[first[b] : t[b]].astype(np.int64))
        want_s, want_i = oracle.search(q_ref[b : b + 1], 10, exclude=[seen])
        got = client.post("/v1/retrieve", json=body).json()
        assert [x["item_id"] for x in got["items"]] == list(item_ids[want_i[0]])
        np.testing.assert_allclose([x["score"] for x in got["items"]], want_s[0], atol=1e-5)
        assert not set(item_ids[seen]) & {x["item_id"] for x in got["items"]}


def test_event_order_in_the_request_does_not_matter(art, client):
    data = SequenceData.load(art.data)
    users, targets = data.eval_targets("loo", "test")
    snaps = snapshot_rows(data, users, art.as_of)
    pick = next(
        i for i, (s, t) in enumerate(zip(snaps, targets)) if t - s >= 3 and len(np.unique(data.event_ts[s:t])) == t - s
    )  # distinct times: order is defined
    body = dataset_request(data, users[pick], snaps[pick], targets[pick])
    a = client.post("/v1/retrieve", json=body).json()
    body["context"]["recent_events"].reverse()
    b = client.post("/v1/retrieve", json=body).json()
    assert a["items"] == b["items"]


def test_paths_cached_cold_start_and_version_mismatch(art, client):
    svc = client.app.state.service
    users = open_store(svc.settings.resolved_store_url())
    before = {p: metric(client, "twotower_retrieve_path_total", path=p) for p in ("cached", "cold_start", "fallback")}
    cached_user = next(x for x in SequenceData.load(art.data).user_ids().astype(str)
                       if users.get_meta([x], svc.retriever.bundle.model_version)[0][0])  # fmt: skip
    # a state written under another model version only: served without it, never mixed in
    users.put_many(["skewed-user"], np.ones((1, 1, 16), np.float32), np.array([10]), np.array([5]), "other-version")
    users.close()
    got = {uid: client.post("/v1/retrieve", json={"user_id": uid, "k": 5}).json()
           for uid in (cached_user, "never-seen-user", "skewed-user")}  # fmt: skip
    assert [g["path"] for g in got.values()] == ["cached", "cold_start", "fallback"]
    assert client.get("/readyz").json()["tower"] == "hybrid"
    assert all(len(g["items"]) == 5 for g in got.values())
    for p in ("cached", "cold_start", "fallback"):
        assert metric(client, "twotower_retrieve_path_total", path=p) == before[p] + 1


def test_concurrent_requests_are_micro_batched_and_equal_sequential_results(art):
    data = SequenceData.load(art.data)
    ids = data.user_ids().astype(str)
    items = data.item_ids().astype(str)
    bodies = [{"user_id": ids[i], "k": 7, "exclude_item_ids": [items[i]],
               "context": {"timestamp": 10**9, "recent_events": [{"item_id": items[i + 1], "timestamp": 10**9 - 5}]}}
              for i in range(40)]  # fmt: skip
    with TestClient(create_app(settings(art.root, micro_batch_wait_ms=20, micro_batch=16))) as c:
        with ThreadPoolExecutor(16) as pool:
            concurrent = list(pool.map(lambda b: c.post("/v1/retrieve", json=b).json(), bodies))
        text = c.get("/metrics").text
        batches = float(re.search(r"^twotower_micro_batch_size_count (\S+)$", text, re.M).group(1))
        total = float(re.search(r"^twotower_micro_batch_size_sum (\S+)$", text, re.M).group(1))
        assert total == 40 and batches < 40  # several requests shared a forward pass
        batch = c.post("/v1/retrieve/batch", json={"requests": bodies}).json()["results"]
    with TestClient(create_app(settings(art.root, micro_batch=1))) as c:
        sequential = [c.post("/v1/retrieve", json=b).json() for b in bodies]
    for a, b, s in zip(concurrent, batch, sequential):
        assert (
            [x["item_id"] for x in a["items"]]
            == [x["item_id"] for x in s["items"]]
            == [x["item_id"] for x in b["items"]]
        )
        np.testing.assert_allclose([x["score"] for x in a["items"]], [x["score"] for x in s["items"]], atol=1e-5)
        assert a["path"] == s["path"]


def test_reload_swaps_versions_and_survives_broken_artifacts(art, tmp_path):
    root = art.copy_root(tmp_path / "root")
    emb = next((root / "embeddings").iterdir())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings(root))) as c:
        body = {"user_id": "u3", "k": 5}
        v0 = c.post("/v1/retrieve", json=body).json()["index_version"]
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 403
        new = build_and_publish(emb, root / "index", IndexConfig(backend="hnsw"), recall_floor=0.0)["version"]
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 200 and r.json()["changed"] and r.json()["previous_index_version"] == v0
        assert c.post("/v1/retrieve", json=body).json()["index_version"] == new != v0
        # a corrupt published version: the reload is refused, the current one keeps serving
        bad = build_and_publish(emb, root / "index", IndexConfig(backend="exact"), recall_floor=0.0)["version"]
        vec = root / "index" / "versions" / bad / "vectors.npy"
        vec.write_bytes(vec.read_bytes()[:100])
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 409 and "still serving" in r.json()["error"] and "corrupt" in r.json()["error"]
        assert c.post("/v1/retrieve", json=body).json()["index_version"] == new
        assert "corrupt" in c.get("/readyz").json()["last_reload_error"]
        # CURRENT naming a version that does not exist
        (root / "index" / "CURRENT").write_text("no-such-version\n")
        r = c.post("/admin/reload", headers=auth)
        assert r.status_code == 409 and "no-such-version" in r.json()["error"]
        ok = c.post("/v1/retrieve", json=body)
        assert ok.status_code == 200 and ok.json()["index_version"] == new
        assert metric(c, "twotower_reloads_total", result="error") == 2
        assert metric(c, "twotower_served_version", index=new, model=ok.json()["model_version"]) == 1


def test_worker_count_defaults_to_one_per_core(monkeypatch):
    import os

    monkeypatch.setenv("TWOTOWER_DEV_MODE", "1")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert ServeSettings().resolved_workers() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one
    assert ServeSettings().resolved_workers() == 1
    monkeypatch.setenv("TWOTOWER_WORKERS", "3")
    assert ServeSettings().resolved_workers() == 3
    with pytest.raises(ValidationError, match="workers"):
        ServeSettings(workers=-1)


def test_settings_refuse_an_empty_or_default_admin_token(monkeypatch, tmp_path):
    for token in ("", "changeme", "short"):
        with pytest.raises(ValidationError, match="TWOTOWER_ADMIN_TOKEN"):
            ServeSettings(artifacts=tmp_path, admin_token=token)
    monkeypatch.setenv("TWOTOWER_ADMIN_TOKEN", "admin")
    with pytest.raises(ValidationError, match="TWOTOWER_DEV_MODE"):
        ServeSettings()
    monkeypatch.setenv("TWOTOWER_DEV_MODE", "1")
    assert ServeSettings().admin_token.get_secret_value() == "admin"  # allowed, loudly, in dev mode only
    monkeypatch.setenv("TWOTOWER_ADMIN_TOKEN", "")
    assert len(ServeSettings().admin_token.get_secret_value()) >= 16  # empty: locked with a random token
    from twotower.cli import main

    monkeypatch.delenv("TWOTOWER_DEV_MODE")
    assert main(["serve", "--artifacts", str(tmp_path)]) == 2  # refuses to start


def test_refused_settings_never_echo_secrets(monkeypatch, tmp_path, capsys):
    url = "redis://:hunter2-password@127.0.0.1:6379/0"
    with pytest.raises(ValidationError) as info:
        ServeSettings(artifacts=tmp_path, admin_token="short-secret", store_url=url)
    assert "TWOTOWER_ADMIN_TOKEN" in str(info.value)
    assert "short-secret" not in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ValidationError) as info:  # a type error elsewhere: still no input values
        ServeSettings(artifacts=tmp_path, admin_token="short-secret", port="not-a-port", dev_mode=True)
    assert "short-secret" not in str(info.value) and "port" in str(info.value)
    from twotower.cli import main

    monkeypatch.setenv("TWOTOWER_ADMIN_TOKEN", "short-secret")
    assert main(["serve", "--artifacts", str(tmp_path), "--store", url]) == 2
    err = capsys.readouterr().err
    assert "TWOTOWER_ADMIN_TOKEN" in err and "short-secret" not in err and "hunter2" not in err


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1:6379/0?colour=red", "rediss//:hunter2@host:6379/0"])
def test_store_url_errors_hide_the_password(url):
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert "hunter2" not in str(info.value) and ":***@" in str(info.value)


def test_an_unsplit_tower_serves_its_offline_vectors(synth_data, tmp_path):
    """An unsplit run is servable: a user with a cached vector gets the exact top-k of the offline user vector
    (sent events after the snapshot are excluded and counted, not folded in); a user without one, the encoder
    over the events sent; a user with neither, the average user of the export's sample."""
    from conftest import small_run_config

    from twotower.serve.unsplit import average_user
    from twotower.train.trainer import Trainer

    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=1, eval_users=0)
    cfg.model.user_token, cfg.model.positions = False, "learned+time"  # a new user is its events, gaps included
    Trainer(data, cfg, tmp_path / "run").fit(progress=False)
    as_of = int(np.median(data.event_ts))
    build_artifacts(tmp_path / "run", tmp_path / "root", backend="exact", as_of=as_of)
    users, targets = data.eval_targets("loo", "test")
    snaps = snapshot_rows(data, users, as_of)
    n_before = snaps - data.user_offsets[users]
    pick = (n_before > 0) & (n_before <= cfg.model.max_len) & (targets > snaps)
    u, s, t = users[pick][:12], snaps[pick][:12], targets[pick][:12]
    assert len(u) >= 8
    with TestClient(create_app(settings(tmp_path / "root"))) as c:
        svc = c.app.state.service
        bundle = svc.retriever.bundle
        feat = Featurizer(data, bundle.model_config)
        with torch.no_grad():
            q_ref = bundle.model.encode_user(feat.histories_before(u, s)).numpy()  # what `evaluate` scores
        ids, emb, _ = load_embeddings(tmp_path / "root" / "embeddings" / bundle.model_version)
        oracle = VectorIndex.build(ids, emb, IndexConfig(backend="exact"))
        item_ids = data.item_ids().astype(str)

        # cached: the offline vector, whatever the request sends after the snapshot
        bodies = [dataset_request(data, *x) for x in zip(u, s, t)]
        parsed = [parse_request(RetrieveRequest.model_validate(b), bundle) for b in bodies]
        q_serve, paths = svc.retriever.user_vectors(bundle, parsed)
        assert paths == ["cached"] * len(u)
        np.testing.assert_allclose(q_serve, q_ref, atol=1e-6)
        before = metric(c, "twotower_unfolded_events_total")
        for b, body in enumerate(bodies[:6]):
            seen = np.unique(data.event_item[s[b] : t[b]].astype(np.int64))
            want_s, want_i = oracle.search(q_ref[b : b + 1], 10, exclude=[seen])
            got = c.post("/v1/retrieve", json=body).json()
            assert got["path"] == "cached"
            assert [x["item_id"] for x in got["items"]] == list(item_ids[want_i[0]])
            np.testing.assert_allclose([x["score"] for x in got["items"]], want_s[0], atol=1e-5)
        assert metric(c, "twotower_unfolded_events_total") == before + int((t - s)[:6].sum())

        # no cached vector: the events sent are the history (here: each user's history before the snapshot)
        cold = [
            dataset_request(data, x, int(data.user_offsets[x]), y, first=int(data.user_offsets[x]))
            for x, y in zip(u, s)
        ]
        for body in cold:
            body["user_id"] = "new-" + body["user_id"]
        parsed = [parse_request(RetrieveRequest.model_validate(b), bundle) for b in cold]
        q_cold, paths = svc.retriever.user_vectors(bundle, parsed)
        assert paths == ["cold_start"] * len(u)
        np.testing.assert_allclose(q_cold, q_ref, atol=1e-5)

        # nothing at all: the average user, for a new user and when the user's only state is another version's
        avg = average_user(tmp_path / "root" / "embeddings" / bundle.model_version, 16, "cosine").numpy()
        want_s, want_i = oracle.search(avg[None], 5)
        got = c.post("/v1/retrieve", json={"user_id": "nobody", "k": 5}).json()
        assert got["path"] == "cold_start" and [x["item_id"] for x in got["items"]] == list(item_ids[want_i[0]])
        assert c.get("/readyz").json()["tower"] == "unsplit"
    (tmp_path / "root" / "embeddings" / bundle.model_version / "users_sample.npy").unlink()
    with pytest.raises(ArtifactError, match="users_sample.npy is missing.*serve-prepare"):
        load_bundle(tmp_path / "root")


def test_a_reload_reaches_every_worker_process(art, tmp_path):
    """Two services over one root stand in for two uvicorn workers: a reload sent to one reaches both."""
    import time

    root = art.copy_root(tmp_path / "root")
    emb = next((root / "embeddings").iterdir())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    body = {"user_id": "u3", "k": 5}
    with TestClient(create_app(settings(root, reload_poll_s=0.1))) as a, \
         TestClient(create_app(settings(root, reload_poll_s=0.1))) as b:  # fmt: skip
        v0 = b.post("/v1/retrieve", json=body).json()["index_version"]
        new = build_and_publish(emb, root / "index", IndexConfig(backend="hnsw"), recall_floor=0.0)["version"]
        time.sleep(0.3)
        assert b.post("/v1/retrieve", json=body).json()["index_version"] == v0  # publishing alone swaps nothing
        assert a.post("/admin/reload", headers=auth).status_code == 200
        deadline = time.monotonic() + 10
        while b.post("/v1/retrieve", json=body).json()["index_version"] != new and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b.post("/v1/retrieve", json=body).json()["index_version"] == new
        assert a.post("/v1/retrieve", json=body).json()["index_version"] == new
        assert metric(b, "twotower_reloads_total", result="ok") == 1


def test_serve_prepare_cli_passes_the_index_knobs(art, tmp_path):
    """`twotower serve-prepare` takes the same index flags as `twotower index build`; they reach the index."""
    import json

    from twotower.cli import main
    from twotower.index.publish import current_version

    root = tmp_path / "root"
    argv = ["serve-prepare", "--run", str(art.run), "--artifacts", str(root), "--no-progress", "--backend", "hnsw"]
    assert main([*argv, "--hnsw-m", "8", "--hnsw-ef-search", "40", "--recall-floor", "0"]) == 0
    manifest = json.loads((root / "index" / "versions" / current_version(root / "index") / "manifest.json").read_text())
    assert (manifest["config"]["hnsw_m"], manifest["config"]["hnsw_ef_search"]) == (8, 40)


def _freshness_benchmark():
    """benchmarks/freshness.py as a module (its ``vectors`` is what the benchmark scores)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "freshness.py"
    spec = importlib.util.spec_from_file_location("freshness_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("protocol", ["request_time", "strict"])
def test_served_vectors_equal_the_freshness_benchmarks(art, client, protocol):
    """Served = measured: the vectors ``benchmarks/freshness.py`` scores for (stale state + events since) are
    the service's for the same requests, under both protocols (strict: the request's time is the last event's
    and it names no surface)."""
    svc, bundle, data, feat, (u, s, t) = stale_requests(art, client)
    bodies = [dataset_request(data, *x) for x in zip(u, s, t)]
    if protocol == "strict":
        for b, row in zip(bodies, t):
            b["context"]["timestamp"], b["context"]["surface"] = int(data.event_ts[row - 1]), None
    parsed = [parse_request(RetrieveRequest.model_validate(b), bundle) for b in bodies]
    q_serve, _ = svc.retriever.user_vectors(bundle, parsed)
    q_bench = _freshness_benchmark().vectors(bundle.model, feat, u, t, s, protocol=protocol).numpy()
    np.testing.assert_allclose(q_serve, q_bench, atol=1e-5)
