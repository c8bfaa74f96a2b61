"""The pure-ASGI ``/v1/retrieve`` path answers exactly as the FastAPI route does, for good and bad requests."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from test_serve_support import settings, shared_artifacts

from twotower.data import SequenceData
from twotower.serve import fastpath
from twotower.serve.app import create_app

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


def corpus(art) -> list[tuple[bytes, dict]]:
    """(body, headers) pairs: valid requests of every shape, then malformed and invalid ones."""
    data = SequenceData.load(art.data)
    users, items = data.user_ids().astype(str), data.item_ids().astype(str)
    act = data.manifest["actions"][0]
    t = int(data.event_ts.max()) + 100
    ev = [{"item_id": items[i], "actions": [act], "timestamp": t - 50 + i} for i in range(3)]
    good = [
        {"user_id": users[0]},
        {"user_id": users[1], "k": 7, "context": {"recent_events": ev, "timestamp": t, "surface": "nowhere"}},
        {"user_id": "never-seen", "k": 3, "context": {"recent_events": ev[:1] + [
            {"item_id": "brand-new-item", "actions": [], "timestamp": t - 1}], "timestamp": t}},
        {"user_id": users[2], "k": 5, "exclude_item_ids": list(items[:10]), "context": {"timestamp": t}},
        {"user_id": users[3], "k": 4, "filters": {"allow_item_ids": list(items[5:40])}, "context": {"timestamp": t}},
        {"user_id": users[4], "k": 2, "context": {"timestamp": t, "subject_item_id": items[9]}},
    ]  # fmt: skip
    out = [(json.dumps(b).encode(), JSON) for b in good]
    out.append((json.dumps(good[1]).encode(), {"content-type": "application/json; charset=utf-8"}))
    bad = [
        b"{not json",
        b"",
        b"[]",
        b'{"user_id": "1", "k": 0}',
        b'{"user_id": "1", "k": 1000000000}',
        b'{"user_id": "1", "k": "5"}',
        b'{"user_id": "1", "surprise": true}',
        b'{"user_id": "1", "context": {"timestamp": NaN}}',
        b'{"user_id": "1", "context": {"timestamp": 1e400}}',
        b'{"user_id": ""}',
        json.dumps({"user_id": "1", "context": {"recent_events": [
            {"item_id": "x", "actions": ["no-such-action"], "timestamp": t}]}}).encode(),
    ]  # fmt: skip
    out += [(b, JSON) for b in bad]
    out += [(json.dumps(good[0]).encode(), {"content-type": "text/plain"}), (json.dumps(good[0]).encode(), {})]
    return out


def _answers(art, fast: bool, reqs) -> list[tuple[int, dict | str]]:
    out = []
    with TestClient(create_app(settings(art.root, fast_path=fast))) as c:
        for body, headers in reqs:
            r = c.post("/v1/retrieve", content=body, headers=headers)
            try:
                doc = r.json()
                doc.pop("took_ms", None)
            except ValueError:
                doc = r.text
            out.append((r.status_code, doc))
    return out


def test_fast_path_answers_like_the_route(art, monkeypatch):
    reqs = corpus(art)
    served = []
    real = fastpath.parse_request
    monkeypatch.setattr(fastpath, "parse_request", lambda *a: served.append(1) or real(*a))
    fast = _answers(art, True, reqs)
    n_fast = len(served)
    slow = _answers(art, False, reqs)
    assert len(served) == n_fast  # the route never went through the fast path
    for (body, _), f, s in zip(reqs, fast, slow):
        assert f == s, body
    statuses = [s for s, _ in fast]
    assert statuses[:7] == [200] * 7 and all(400 <= s < 500 for s in statuses[7:]), statuses
    assert n_fast >= 7  # the valid JSON requests were answered by the fast path (the invalid ones replayed)
    assert [len(doc["items"]) for _, doc in fast[1:6]] == [7, 3, 5, 4, 2]
