"""Row-wise Adagrad for embedding tables inside the AdamW optimizer, against slow references."""

import copy

import torch
from conftest import small_run_config
from safetensors.torch import load_file

from twotower.data import SequenceData
from twotower.train.optim import AdamWRowWiseAdagrad
from twotower.train.trainer import Trainer


def sparse_grads(steps: int, shape=(6, 4), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(*shape, generator=g)
        x[torch.rand(shape[0], generator=g) < 0.5] = 0.0  # rows not looked up this step
        out.append(x)
    return out


def test_rowwise_adagrad_matches_a_slow_reference():
    w0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    p = torch.nn.Parameter(w0.clone())
    opt = AdamWRowWiseAdagrad([{"params": [p], "rowwise": True, "lr": 0.1, "weight_decay": 0.0}])
    ref, acc = w0.clone(), [0.0] * 6
    for grad in sparse_grads(4):
        p.grad = grad.clone()
        opt.step()
        for i in range(6):
            row = grad[i].tolist()
            acc[i] += sum(v * v for v in row) / len(row)
            if any(v != 0 for v in row):
                for d in range(4):
                    ref[i, d] -= 0.1 * row[d] / (acc[i] ** 0.5 + 1e-8)
    assert torch.allclose(p.detach(), ref, atol=1e-6)
    assert opt.state[p]["row_sum"].shape == (6,)  # one accumulator per row, not two moments per element


def test_dense_groups_are_plain_adamw_and_state_round_trips():
    grads = sparse_grads(5, (3, 3), seed=2)
    a, b = (torch.nn.Parameter(torch.ones(3, 3)) for _ in range(2))
    e = torch.nn.Parameter(torch.ones(6, 4))
    ours = AdamWRowWiseAdagrad([{"params": [a]}, {"params": [e], "rowwise": True, "lr": 0.05}], lr=1e-2)
    plain = torch.optim.AdamW([b], lr=1e-2)
    egrads = sparse_grads(5)
    for i, g in enumerate(grads[:3]):
        a.grad, b.grad, e.grad = g.clone(), g.clone(), egrads[i].clone()
        ours.step()
        plain.step()
    assert torch.equal(a, b)
    # a resumed optimizer continues exactly like the original
    a2, e2 = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(e.detach().clone())
    again = AdamWRowWiseAdagrad([{"params": [a2]}, {"params": [e2], "rowwise": True, "lr": 0.05}], lr=1e-2)
    again.load_state_dict(copy.deepcopy(ours.state_dict()))  # as from disk: no shared tensors
    for i, g in enumerate(grads[3:], start=3):
        for opt, (pa, pe) in ((ours, (a, e)), (again, (a2, e2))):
            pa.grad, pe.grad = g.clone(), egrads[i].clone()
            opt.step()
    assert torch.equal(a, a2) and torch.equal(e, e2)


def test_training_with_rowwise_adagrad_resumes_exactly(synth_data, tmp_path):
    data = SequenceData.load(synth_data)
    cfg = small_run_config(epochs=2, checkpoint_every=3, embedding_optimizer="rowwise_adagrad", eval_every=0)
    s = Trainer(data, cfg, tmp_path / "straight").fit(progress=False)
    assert s["examples"] > 0
    Trainer(data, cfg, tmp_path / "resumed").fit(stop_after_steps=7, progress=False)
    Trainer(data, cfg, tmp_path / "resumed", resume=True).fit(progress=False)
    a = load_file(tmp_path / "straight" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "last" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    optim = load_file(tmp_path / "straight" / "checkpoints" / "last" / "optim.safetensors")
    assert any(k.endswith(".row_sum") for k in optim)
