"""The Python API: prepare from tables equals prepare from files, train/evaluate a Run, the Retriever equals
the HTTP service, and the example script runs end to end."""

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from test_serve import dataset_request, snapshot_rows
from test_serve_support import settings, shared_artifacts

import twotower
from twotower.data import SequenceData
from twotower.data.synth import generate
from twotower.errors import DataError, RequestError
from twotower.serve.app import create_app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


def test_prepare_from_pyarrow_pandas_or_polars_equals_prepare_from_the_file(tmp_path):
    generate(60, 40, 900, tmp_path / "log.parquet", seed=2, progress=False)
    cfg = {"log": {"actions": ["click", "like"], "surface": "surface"}}
    from_file = twotower.prepare(tmp_path / "log.parquet", config=cfg, out=tmp_path / "a")
    table = pq.read_table(tmp_path / "log.parquet")
    import polars as pl

    for i, given in enumerate((table, table.to_pandas(), pl.from_arrow(table))):
        got = twotower.prepare(given, config=cfg, out=tmp_path / f"t{i}")
        for name in ("user_offsets", "event_item", "event_ts", "event_actions", "split_loo", "item_hash"):
            assert np.array_equal(getattr(got, name), getattr(from_file, name)), name
    with pytest.raises(DataError, match="DataFrame"):
        twotower.prepare([1, 2, 3], out=tmp_path / "bad")


def test_the_retriever_answers_what_the_service_answers(art):
    data = SequenceData.load(art.data)
    users, targets = data.eval_targets("loo", "test")
    snaps = snapshot_rows(data, users, art.as_of)
    pick = (snaps > data.user_offsets[users]) & (targets > snaps)
    bodies = [dataset_request(data, u, s, t, k=7) for u, s, t in list(zip(users[pick], snaps[pick], targets[pick]))[:5]]
    bodies.append({"user_id": "nobody-yet", "context": bodies[0]["context"], "k": 7})  # cold start
    genre = {"filters": {"allow_item_ids": list(data.item_ids().astype(str)[:50])}}
    bodies.append({**bodies[1], **genre})
    with twotower.Retriever.load(art.root) as r, TestClient(create_app(settings(art.root))) as c:
        for body in bodies:
            http = c.post("/v1/retrieve", json=body).json()
            ctx = body["context"]
            got = r.recommend(
                body["user_id"],
                recent_events=ctx["recent_events"],
                k=body["k"],
                timestamp=ctx["timestamp"],
                surface=ctx["surface"],
                filters=body.get("filters"),
            )
            assert got.path == http["path"] and list(got.item_ids) == [x["item_id"] for x in http["items"]]
            np.testing.assert_allclose(got.scores, [x["score"] for x in http["items"]], atol=1e-6)
        assert {x.path for x in r.recommend_many(bodies[:2])} == {"cached"}
        with pytest.raises(RequestError, match="k"):
            r.recommend("1", k=10**9)
        ids, vecs = r.encode_items(list(data.item_ids().astype(str)[:4]))
        assert vecs.shape == (4, r.bundle.model_config.dim) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
        with pytest.raises(RequestError, match="unknown item ids"):
            r.encode_items(["no-such-item"])
        # a user's vector from their events: the service's cold-start vector for the same events
        ev = bodies[0]["context"]["recent_events"]
        table = pa.table({"user_id": ["x"] * len(ev), "item_id": [e["item_id"] for e in ev],
                          "timestamp": [e["timestamp"] for e in ev]})  # fmt: skip
        uid, u = r.encode_users(table, now=bodies[0]["context"]["timestamp"])
        svc = c.app.state.service
        from twotower.serve.context import parse_request
        from twotower.serve.schemas import RetrieveRequest

        plain = [{k: v for k, v in e.items() if k in ("item_id", "timestamp")} for e in ev]
        req = {"user_id": "never-seen", "context": {"recent_events": plain, "timestamp": ctx_ts(bodies[0])}}
        q, paths = svc.retriever.user_vectors(
            svc.retriever.bundle, [parse_request(RetrieveRequest.model_validate(req), svc.retriever.bundle)]
        )
        assert list(uid) == ["x"] and paths == ["cold_start"]
        np.testing.assert_allclose(u, q, atol=1e-6)


def ctx_ts(body: dict) -> int:
    return body["context"]["timestamp"]


def test_the_example_script_runs_end_to_end(tmp_path):
    sys.path.insert(0, str(REPO / "examples"))
    import quickstart

    out = quickstart.main(["--users", "300", "--items", "200", "--events", "8000", "--budget", "4",
                           "--work", str(tmp_path)])  # fmt: skip
    m = out["metrics"]
    assert m["protocol"] == "strict" and 0 <= m["primary"] <= 1 and "popularity" in m
    assert out["known"].path == "cached" and len(out["known"].item_ids) == 5
    assert out["new"].path == "cold_start" and len(out["new"].item_ids) == 5
    run = twotower.Run.load(tmp_path / "run")
    assert run.summary["epoch"] >= 1 and run.config.train.time_budget_s == 4
