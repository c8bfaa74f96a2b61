"""Bad input never crashes the service: each gets a 4xx that says what to change; schemathesis finds no 5xx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings
from schemathesis import GenerationMode
from test_serve_support import TOKEN, settings, shared_artifacts

from twotower.serve import ServeSettings
from twotower.serve.app import create_app


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


@pytest.fixture(scope="module")
def client(art):
    with TestClient(create_app(settings(art.root, max_body_bytes=64 * 1024)), raise_server_exceptions=False) as c:
        yield c


OK_EVENT = {"item_id": "i1", "actions": ["click"], "timestamp": 1000}
BAD = [  # (name, raw body, substring the error must contain)
    ("malformed json", b'{"user_id": "u1", ', "json"),
    ("not an object", b"[1, 2, 3]", "body"),
    ("missing user", {"k": 5}, "body.user_id"),
    ("empty user id", {"user_id": ""}, "body.user_id"),
    ("unknown field", {"user_id": "u1", "top_k": 5}, "body.top_k"),
    ("unknown context field", {"user_id": "u1", "context": {"device": "ios"}}, "body.context.device"),
    ("k zero", {"user_id": "u1", "k": 0}, "greater than or equal to 1"),
    ("k too large", {"user_id": "u1", "k": 1001}, "less than or equal to 1000"),
    ("k as string", {"user_id": "u1", "k": "5"}, "body.k"),
    ("k float", {"user_id": "u1", "k": 5.5}, "body.k"),
    ("NaN timestamp", b'{"user_id": "u1", "context": {"timestamp": NaN}}', "body.context.timestamp"),
    ("inf timestamp", b'{"user_id": "u1", "context": {"timestamp": Infinity}}', "body.context.timestamp"),
    ("negative timestamp", {"user_id": "u1", "context": {"timestamp": -5}}, "greater than or equal to 0"),
    ("milliseconds", {"user_id": "u1", "context": {"timestamp": 1_700_000_000_000_000}}, "less than"),
    (
        "unknown action",
        {"user_id": "u1", "context": {"recent_events": [{**OK_EVENT, "actions": ["buy"]}]}},
        "unknown action 'buy'; use names from ['click', 'like']",
    ),  # fmt: skip
    ("event without time", {"user_id": "u1", "context": {"recent_events": [{"item_id": "i1"}]}}, "timestamp"),
    ("empty item id", {"user_id": "u1", "exclude_item_ids": [""]}, "body.exclude_item_ids.0"),
    ("too many events", {"user_id": "u1", "context": {"recent_events": [OK_EVENT] * 1001}}, "at most 1000"),
    ("null user", {"user_id": None}, "body.user_id"),
]


@pytest.mark.parametrize("name,body,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_that_says_what_to_change(client, name, body, message):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/retrieve", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert message.lower() in r.json()["error"].lower() or message.lower() in json.dumps(r.json()).lower()


GOOD = [
    ("empty context", {"user_id": "u1", "context": {}}),
    ("unknown user", {"user_id": "someone-new"}),
    ("unknown items", {"user_id": "u1", "context": {"recent_events": [{**OK_EVENT, "item_id": "brand-new"}],
                                                     "subject_item_id": "also-new"}, "exclude_item_ids": ["nope"]}),
    ("unknown surface", {"user_id": "u1", "context": {"surface": "smartwatch"}}),
    ("allow list", {"user_id": "u1", "filters": {"allow_item_ids": ["i1", "i2", "unknown"]}, "k": 5}),
    ("allow list of unknown ids", {"user_id": "u1", "filters": {"allow_item_ids": ["unknown"]}}),
    ("k above corpus size", {"user_id": "u1", "k": 1000}),
]  # fmt: skip


@pytest.mark.parametrize("name,body", GOOD, ids=[g[0] for g in GOOD])
def test_odd_but_valid_input_is_served(client, name, body):
    r = client.post("/v1/retrieve", json=body)
    assert r.status_code == 200, r.text
    items = [x["item_id"] for x in r.json()["items"]]
    assert len(items) == len(set(items))
    if "allow_item_ids" in body.get("filters", {}):
        assert set(items) <= set(body["filters"]["allow_item_ids"])
    if name == "unknown user":
        assert r.json()["path"] == "cold_start"
    if name == "allow list":  # an unknown id is ignored, and said so
        assert r.json()["warnings"] == [
            "filters.allow_item_ids: 1 of 3 ids are not items of the served corpus and were ignored (first: "
            "'unknown'); check the ids"
        ]
    if name == "allow list of unknown ids":  # an empty answer explained
        assert (
            items == []
            and r.json()["warnings"][-1] == "no id of filters.allow_item_ids is an item of the served corpus"
        )
    if name in ("empty context", "unknown user"):
        assert "warnings" not in r.json()  # only when something matched nothing
    if name == "k above corpus size":
        assert len(items) == 200 - 0  # the whole synthetic corpus, nothing padded


@pytest.mark.parametrize("route", ["/v1/retrieve", "/v1/retrieve/batch"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_body_without_a_json_content_type_is_a_415(client, route, content_type):
    body = b'{"requests": [{"user_id": "u1"}]}' if route.endswith("batch") else b'{"user_id": "u1"}'
    r = client.post(route, content=body, headers={"content-type": content_type} if content_type else {})
    assert r.status_code == 415, r.text
    got = f"got {content_type!r}" if content_type else "the request has none"
    assert r.json()["error"] == f"send the body as JSON with the header Content-Type: application/json ({got})"


def test_malformed_json_says_where(client):
    r = client.post(
        "/v1/retrieve", content=b'{"user_id": "u1",\n  "k": }', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"] == (
        "the body is not valid JSON: Expecting value at line 2 column 8 (character 25); send one JSON object"
    )


def test_body_size_limit(client):
    big = {"user_id": "u1", "exclude_item_ids": ["x" * 200] * 400}  # ~80 KB > 64 KiB
    r = client.post("/v1/retrieve", json=big)
    assert r.status_code == 413 and "TWOTOWER_MAX_BODY_BYTES" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"user_id": "u1", "exclude_item_ids": ['
        for _ in range(2000):
            yield b'"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",'
        yield b'"y"]}'

    r = client.post("/v1/retrieve", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/healthz").json() == {"status": "alive"}


def test_batch_limits_and_errors_name_the_entry(client):
    r = client.post("/v1/retrieve/batch", json={"requests": []})
    assert r.status_code == 422 and "body.requests" in r.json()["error"]
    bad = {"user_id": "u1", "context": {"recent_events": [{**OK_EVENT, "actions": ["nope"]}]}}
    r = client.post("/v1/retrieve/batch", json={"requests": [{"user_id": "u1"}, bad]})
    assert r.status_code == 422 and r.json()["error"].startswith("requests[1].context.recent_events[0]")


def test_unknown_routes_and_methods_are_4xx(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/retrieve").status_code == 405
    assert client.post("/admin/reload", headers={"Authorization": "Basic abc"}).status_code == 401


# The schema does not depend on the artifacts, so it can be loaded at import time without them.
schema = schemathesis.openapi.from_dict(create_app(ServeSettings(artifacts=Path("."), admin_token=TOKEN)).openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=30,
                                deterministic=True)  # fmt: skip


@schema.parametrize()
@hyp_settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
def test_schemathesis_finds_no_server_error(case, client):
    if case.path == "/admin/reload" and case.headers and "Authorization" in case.headers:
        case.headers["Authorization"] = "Bearer not-the-token-0000000000"  # never reload for real here
    r = client.request(**case.as_transport_kwargs(base_url="http://testserver"))
    assert r.status_code < 500, f"{case.method} {case.path} -> {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        assert "error" in r.json()
