"""Matryoshka prefixes: the prefix loss equals the plain loss on truncated vectors, prefix encoders are the
full vectors' prefixes made unit again, and a run trains and logs each prefix's loss."""

import pytest
import torch
import torch.nn.functional as F
from conftest import small_run_config

from twotower.data import SequenceData
from twotower.errors import ConfigError
from twotower.features import Featurizer
from twotower.model import TwoTower
from twotower.model.layers import prefix_vectors
from twotower.train.negatives import InBatchNegatives, MixedNegatives, UniformNegatives
from twotower.train.task import RetrievalTask, Targets
from twotower.train.trainer import Trainer


def _task(**kw):
    return RetrievalTask(MixedNegatives([InBatchNegatives(None), UniformNegatives(40, 6)]), seed=3, **kw)


@pytest.mark.parametrize("fused", [True, False])
def test_each_prefix_loss_is_the_plain_loss_of_the_truncated_towers(fused):
    g = torch.Generator().manual_seed(0)
    table = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=-1)
    q = F.normalize(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=-1)
    pos = torch.randint(0, 40, (7,), generator=g)
    calls = []

    def encode(ids):
        calls.append(len(ids))
        return table[ids]

    out = _task(prefixes={2: 0.5, 4: 1.0}, fused=fused)(q, Targets(pos, None, encode))
    assert len(calls) == 1  # the candidates are encoded once for all widths
    plain = _task(fused=fused)(q, Targets(pos, None, lambda ids: table[ids])).loss
    total = plain.clone()
    for d, w in ((2, 0.5), (4, 1.0)):
        cut = F.normalize(table[:, :d], dim=-1)
        want = _task(fused=fused)(F.normalize(q[:, :d], dim=-1), Targets(pos, None, lambda ids, c=cut: c[ids])).loss
        torch.testing.assert_close(out.terms[f"prefix_{d}"], want)
        total = total + w * want
    torch.testing.assert_close(out.terms["retrieval"], plain)
    torch.testing.assert_close(out.loss, total)


def test_prefix_encoders_are_unit_prefixes_of_the_full_vectors(synth_data):
    data = SequenceData.load(synth_data)
    mc = small_run_config().model
    mc.num_actions, mc.num_surfaces = data.num_actions, data.num_surfaces
    torch.manual_seed(0)
    model, feat = TwoTower(mc).eval(), Featurizer(data, mc)
    import numpy as np

    with torch.no_grad():
        full = model.encode_items(feat.items())
        short = model.encode_items(feat.items(), dim=4)
        u = model.encode_user(feat.users(np.array([0, 1]), np.array([0, 5]), np.array([5, 12])))
        u4 = model.encode_user(feat.users(np.array([0, 1]), np.array([0, 5]), np.array([5, 12])), dim=4)
    torch.testing.assert_close(short, F.normalize(full[:, :4], dim=-1))
    torch.testing.assert_close(u4, F.normalize(u[:, :4], dim=-1))
    torch.testing.assert_close(short.norm(dim=-1), torch.ones(len(short)))
    assert torch.equal(model.encode_items(feat.items(), dim=mc.dim), full)
    with pytest.raises(ValueError, match="1..16"):
        prefix_vectors(full, 17, "cosine")
    assert torch.equal(prefix_vectors(full, 4, "dot"), full[:, :4])  # dot: the raw prefix


def test_a_matryoshka_run_logs_each_prefix_and_refuses_a_prefix_too_wide(synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    with pytest.raises(ConfigError, match="matryoshka_dims"):
        Trainer(data, small_run_config(matryoshka_dims=[8, 16]), tmp_path / "bad")
    with pytest.raises(ConfigError, match="matryoshka_weights"):
        small_run_config(matryoshka_dims=[8], matryoshka_weights=[1.0, 2.0])
    Trainer(data, small_run_config(epochs=1, matryoshka_dims=[4, 8]), tmp_path / "r").fit(progress=False)
    rows = (tmp_path / "r" / "metrics.csv").read_text()
    assert ",train,loss/prefix_4," in rows and ",train,loss/prefix_8," in rows and ",train,loss/retrieval," in rows
