"""The hybrid user tower: offline state + online head, pseudo-context training, train/serve parity."""

import json

import numpy as np
import pytest
import torch
from conftest import small_run_config
from safetensors.torch import load_file

from twotower.data import SequenceData
from twotower.evaluate import evaluate_model
from twotower.evaluate.evaluator import encode_requests
from twotower.features import Featurizer, clock_features
from twotower.model import ModelConfig, TwoTower
from twotower.train.batches import WindowBatches, holdout_mask, plan_epoch
from twotower.train.load import load_run
from twotower.train.trainer import Trainer


def hybrid_config(state_tokens: int = 1, **train):
    cfg = small_run_config(**train)
    cfg.model.online_head = True
    cfg.model.state_tokens = state_tokens
    cfg.model.context_len = 4
    cfg.train.max_lag = 8
    return cfg


def test_clock_features_known_dates():
    # 2000-01-01 00:30 UTC was a Saturday; 2024-03-04 13:05 UTC a Monday.
    hour, weekday = clock_features(np.array([946686600, 1709557500]))
    assert hour.tolist() == [0, 13] and weekday.tolist() == [5, 0]


def test_online_head_needs_a_causal_encoder():
    with pytest.raises(ValueError, match="causal"):
        ModelConfig(online_head=True, causal=False)


@pytest.mark.parametrize("state_tokens", [1, 3])
def test_training_path_equals_serving_path(synth_data, tmp_path, state_tokens):
    """The state gathered from one causal pass over a training window == the offline encoder run on the
    history cut at the snapshot (what the refresh job stores), and the head gives the same user vector."""
    data = SequenceData.load(synth_data)
    tr = Trainer(data, hybrid_config(state_tokens, no_state_prob=0.3, subject_prob=0.5), tmp_path / "r")
    model = tr.model.eval()
    # windows that start at the user's first event, so the encoder saw the whole history before the snapshot
    first = tr.windows[:, 1] == data.user_offsets[tr.windows[:, 0]]
    batches = [b[first[b]] for b in plan_epoch(tr.lengths, 256, 0, 0)]
    batch = next(b for b in batches if len(b) >= 2)
    inputs, rows, pseudo = WindowBatches(tr.feat, tr.windows, [batch], tr.pseudo, epoch=0)[0]
    assert pseudo is not None and (pseudo.n_events == 0).any() and (pseudo.n_events > 0).any()
    with torch.no_grad():
        q_train, target = model.training_queries(inputs, rows, pseudo)
        w = tr.windows[batch][pseudo.batch.numpy()]
        user, snap = w[:, 0], w[:, 1] + pseudo.n_events.numpy()
        hist = tr.feat.histories_before(user, snap)
        state_serve = model.encode_state(hist)
        raw, _ = model.user_encoder(inputs, model.embed)
        state_train = model.user_encoder.states_at(raw, pseudo.batch, pseudo.n_events)
        assert torch.allclose(state_train, state_serve, atol=1e-5)
        no_state = pseudo.n_events == 0  # no-state targets carry zero rows, the store's "missing" marker
        assert (state_train[no_state] == 0).all() and (state_train[~no_state].abs().sum(-1) > 0).any()
        ctx = tr.feat.context(
            user, pseudo.snapshot_row, pseudo.target_row, pseudo.subject_row, strict_rows=pseudo.strict
        )
        assert (pseudo.subject_row >= 0).any() and torch.equal(ctx.events.length, pseudo.ctx_len)
        q_serve = model.encode_online(state_serve, ctx)  # everything re-featurized as a server would
    assert torch.allclose(q_train, q_serve, atol=1e-5)
    assert torch.allclose(q_train.norm(dim=-1), torch.ones(len(q_train)), atol=1e-5)
    assert len(target) == len(q_train)


def test_context_holds_only_events_since_the_snapshot(synth_data):
    data = SequenceData.load(synth_data)
    cfg = hybrid_config().model
    feat = Featurizer(data, cfg)
    u = np.array([0, 1, 2])
    start = data.user_offsets[u]
    target = start + np.array([9, 5, 1])
    snap = start + np.array([2, 5, 0])  # 7 events since (more than C = 4), none, one
    ctx = feat.context(u, snap, target)
    assert ctx.events.length.tolist() == [4, 0, 1]
    expect = feat.items(data.event_item[target[0] - 4 : target[0]].astype(np.int64)).item
    assert torch.equal(ctx.events.history.item[0, :4], expect)
    assert (ctx.events.history.item[1] == 0).all()
    assert (ctx.subject.item == 0).all()  # no subject asked for


def test_missing_state_takes_the_learned_no_state_vector(synth_data):
    data = SequenceData.load(synth_data)
    cfg = hybrid_config().model
    model, feat = TwoTower(cfg).eval(), Featurizer(data, cfg)
    u = np.array([0, 1])
    target = data.user_offsets[u] + 3
    ctx = feat.context(u, target, target)  # empty context
    ctx.hour[:], ctx.weekday[:], ctx.since_last[:], ctx.surface[:] = 0, 0, 0, 0
    with torch.no_grad():
        zero = torch.zeros(2, 1, cfg.dim)
        a = model.encode_online(zero, ctx)
        assert torch.allclose(a[0], a[1])  # nothing user-specific left: both users get the same vector
        model.head.no_state.add_(1.0)
        b = model.encode_online(zero, ctx)
        assert not torch.allclose(a, b)  # ... and it is the learned no-state vector
    with pytest.raises(ValueError, match="request context"):
        model.encode_user(feat.histories_before(u, target))


def test_hybrid_tower_learns_and_resumes_exactly(synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    cfg = hybrid_config(epochs=3, lr=3e-3, eval_users=0, checkpoint_every=4, holdout_users=0.1)
    tr = Trainer(data, cfg, tmp_path / "straight")
    held = holdout_mask(data.num_users, 0.1)
    assert held.any() and not held[tr.windows[:, 0]].any()  # held-out users never train
    before = evaluate_model(tr.model, tr.feat, "loo", "valid")
    tr.fit(progress=False)
    model, _, _ = load_run(tmp_path / "straight")
    after = evaluate_model(model, Featurizer(data, cfg.model), "loo", "valid")
    assert after["all/hr@10"] > before["all/hr@10"] + 0.05
    # kill mid-epoch, resume: the pseudo-contexts are drawn again exactly as before
    Trainer(data, cfg, tmp_path / "resumed").fit(stop_after_steps=6, progress=False)
    Trainer(data, cfg, tmp_path / "resumed", resume=True).fit(progress=False)
    a = load_file(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("head.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert saved["model"]["online_head"] is True


def test_stale_state_plus_context_beats_stale_state_alone(tmp_path):
    """On a log where the next item follows the last one (a walk around a cycle of 40 items), a state 6 events
    old cannot tell where the user is now; the events since the snapshot can, and the trained head uses them."""
    from twotower.data import PrepareConfig, prepare_files

    rng = np.random.default_rng(0)
    lines = ["user_id,item_id,timestamp"]
    for u in range(240):
        pos = rng.integers(40)
        for t in range(24):
            lines.append(f"u{u},i{(pos + t) % 40},{1_000_000 + 600 * t + u}")
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    prepare_files(tmp_path / "log.csv", tmp_path / "data", PrepareConfig())
    data = SequenceData.load(tmp_path / "data")
    cfg = hybrid_config(epochs=12, lr=5e-3, eval_every=0, max_lag=12, no_state_prob=0.0, subject_prob=0.0)
    Trainer(data, cfg, tmp_path / "r").fit(progress=False)
    model, _, _ = load_run(tmp_path / "r", which="last")
    feat = Featurizer(data, cfg.model)
    users, rows = data.eval_targets("loo", "test")
    snap = rows - 6  # a state 6 events old
    target = torch.from_numpy(data.event_item[rows].astype(np.int64))
    with torch.no_grad():
        items = model.encode_items(feat.items(np.arange(data.num_items)))

        def hr(q, k=3):
            return float(((q @ items.T).topk(k).indices == target[:, None]).any(1).float().mean())

        hybrid = hr(encode_requests(model, feat, users, rows, snap))
        hist, ctx = feat.request(users, rows, snap)
        ctx.events.length.zero_()  # the same stale state, the context hidden
        ctx.events.history.item.zero_()
        stale_only = hr(model.encode_user(hist, ctx))
    assert hybrid > 0.8 and hybrid > stale_only + 0.3


def test_head_on_a_sample_of_targets_equals_the_full_head_there(synth_data, tmp_path):
    """``head_fraction`` < 1: the head's queries are the full head's at the sampled positions (the other draws
    do not move), and the encoder's own queries cover every position; the joint loss trains."""
    data = SequenceData.load(synth_data)
    full = Trainer(data, hybrid_config(subject_prob=0.5), tmp_path / "full")
    part = Trainer(data, hybrid_config(subject_prob=0.5, head_fraction=0.3, encoder_loss_weight=1.0), tmp_path / "p")
    part.model.load_state_dict(full.model.state_dict())
    batch = plan_epoch(full.lengths, 256, 0, 0)[:1]
    inputs, rows, p_full = WindowBatches(full.feat, full.windows, batch, full.pseudo, epoch=0)[0]
    _, _, p_part = WindowBatches(part.feat, part.windows, batch, part.pseudo, epoch=0)[0]
    assert p_part.position is not None and 0.15 < len(p_part.target_row) / len(p_full.target_row) < 0.45
    with torch.no_grad():
        q_full, r_full = full.model.eval().training_queries(inputs, rows, p_full)
        (q_head, r_head), (q_enc, r_enc) = part.model.eval().hybrid_training_queries(inputs, rows, p_part)
    S = rows.shape[1]
    index = {(int(b), int(p)): i for i, (b, p) in enumerate(zip(*np.nonzero(rows.numpy() >= 0)))}
    keep = torch.tensor([index[(int(b), int(p))] for b, p in zip(p_part.batch, p_part.position)])
    assert torch.equal(r_head, r_full[keep]) and torch.equal(r_head, torch.from_numpy(p_part.target_row))
    torch.testing.assert_close(q_head, q_full[keep])
    assert torch.equal(r_enc, r_full) and q_enc.shape == q_full.shape and S > 1
    stats = part.step(inputs, rows, p_part)  # the joint loss: head + encoder
    assert np.isfinite(stats["loss"]) and stats["targets"] == len(r_full)
