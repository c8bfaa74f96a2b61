"""Allow-lists by item feature: the token-hash inverted index, and the service applying it inside the search."""

from __future__ import annotations

import asyncio

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from test_serve_support import settings, shared_artifacts

from twotower.data import ItemSchema, PrepareConfig, SequenceData, prepare_files
from twotower.hashing import token_hash
from twotower.layout import SALT_FEATURE
from twotower.serve.app import create_app
from twotower.serve.context import parse_request
from twotower.serve.items import FeatureIndex, ItemTable, item_feature_columns
from twotower.serve.schemas import RetrieveRequest


def test_feature_index_matches_the_item_table(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    genres = ["Comedy", "Drama", "Horror", "Sci-Fi"]
    items = pa.table({
        "item_id": [f"i{j}" for j in range(n)],
        "genre": ["|".join(rng.choice(genres, int(rng.integers(0, 3)), replace=False)) for _ in range(n)],
        "decade": [str(1950 + 10 * int(rng.integers(0, 6))) for _ in range(n)],
    })  # fmt: skip
    log = pa.table({"user_id": [f"u{j % 20}" for j in range(3 * n)], "item_id": [f"i{j % n}" for j in range(3 * n)],
                    "timestamp": list(range(3 * n))})  # fmt: skip
    pq.write_table(items, tmp_path / "items.parquet")
    pq.write_table(log, tmp_path / "log.parquet")
    cfg = PrepareConfig(items=ItemSchema(features=["decade"], multi_valued={"genre": "|"}))
    prepare_files(tmp_path / "log.parquet", tmp_path / "data", cfg, items_path=tmp_path / "items.parquet")
    data = SequenceData.load(tmp_path / "data")
    fi = FeatureIndex.build(np.asarray(data.item_feat_hash))
    dense = {s: i for i, s in enumerate(data.item_ids().astype(str))}
    table = {r["item_id"]: r for r in items.to_pylist()}

    def truth(pred) -> np.ndarray:
        return np.sort([dense[i] for i, r in table.items() if pred(r)]).astype(np.int64)

    got = fi.matching({"genre": ["Comedy", "Horror"]})
    np.testing.assert_array_equal(got, truth(lambda r: {"Comedy", "Horror"} & set(r["genre"].split("|"))))
    got = fi.matching({"genre": ["Drama"], "decade": ["1970", "1990"]})  # AND across columns, OR within one
    np.testing.assert_array_equal(got, truth(lambda r: "Drama" in r["genre"].split("|") and r["decade"] in
                                             ("1970", "1990")))  # fmt: skip
    assert len(fi.matching({"genre": ["Western"]})) == 0
    assert len(fi.matching({"no_such_column": ["Drama"]})) == 0
    assert fi.absent_values("genre", ["Drama", "Western", "1970"]) == ["Western", "1970"]
    assert item_feature_columns(data.manifest, np.asarray(data.item_feat_hash)) == {"genre", "decade"}


def test_item_feature_columns_come_from_the_manifest():
    some, none = np.ones((2, 3), np.uint64), np.zeros((2, 3), np.uint64)
    assert item_feature_columns({"dataset": "ml-1m"}, some) == {"genre", "year", "decade"}  # the built-in reader
    assert item_feature_columns({"item_feature_columns": ["colour"], "dataset": "ml-1m"}, some) == {"colour"}
    assert item_feature_columns({"config": {"items": {"features": [], "multi_valued": {}}}}, none) == frozenset()
    assert item_feature_columns({"config": {"items": {"features": [], "multi_valued": {}}}}, some) is None  # unknown


@pytest.fixture(scope="module")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


def test_service_returns_only_items_with_the_feature(art):
    data = SequenceData.load(art.data)
    users, items = data.user_ids().astype(str), data.item_ids().astype(str)
    red = np.arange(0, len(items), 3)  # give every third item colour=red (the synthetic set has no item table)
    key = token_hash(["colour=red"], SALT_FEATURE)[0]
    with TestClient(create_app(settings(art.root))) as c:
        bundle = c.app.state.service.retriever.bundle
        bundle.items.features = FeatureIndex(
            np.full(len(red), key, np.uint64), red.astype(np.int64), frozenset({"colour"})
        )
        r = c.post("/v1/retrieve", json={"user_id": users[0], "k": 10, "filters": {"item_features": {
            "colour": ["red"]}}})  # fmt: skip
        assert r.status_code == 200, r.text
        got = [i["item_id"] for i in r.json()["items"]]
        assert len(got) == 10 and set(got) <= set(items[red])
        # combined with an id allow-list: the intersection
        allow = list(items[:30])
        r = c.post("/v1/retrieve", json={"user_id": users[0], "k": 50, "filters": {
            "item_features": {"colour": ["red"]}, "allow_item_ids": allow}})  # fmt: skip
        assert sorted(i["item_id"] for i in r.json()["items"]) == sorted(set(allow) & set(items[red]))
        r = c.post("/v1/retrieve", json={"user_id": users[0], "filters": {"item_features": {"colour": ["blue"]}}})
        assert r.status_code == 200 and r.json()["items"] == []
        assert r.json()["warnings"] == [  # an empty answer explained: the value, then why nothing is left
            "filters.item_features.colour: no item has the value(s) ['blue']; check the spelling",
            "no item has every requested filters.item_features value",
        ]
        r = c.post("/v1/retrieve", json={"user_id": users[0], "filters": {"item_features": {"color": ["red"]}}})
        assert r.status_code == 422  # a mistyped column is refused, naming the known ones
        assert (
            r.json()["error"]
            == "filters.item_features: unknown item-feature column 'color'; use columns from ['colour']"
        )
        r = c.post("/v1/retrieve/batch", json={"requests": [{"user_id": "a", "filters": {"item_features": {
            "color": ["red"]}}}]})  # fmt: skip
        assert r.status_code == 422 and r.json()["error"].startswith("requests[0].filters.item_features: unknown")
        # every red item excluded: the empty answer says so
        r = c.post("/v1/retrieve", json={"user_id": users[0], "exclude_item_ids": list(items[red]), "filters": {
            "item_features": {"colour": ["red"]}}})  # fmt: skip
        assert r.json()["items"] == [] and "excluded" in r.json()["warnings"][0]
        r = c.post("/v1/retrieve", json={"user_id": users[0], "filters": {"item_features": {"colour": []}}})
        assert r.status_code == 422 and "item_features" in r.json()["error"]


def test_dataset_without_item_features_refuses_the_filter(art):
    with TestClient(create_app(settings(art.root))) as c:  # the synthetic log has no item table
        r = c.post("/v1/retrieve", json={"user_id": "u1", "filters": {"item_features": {"genre": ["Comedy"]}}})
        assert r.status_code == 422
        assert r.json()["error"] == "filters.item_features: the served dataset has no item features; drop the filter"


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_filter_lookups_run_once_per_request_in_the_worker(art, monkeypatch):
    """The allow-list id lookup and the feature-value hashing are each done once per request, by the worker
    (never on the event loop, where a 10,000-id allow-list would block every other request): the warnings
    come from the lookups the search needs anyway."""
    data = SequenceData.load(art.data)
    users, items = data.user_ids().astype(str), data.item_ids().astype(str)
    red = np.arange(0, len(items), 3)
    key = token_hash(["colour=red"], SALT_FEATURE)[0]
    allow = [*items[:30], "nope"]
    body = {"user_id": users[0], "k": 50, "filters": {"allow_item_ids": allow,
            "item_features": {"colour": ["red", "blue"], "shape": ["round"]}}}  # fmt: skip
    dense_calls, hashed = [], []
    real_dense, real_ranges = ItemTable.dense, FeatureIndex._ranges

    def dense(self, ids):
        dense_calls.append((list(ids), _on_event_loop()))
        return real_dense(self, ids)

    def ranges(self, column, values):
        hashed.append((column, list(values), _on_event_loop()))
        return real_ranges(self, column, values)

    with TestClient(create_app(settings(art.root))) as c:
        bundle = c.app.state.service.retriever.bundle
        bundle.items.features = FeatureIndex(
            np.full(len(red), key, np.uint64), red.astype(np.int64), frozenset({"colour", "shape"})
        )
        monkeypatch.setattr(ItemTable, "dense", dense)
        monkeypatch.setattr(FeatureIndex, "_ranges", ranges)
        parse_request(RetrieveRequest.model_validate(body), bundle)  # what the route runs on the event loop
        assert dense_calls == [] and hashed == []  # only the column names are checked there (a set lookup)
        for route in ("/v1/retrieve", "/v1/retrieve/batch"):
            dense_calls.clear(), hashed.clear()
            r = c.post(route, json=body if route == "/v1/retrieve" else {"requests": [body]})
            assert r.status_code == 200, r.text
            res = r.json() if route == "/v1/retrieve" else r.json()["results"][0]
            assert res["items"] == [] and res["warnings"] == [  # the same text and order as ever
                "filters.allow_item_ids: 1 of 31 ids are not items of the served corpus and were ignored "
                "(first: 'nope'); check the ids",
                "filters.item_features.colour: no item has the value(s) ['blue']; check the spelling",
                "filters.item_features.shape: no item has the value(s) ['round']; check the spelling",
                "no item is both in filters.allow_item_ids and has the filters.item_features",
            ]
            assert [on_loop for ids, on_loop in dense_calls if ids == allow] == [False]
            assert hashed == [("colour", ["red", "blue"], False), ("shape", ["round"], False)]
