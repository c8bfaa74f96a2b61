"""The refresh job: only stale users are encoded, a killed job resumes without redoing finished batches."""

import numpy as np
import pytest
import torch
from test_online import hybrid_config

from twotower.cli import main
from twotower.data import SequenceData
from twotower.errors import RefreshError
from twotower.features import Featurizer
from twotower.jobs.refresh import RefreshStopped, history_as_of, refresh_states
from twotower.store import open_store
from twotower.train.load import load_run as load_model
from twotower.train.trainer import Trainer


@pytest.fixture(scope="module")
def hybrid_run(synth_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("hybrid") / "run"
    Trainer(SequenceData.load(synth_data), hybrid_config(epochs=1, eval_every=0), run).fit(progress=False)
    return run


def test_history_as_of_matches_a_slow_reference(synth_data):
    data = SequenceData.load(synth_data)
    as_of = int(np.quantile(data.event_ts, 0.4))
    n, last = history_as_of(data, as_of)
    for u in range(data.num_users):
        ts = data.event_ts[data.user_offsets[u] : data.user_offsets[u + 1]]
        before = ts[ts < as_of]
        assert n[u] == len(before) and last[u] == (before[-1] if len(before) else -1)


def test_refresh_encodes_only_stale_users_and_stores_the_encoder_output(synth_data, hybrid_run, tmp_path):
    data = SequenceData.load(synth_data)
    url = f"sqlite:///{tmp_path}/s.db"
    t1, t2 = (int(np.quantile(data.event_ts, q)) for q in (0.5, 0.8))
    first = refresh_states(hybrid_run, url, as_of=t1, progress=False)
    n1, last1 = history_as_of(data, t1)
    assert first.encoded == first.stale == (n1 > 0).sum() > 0
    assert refresh_states(hybrid_run, url, as_of=t1, progress=False).encoded == 0  # nothing new: no work
    n2, last2 = history_as_of(data, t2)
    second = refresh_states(hybrid_run, url, as_of=t2, progress=False)
    assert second.encoded == ((n2 > 0) & (last2 > last1)).sum() < (n2 > 0).sum()
    # the stored state is exactly the offline encoder over the history before t2
    model, cfg, version = load_model(hybrid_run)
    u = np.flatnonzero(n2 > 0)[:7]
    with torch.no_grad():
        want = model.encode_state(Featurizer(data, cfg.model).histories_before(u, data.user_offsets[u] + n2[u]))
    with open_store(url) as st:
        got = st.get_many(list(data.user_ids().astype(str)[u]), version, (1, cfg.model.dim))
    assert got.found.all() and (got.last_event_ts == last2[u]).all()
    assert (got.snapshot_ts == np.where(last2[u] > last1[u], t2, t1)).all()  # untouched users keep their t1 state
    assert np.allclose(got.states, want.numpy(), atol=1e-6)


def test_killed_refresh_resumes_without_redoing_batches(synth_data, hybrid_run, tmp_path):
    data = SequenceData.load(synth_data)
    as_of = int(np.quantile(data.event_ts, 0.7))
    straight = refresh_states(hybrid_run, f"sqlite:///{tmp_path}/a.db", as_of=as_of, batch=32, progress=False)
    assert straight.batches > 3
    with pytest.raises(RefreshStopped):
        refresh_states(
            hybrid_run, f"sqlite:///{tmp_path}/b.db", as_of=as_of, batch=32, progress=False, stop_after_batches=2
        )
    resumed = refresh_states(hybrid_run, f"sqlite:///{tmp_path}/b.db", as_of=as_of, batch=32, progress=False)
    assert resumed.encoded == straight.encoded - 2 * 32  # the two finished batches are not redone
    ids = list(data.user_ids().astype(str))
    version = straight.model_version
    with open_store(f"sqlite:///{tmp_path}/a.db") as a, open_store(f"sqlite:///{tmp_path}/b.db") as b:
        sa, sb = a.get_many(ids, version, (1, 16)), b.get_many(ids, version, (1, 16))
    assert (sa.found == sb.found).all() and sa.found.sum() == straight.encoded
    assert np.array_equal(sa.states, sb.states)


def test_refresh_cli_and_an_unsplit_model_caches_its_user_vectors(synth_data, hybrid_run, tmp_path, capsys):
    assert (
        main(["refresh-states", "--run", str(hybrid_run), "--store", f"sqlite:///{tmp_path}/c.db", "--no-progress"])
        == 0
    )
    assert "encoded" in capsys.readouterr().out
    from conftest import small_run_config

    run = tmp_path / "unsplit"
    Trainer(SequenceData.load(synth_data), small_run_config(epochs=1, eval_every=0), run).fit(progress=False)
    assert main(["refresh-states", "--run", str(run), "--store", f"sqlite:///{tmp_path}/d.db", "--no-progress"]) == 0
    model, run_cfg, version = load_model(run)
    cfg = run_cfg.model
    assert cfg.cached_state_shape == (1, cfg.dim)
    data = SequenceData.load(synth_data)
    ids = list(data.user_ids().astype(str)[:5])
    with open_store(f"sqlite:///{tmp_path}/d.db") as st:
        got = st.get_many(ids, version, (1, cfg.dim))
    assert got.found.all()
    with torch.no_grad():  # the cached state is the user vector after the whole history
        want = model.encode_user(Featurizer(data, cfg).histories_before(np.arange(5), data.user_offsets[1:6]))
    np.testing.assert_allclose(got.states[:, 0], want.numpy(), atol=1e-6)


@pytest.mark.parametrize("batch", [0, -5, 2.5])
def test_refresh_refuses_a_batch_below_one(tmp_path, capsys, batch):
    # checked before anything is loaded or encoded: no run is needed to get the error
    with pytest.raises(
        RefreshError, match=rf"batch must be a whole number of users >= 1 \(e\.g\. --batch 512\), got {batch}"
    ):
        refresh_states(tmp_path / "run", f"sqlite:///{tmp_path}/s.db", batch=batch, progress=False)
    if isinstance(batch, int):  # `--batch 0` was a ValueError traceback, `--batch -5` "encoded 0 in 0 batches", exit 0
        args = ["refresh-states", "--run", str(tmp_path / "run"), "--store", f"sqlite:///{tmp_path}/s.db"]
        assert main([*args, "--batch", str(batch)]) == 2
        assert f"error: --batch must be >= 1 users per encoder batch, got {batch}" in capsys.readouterr().err
        assert not (tmp_path / "s.db").exists()  # refused before the store was opened (and created)
