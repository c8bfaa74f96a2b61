"""Explicit negative feedback: which events are negatives, the per-target lookup against a loop, and the
synthetic log built to need it (families of near-duplicates) where using it beats treating dislikes as
positives by a wide margin."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import small_run_config

from twotower.data import LogSchema, SequenceData
from twotower.data.config import PrepareConfig
from twotower.data.prepare import prepare_files
from twotower.data.synth import generate
from twotower.errors import ConfigError
from twotower.evaluate import evaluate_model
from twotower.features import Featurizer
from twotower.layout import SPLIT_TRAIN
from twotower.train.feedback import FeedbackNegatives, negative_events
from twotower.train.load import load_run
from twotower.train.task import targets_of
from twotower.train.trainer import Trainer


@pytest.fixture(scope="module")
def family_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    generate(
        300, 200, 8000, root / "log.parquet", seed=1, topics=10, topic_affinity=0.9, progress=False,
        family_size=4, dislike_prob=0.3,
    )  # fmt: skip
    cfg = PrepareConfig(log=LogSchema(actions=["click", "like", "dislike"], surface="surface"))
    prepare_files(root / "log.parquet", root / "data", cfg)
    return root


def test_the_family_log_has_one_member_per_user_and_disliked_siblings(family_data):
    t = pq.read_table(family_data / "log.parquet").to_pandas()
    t["item"] = t.item_id.str[1:].astype(int)
    t["family"], t["member"] = t.item // 4, t.item % 4
    engaged, disliked = t[t.dislike == 0], t[t.dislike == 1]
    assert 0.2 < len(disliked) / len(t) < 0.3
    assert (engaged.groupby("user_id").member.nunique() == 1).all()  # one style per user
    style = engaged.groupby("user_id").member.first()
    assert (disliked.member.values != style.loc[disliked.user_id].values).all()  # always a sibling
    last_two = t.sort_values("timestamp").groupby("user_id").tail(2)
    assert (last_two.dislike == 0).all() and (disliked.like == 0).all()


def test_feedback_lookup_matches_a_loop(family_data):
    data = SequenceData.load(family_data / "data")
    neg = negative_events(data, ["dislike"])
    assert neg.mean() > 0.2
    with pytest.raises(ConfigError, match="click"):  # names the dataset's actions
        negative_events(data, ["skipped"])
    window, count = 6, 3
    fb = FeedbackNegatives(data, "loo", ["dislike"], window, count)
    train = data.split("loo") == SPLIT_TRAIN
    user = data.user_of_event()
    rows = np.flatnonzero(train)[::7]
    got, prob = fb.lookup(torch.from_numpy(rows))
    assert torch.equal(prob, torch.ones_like(prob))
    for r, g in zip(rows, got.tolist()):
        near = [
            e for e in range(r - window, r + window + 1)
            if 0 <= e < data.num_events and e != r and user[e] == user[r] and neg[e] and train[e]
        ]  # fmt: skip
        near.sort(key=lambda e: (abs(e - r), e))
        want = [int(data.event_item[e]) for e in near[:count]]
        assert g == want + [-1] * (count - len(want)), r


def test_explicit_negatives_are_no_positives_unless_asked(family_data):
    data = SequenceData.load(family_data / "data")
    neg = negative_events(data, ["dislike"])
    rows = torch.from_numpy(np.flatnonzero(data.split("loo") == SPLIT_TRAIN)[:200])
    t = targets_of(data, rows, lambda ids: ids, torch.device("cpu"), neg)
    assert t.weight is not None and torch.equal(t.weight == 0, torch.from_numpy(neg[rows.numpy()]))
    assert targets_of(data, rows, lambda ids: ids, torch.device("cpu")).weight is None


def test_negative_feedback_wins_by_a_wide_margin_on_the_family_log(family_data, tmp_path):
    """Dislikes as positives teach 'this family' and not 'this member'; as negatives they teach the member."""
    data = SequenceData.load(family_data / "data")
    hr = {}
    for name, extra in (("base", {}), ("feedback", {"negative_actions": ["dislike"], "negative_window": 20})):
        cfg = small_run_config(epochs=12, patience=100, lr=3e-3, eval_every=12, **extra)
        Trainer(data, cfg, tmp_path / name).fit(progress=False)
        model, rc, _ = load_run(tmp_path / name)
        hr[name] = evaluate_model(model, Featurizer(data, rc.model), "loo", "valid")["filtered/hr@10"]
    assert hr["feedback"] > 1.5 * hr["base"], hr


def test_feedback_recall_matches_a_per_user_loop(family_data):
    """liked_recall@k / dislike@k of a (random) model against one user at a time."""
    from twotower.evaluate.evaluator import encode_corpus, encode_requests
    from twotower.evaluate.feedback import feedback_recall
    from twotower.layout import SPLIT_TEST
    from twotower.model import TwoTower

    data = SequenceData.load(family_data / "data")
    mc = small_run_config().model
    mc.num_actions, mc.num_surfaces = data.num_actions, data.num_surfaces
    torch.manual_seed(0)
    model = TwoTower(mc).eval()
    feat = Featurizer(data, mc)
    got = feedback_recall(model, feat, data, "time", k=20, liked="like", disliked="dislike", batch=7)
    split, user_of = data.split("time"), data.user_of_event()
    liked, disliked = data.action_mask(["like"]), data.action_mask(["dislike"])
    items = encode_corpus(model, feat)
    lk, dk = [], []
    for u, r in zip(*data.eval_targets("time", "test")):
        with torch.no_grad():
            q = encode_requests(model, feat, np.array([u]), np.array([r]))[0]
        scores = (items @ q).numpy()
        seen = set(data.event_item[data.user_offsets[u] : r].tolist())
        top = [i for i in np.argsort(-scores, kind="stable") if i not in seen][:20]
        ev = np.flatnonzero((split == SPLIT_TEST) & (user_of == u))
        for mask, out in ((liked, lk), (disliked, dk)):
            its = data.event_item[ev[mask[ev]]]
            if len(its):
                out.append(np.isin(its, top).mean())
    assert got["users_liked"] == len(lk) > 0 and got["users_disliked"] == len(dk) > 0
    assert abs(got["liked_recall@20"] - np.mean(lk)) < 1e-9 and abs(got["dislike@20"] - np.mean(dk)) < 1e-9


def test_the_dislike_prior_is_built_from_the_training_splits_negative_events(family_data):
    """train.dislike_prior: each item's logits get w x the smoothed log-odds of its training events being
    negative ones (a test-window dislike never counts); refused without negative_actions."""
    from twotower.train.config import TrainConfig
    from twotower.train.logits import item_prior
    from twotower.train.task import build_task

    with pytest.raises(ConfigError, match="negative_actions") as e:
        TrainConfig(dislike_prior=1.0)
    assert e.value.field == "dislike_prior"
    data = SequenceData.load(family_data / "data")
    task = build_task(TrainConfig(dislike_prior=2.0, negative_actions=["dislike"]), data)
    train, neg = data.split("loo") == SPLIT_TRAIN, negative_events(data, ["dislike"])
    d, n = np.zeros(data.num_items), np.zeros(data.num_items)
    for r in np.flatnonzero(train):
        n[data.event_item[r]] += 1
        d[data.event_item[r]] += neg[r]
    torch.testing.assert_close(task.item_offset, 2.0 * item_prior(d, n))
    assert task.item_offset.std() > 0.1  # items differ in how often they are disliked
    assert build_task(TrainConfig(), data).item_offset is None


def test_the_dislike_prior_lowers_the_served_scores_of_often_disliked_items(family_data, tmp_path):
    """Trained with the prior, the items users dislike most often score lower against every user's vector
    (relative to the other items) than without it: the offset is learned into the towers the index serves."""
    from twotower.evaluate.evaluator import encode_corpus, encode_requests
    from twotower.train.logits import item_prior

    data = SequenceData.load(family_data / "data")
    train, neg = data.split("loo") == SPLIT_TRAIN, negative_events(data, ["dislike"])
    items = data.event_item.astype(np.int64)
    prior = item_prior(np.bincount(items[train & neg], minlength=data.num_items),
                       np.bincount(items[train], minlength=data.num_items)).numpy()  # fmt: skip
    often = prior >= np.quantile(prior, 0.8)
    gap = {}
    for name, extra in (("feedback", {}), ("prior", {"dislike_prior": 2.0})):
        cfg = small_run_config(epochs=4, patience=100, eval_every=4, negative_actions=["dislike"], **extra)
        Trainer(data, cfg, tmp_path / name).fit(progress=False)
        model, rc, _ = load_run(tmp_path / name)
        feat = Featurizer(data, rc.model)
        users, rows = data.eval_targets("loo", "valid")
        with torch.no_grad():
            scores = (encode_requests(model, feat, users, rows) @ encode_corpus(model, feat).T).numpy()
        gap[name] = float(scores[:, often].mean() - scores[:, ~often].mean())
    assert gap["prior"] < gap["feedback"] - 0.02, gap
