"""A Matryoshka run served through an adaptive index (prefix HNSW + full-width re-scoring): the service's
answer is the offline adaptive search of the same user vector, and the index is published, listed and
rolled back like any other."""

import numpy as np
import torch
from conftest import small_run_config
from fastapi.testclient import TestClient
from test_serve import dataset_request, snapshot_rows
from test_serve_support import settings

from twotower.cli import main
from twotower.data import SequenceData
from twotower.features import Featurizer
from twotower.index import IndexConfig
from twotower.index.adaptive import AdaptiveIndex, open_index
from twotower.index.publish import current_path
from twotower.jobs.serving import build_artifacts
from twotower.serve.app import create_app
from twotower.train.trainer import Trainer


def test_an_adaptive_index_serves_what_it_searches_offline(synth_data, tmp_path, capsys):
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=1, eval_users=0, matryoshka_dims=[8])
    cfg.model.user_token = False
    Trainer(data, cfg, tmp_path / "run").fit(progress=False)
    as_of = int(np.median(data.event_ts))
    config = IndexConfig(backend="hnsw", prefix_dim=8, shortlist=3, hnsw_ef_search=400)  # ef >= 3 x 100
    res = build_artifacts(tmp_path / "run", tmp_path / "root", index_config=config, recall_floor=0.5, as_of=as_of)
    assert res["index_version"].endswith("-hnsw-p8")
    offline = open_index(current_path(tmp_path / "root" / "index"))
    assert isinstance(offline, AdaptiveIndex) and offline.prefix_dim == 8 and offline.dim == 16
    users, targets = data.eval_targets("loo", "test")
    snaps = snapshot_rows(data, users, as_of)
    pick = (snaps > data.user_offsets[users]) & (targets > snaps)
    with TestClient(create_app(settings(tmp_path / "root"))) as c:
        bundle = c.app.state.service.retriever.bundle
        assert isinstance(bundle.index, AdaptiveIndex)
        assert "shortlist" in c.get("/openapi.json").json()["components"]["schemas"]["RetrieveRequest"]["properties"]
        feat = Featurizer(data, bundle.model_config)
        item_ids = data.item_ids().astype(str)
        for u, s, t in list(zip(users[pick], snaps[pick], targets[pick]))[:6]:
            with torch.no_grad():
                q = bundle.model.encode_user(feat.histories_before(np.array([u]), np.array([s]))).numpy()
            seen = np.unique(data.event_item[s:t].astype(np.int64))
            want_s, want_i = offline.search(q, 10, exclude=[seen])
            got = c.post("/v1/retrieve", json=dataset_request(data, u, s, t)).json()
            assert got["path"] == "cached"
            assert [x["item_id"] for x in got["items"]] == list(item_ids[want_i[0]])
            np.testing.assert_allclose([x["score"] for x in got["items"]], want_s[0], atol=1e-5)
            for shortlist in (1, 20):  # a request's own shortlist: the offline search with that shortlist
                body = {**dataset_request(data, u, s, t), "shortlist": shortlist}
                got = c.post("/v1/retrieve", json=body).json()
                want_s, want_i = offline.search(q, 10, exclude=[seen], shortlist=shortlist)
                assert [x["item_id"] for x in got["items"]] == list(item_ids[want_i[0]]), shortlist
    assert main(["index", "list", "--root", str(tmp_path / "root" / "index")]) == 0
    assert "prefix 8/16" in capsys.readouterr().out
