"""The ranker: candidate isolation (a candidate's score ignores the other candidates) and order independence."""

import numpy as np
import torch
from conftest import small_run_config

from twotower.data import SequenceData
from twotower.features import Featurizer
from twotower.model.ranker import Ranker, isolation_mask


def _setup(synth_data):
    data = SequenceData.load(synth_data)
    mc = small_run_config().model
    mc.num_actions, mc.num_surfaces, mc.dropout = data.num_actions, data.num_surfaces, 0.0
    torch.manual_seed(0)
    return data, Featurizer(data, mc), Ranker(mc).eval()


def _candidates(feat, ids: torch.Tensor):
    items = feat.items(ids.reshape(-1).numpy())
    return type(items)(*(t.view(*ids.shape, -1) for t in (items.item, items.author, items.feat)))


def test_inference_in_two_parts_equals_the_masked_forward(synth_data):
    """Eval mode runs the history alone and the candidates against it (no K x K block): the same logits as
    the masked attention over S + K tokens that training runs (dropout 0 here), short and empty histories
    included."""
    data, feat, ranker = _setup(synth_data)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking head, not the zero-initialised one
        for p in ranker.head.parameters():
            p.normal_(0, 0.5)
    u = feat.users(np.array([0, 3, 5]), np.array([0, 40, 60]), np.array([12, 47, 60]))  # 12, 7 and 0 events
    assert u.length.tolist()[2] == 0
    cands = _candidates(feat, torch.randint(1, data.num_items, (3, 9)))
    with torch.no_grad():
        split = ranker.eval()(u, cands)
        masked = ranker.train()(u, cands)  # dropout is 0: the reference path, deterministic
    ranker.eval()
    torch.testing.assert_close(split, masked, rtol=1e-5, atol=1e-5)
    assert split.std() > 0.01  # the candidates are told apart


def test_a_candidates_score_ignores_the_other_candidates_and_their_order(synth_data):
    data, feat, ranker = _setup(synth_data)
    u = feat.users(np.array([0, 3]), np.array([0, 40]), np.array([12, 47]))  # histories of 12 and 7 events
    a = torch.tensor([[5, 9, 17, 30], [2, 9, 44, 61]])
    b = torch.tensor([[5, 100, 150, 30], [101, 9, 102, 103]])  # some candidates replaced

    def score(ids):
        items = feat.items(ids.reshape(-1).numpy())
        cands = type(items)(*(t.view(*ids.shape, -1) for t in (items.item, items.author, items.feat)))
        with torch.no_grad():
            return ranker(u, cands)

    sa, sb = score(a), score(b)
    torch.testing.assert_close(sa[0, [0, 3]], sb[0, [0, 3]])  # 5 and 30 kept their places
    torch.testing.assert_close(sa[1, 1], sb[1, 1])  # 9 too
    perm = torch.tensor([3, 1, 0, 2])
    torch.testing.assert_close(score(a[:, perm]), sa[:, perm])  # order in = order out
    more = torch.cat([a, torch.tensor([[70, 71], [72, 73]])], 1)
    torch.testing.assert_close(score(more)[:, :4], sa)  # K does not matter either
    assert not torch.allclose(sa[0], sa[1])  # and the history does


def test_the_retriever_prior_keeps_isolation_and_an_untrained_head_keeps_retrievals_order(synth_data):
    data, feat, _ = _setup(synth_data)
    torch.manual_seed(0)
    ranker = Ranker(feat.cfg, prior_scale=10.0).eval()
    u = feat.users(np.array([0, 3]), np.array([0, 40]), np.array([12, 47]))
    ids = torch.tensor([[5, 9, 17, 30], [2, 9, 44, 61]])
    items = feat.items(ids.reshape(-1).numpy())
    cands = type(items)(*(t.view(*ids.shape, -1) for t in (items.item, items.author, items.feat)))
    prior = torch.tensor([[0.3, -0.2, 0.9, 0.1], [0.0, 0.5, -0.4, 0.2]])
    with torch.no_grad():
        out = ranker(u, cands, prior)
        torch.testing.assert_close(out, 10.0 * prior)  # zero-initialised correction: exactly retrieval's order
        with torch.no_grad():
            ranker.head[-1].bias.fill_(0.1)
            ranker.head[-1].weight.normal_()
        a = ranker(u, cands, prior)
        changed = prior.clone()
        changed[:, 2] = 5.0  # another candidate's retrieval score changes nothing for the rest
        torch.testing.assert_close(ranker(u, cands, changed)[:, [0, 1, 3]], a[:, [0, 1, 3]])
    import pytest

    with pytest.raises(ValueError, match="needs the retriever"):
        ranker(u, cands)


def test_the_isolation_mask():
    m = isolation_mask(torch.tensor([2]), S=3, K=2)[0]
    expect = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 1, 0, 1, 0],  # candidate 0: the 2 real history tokens and itself
            [1, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, expect)


def test_a_ranker_trains_on_its_retrievers_candidates_and_refuses_another_retriever(synth_data, tmp_path):
    import pytest

    from twotower.errors import ArtifactError
    from twotower.jobs.mine import mine_negatives
    from twotower.train.hard_negatives import MineConfig
    from twotower.train.load import load_run
    from twotower.train.ranker import RankerConfig, load_ranker, rerank_metrics, train_ranker
    from twotower.train.trainer import Trainer

    data = SequenceData.load(synth_data)
    for name, seed in (("r1", 0), ("r2", 1)):
        Trainer(data, small_run_config(epochs=1, seed=seed), tmp_path / name).fit(progress=False)
    mine_negatives(tmp_path / "r1", tmp_path / "m1", MineConfig(rank_from=1, rank_to=30, count=6), data, progress=False)
    s = train_ranker(tmp_path / "r1", tmp_path / "m1", tmp_path / "rank", RankerConfig(steps=15, batch=32), data, False)
    _, _, v1 = load_run(tmp_path / "r1")
    _, _, v2 = load_run(tmp_path / "r2")
    assert s["retriever_version"] == v1 and s["candidates"] == 1 + 6 + 4 and s["step"] == 15
    # warm start: the retriever's encoder blocks and token projections, its first positions
    from dataclasses import replace

    from twotower.train.ranker import warm_start

    retriever, rc, _ = load_run(tmp_path / "r1")
    fresh = Ranker(replace(rc.model, max_len=5, online_head=False, user_token=False))
    warm_start(fresh, retriever)
    enc = retriever.user_encoder
    for key, value in enc.blocks[0].state_dict().items():
        assert torch.equal(fresh.blocks[0].state_dict()[key], value), key
    assert torch.equal(fresh.tokens.hist_proj.weight, enc.hist_proj.weight)
    if enc.pos_emb is not None:
        assert torch.equal(fresh.tokens.pos_emb.weight, enc.pos_emb.weight[:6])
    ranker, config, version = load_ranker(tmp_path / "rank", expect_retriever=v1)
    assert version == s["ranker_version"] and config["retriever_version"] == v1
    with pytest.raises(ArtifactError, match="trained against retriever"):
        load_ranker(tmp_path / "rank", expect_retriever=v2)
    with pytest.raises(ArtifactError, match="mined with model"):
        train_ranker(tmp_path / "r2", tmp_path / "m1", tmp_path / "rank2", RankerConfig(steps=1), data, False)
    m = rerank_metrics(tmp_path / "r1", tmp_path / "rank", "valid", shortlist=50, data=data)
    # re-ranking only reorders the shortlist: what is inside the top 50 (and every rank beyond) is unchanged
    for k in ("hr@50", "hr@100", "hr@200"):
        assert m["rerank"][k] == m["retrieval"][k], k
    assert m["rerank"]["hr@10"] != m["retrieval"]["hr@10"] or m["rerank"]["mrr"] != m["retrieval"]["mrr"]
    # several shortlists from one pass over the longest equal one call each (isolation: scores of a prefix)
    both = rerank_metrics(tmp_path / "r1", tmp_path / "rank", "valid", shortlist=(10, 50, 10_000), data=data)
    # a shortlist of every item holds the seen ones too: a seen target stays a miss, as in retrieval
    assert both["rerank"][10_000]["hr@200"] == both["retrieval"]["hr@200"]
    ten = rerank_metrics(tmp_path / "r1", tmp_path / "rank", "valid", shortlist=10, data=data)
    assert both["retrieval"] == m["retrieval"]
    for key, want in ((50, m["rerank"]), (10, ten["rerank"])):
        for metric_name, value in want.items():
            assert abs(both["rerank"][key][metric_name] - value) < 1e-9, (key, metric_name)


def test_a_killed_ranker_training_resumes_to_the_uninterrupted_weights(synth_data, tmp_path, monkeypatch):
    import pytest

    import twotower.train.ranker as tr
    from twotower.errors import ArtifactError
    from twotower.jobs.mine import mine_negatives
    from twotower.train.hard_negatives import MineConfig
    from twotower.train.trainer import Trainer

    data = SequenceData.load(synth_data)
    Trainer(data, small_run_config(epochs=1), tmp_path / "r").fit(progress=False)
    mine_negatives(tmp_path / "r", tmp_path / "m", MineConfig(rank_from=1, rank_to=30, count=6), data, progress=False)
    cfg = tr.RankerConfig(steps=10, batch=16, save_every=3)
    whole = tr.train_ranker(tmp_path / "r", tmp_path / "m", tmp_path / "whole", cfg, data, False)
    assert not (tmp_path / "whole" / "resume").exists()  # removed once the ranker is written

    save = tr._save_resume

    def killed_after_step_6(path, ranker, opt, rng, config, state):
        save(path, ranker, opt, rng, config, state)
        if state["step"] == 6:
            raise KeyboardInterrupt  # the process dies here: steps 7.. are lost

    monkeypatch.setattr(tr, "_save_resume", killed_after_step_6)
    with pytest.raises(KeyboardInterrupt):
        tr.train_ranker(tmp_path / "r", tmp_path / "m", tmp_path / "cut", cfg, data, False)
    assert not (tmp_path / "cut" / "checkpoint").exists() and (tmp_path / "cut" / "resume").is_dir()
    monkeypatch.setattr(tr, "_save_resume", save)
    # other training settings do not resume it: the error names them and the way out
    with pytest.raises(ArtifactError, match=r"ranker\.lr.*--fresh"):
        tr.train_ranker(tmp_path / "r", tmp_path / "m", tmp_path / "cut", tr.RankerConfig(steps=10, batch=16, lr=0.1),
                        data, False)  # fmt: skip
    resumed = tr.train_ranker(tmp_path / "r", tmp_path / "m", tmp_path / "cut", cfg, data, False)
    assert resumed["step"] == 10 and resumed["ranker_version"] == whole["ranker_version"]  # same weights, bit for bit
    a = tr.load_ranker(tmp_path / "whole")[0].state_dict()
    b = tr.load_ranker(tmp_path / "cut")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # afresh: the interrupted state is dropped, and training starts from step 1
    monkeypatch.setattr(tr, "_save_resume", killed_after_step_6)
    with pytest.raises(KeyboardInterrupt):
        tr.train_ranker(tmp_path / "r", tmp_path / "m", tmp_path / "again", cfg, data, False)
    monkeypatch.setattr(tr, "_save_resume", save)
    short = tr.RankerConfig(steps=4, batch=16, save_every=3)
    fresh = tr.train_ranker(tmp_path / "r", tmp_path / "m", tmp_path / "again", short, data, False, resume=False)
    assert fresh["step"] == 4
