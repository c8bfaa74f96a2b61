"""Starting over a corrupt published index, and reload outcomes every worker process reports (#17.6, #17.7)."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from test_serve import metric
from test_serve_support import TOKEN, settings, shared_artifacts

from twotower.errors import ArtifactError
from twotower.index import IndexConfig
from twotower.index.publish import build_and_publish, current_version, rollback
from twotower.serve.app import create_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


def publish_corrupt(root) -> str:
    """Publish a new exact index over the root's embeddings and truncate its vectors: CURRENT names a corrupt
    version."""
    emb = next((root / "embeddings").iterdir())
    bad = build_and_publish(emb, root / "index", IndexConfig(backend="exact"), recall_floor=0.0)["version"]
    vec = root / "index" / "versions" / bad / "vectors.npy"
    vec.write_bytes(vec.read_bytes()[:100])
    return bad


def test_start_over_a_corrupt_current_serves_the_newest_good_version(art, tmp_path, caplog):
    root = art.copy_root(tmp_path / "root")
    good = current_version(root / "index")
    bad = publish_corrupt(root)
    caplog.set_level(logging.WARNING, logger="twotower.serve")
    with TestClient(create_app(settings(root, reload_poll_s=0))) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["index_version"] == good
        fallback = ready.json()["index_fallback"]
        assert fallback["wanted"] == bad and fallback["serving"] == good and "corrupt" in fallback["error"]
        assert c.post("/v1/retrieve", json={"user_id": "u3", "k": 5}).json()["index_version"] == good
        assert metric(c, "twotower_index_fallbacks_total") == 1
        warned = [r for r in caplog.records if r.levelno == logging.WARNING and bad in r.getMessage()]
        assert warned and good in warned[0].getMessage() and "rollback" in warned[0].getMessage()
        # fixed by a rollback and a reload: CURRENT's version serves and the fallback is over
        rollback(root / "index", good)
        assert c.post("/admin/reload", headers=AUTH).status_code == 200
        assert c.get("/readyz").json()["index_fallback"] is None


def test_start_without_any_loadable_version_names_the_fix(art, tmp_path):
    root = art.copy_root(tmp_path / "root")
    only = current_version(root / "index")
    vec = root / "index" / "versions" / only / "vectors.npy"
    vec.write_bytes(vec.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="twotower index rollback") as err:
        with TestClient(create_app(settings(root, reload_poll_s=0))):
            pass
    assert only in str(err.value) and "serve-prepare" in str(err.value)


def test_a_refused_reload_shows_on_every_worker(art, tmp_path):
    """Two services over one root stand in for two uvicorn workers: the outcome of a reload sent to one is what
    both report in /readyz."""
    root = art.copy_root(tmp_path / "root")
    good = current_version(root / "index")
    with TestClient(create_app(settings(root, reload_poll_s=0))) as a, \
         TestClient(create_app(settings(root, reload_poll_s=0))) as b:  # fmt: skip
        assert a.get("/readyz").json()["last_reload"] is None  # nothing reloaded in this run
        bad = publish_corrupt(root)
        assert a.post("/admin/reload", headers=AUTH).status_code == 409
        for c in (a, b):
            ready = c.get("/readyz").json()
            assert "corrupt" in ready["last_reload_error"], ready
            assert ready["last_reload"]["result"] == "error" and ready["last_reload"]["index_version"] == good
        assert bad not in (a.get("/readyz").json()["index_version"], b.get("/readyz").json()["index_version"])
        rollback(root / "index", good)
        assert b.post("/admin/reload", headers=AUTH).status_code == 200
        for c in (a, b):
            ready = c.get("/readyz").json()
            assert ready["last_reload_error"] is None and ready["last_reload"]["result"] == "ok", ready
