"""Evaluation protocols: ``strict`` sees nothing of the test event; ``request_time`` sees its time and surface."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import small_run_config

from twotower.data import SequenceData
from twotower.errors import ConfigError
from twotower.evaluate.evaluator import encode_requests, evaluate_model
from twotower.features import Featurizer
from twotower.model import TwoTower


def _model(online_head: bool, data: SequenceData) -> TwoTower:
    cfg = small_run_config().model
    cfg.online_head, cfg.context_len = online_head, 4
    cfg.num_actions, cfg.num_surfaces = data.num_actions, data.num_surfaces
    torch.manual_seed(0)
    model = TwoTower(cfg).eval()
    with torch.no_grad():  # request embeddings start near zero: make them matter for the check
        if model.head is not None:
            for emb in (model.head.hour, model.head.weekday, model.head.since_last, model.head.surface):
                emb.weight.normal_(0, 1.0)
    return model


def _tampered(data: SequenceData, rows: np.ndarray) -> SequenceData:
    """A copy of ``data`` whose events at ``rows`` have another time, item, action set and surface."""
    ts, item = data.event_ts.copy(), data.event_item.copy()
    actions, surface = data.event_actions.copy(), data.event_surface.copy()
    ts[rows] += 3 * 86400 + 5 * 3600 + 17  # another weekday, hour and gap
    item[rows] = (item[rows] + 7) % data.num_items
    actions[rows] ^= 0b11
    surface[rows] = (surface[rows] % max(data.num_surfaces, 1)) + 1
    return dataclasses.replace(data, event_ts=ts, event_item=item, event_actions=actions, event_surface=surface)


@pytest.mark.parametrize("online_head", [True, False])
def test_strict_sees_nothing_of_the_target_event(synth_data, online_head):
    data = SequenceData.load(synth_data)
    model = _model(online_head, data)
    users, rows = data.eval_targets("loo", "test")
    other = _tampered(data, rows)
    for protocol in ("strict", "request_time"):
        a = encode_requests(model, Featurizer(data, model.cfg), users, rows, protocol=protocol)
        b = encode_requests(model, Featurizer(other, model.cfg), users, rows, protocol=protocol)
        if protocol == "strict" or not online_head:
            assert torch.equal(a, b), f"{protocol}: the user vector moved with the test event"
        else:  # the check can fail: request_time does read the target's time and surface
            assert (a - b).abs().amax(1).gt(1e-4).float().mean() > 0.9


def test_protocols_agree_for_an_unsplit_tower_and_differ_for_a_hybrid(synth_data):
    data = SequenceData.load(synth_data)
    for online_head in (False, True):
        model = _model(online_head, data)
        feat = Featurizer(data, model.cfg)
        strict = evaluate_model(model, feat, "loo", "test", protocol="strict")
        rt = evaluate_model(model, feat, "loo", "test", protocol="request_time")
        same = all(strict[k] == rt[k] for k in strict)
        assert same is (not online_head)


def test_unknown_protocol_is_a_config_error(synth_data):
    data = SequenceData.load(synth_data)
    model = _model(True, data)
    with pytest.raises(ConfigError, match="strict"):
        encode_requests(model, Featurizer(data, model.cfg), np.array([0]), np.array([1]), protocol="live")
