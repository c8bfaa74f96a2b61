"""Parameter groups by module type: which parameters take weight decay, and which optimizer runs them."""

import torch
from conftest import small_run_config

from twotower.model import ModelConfig, TwoTower
from twotower.train.params import decayed_names, lr_lambda, param_groups


def hybrid_model() -> TwoTower:
    dims = dict(dim=8, num_heads=2, num_layers=1, max_len=6, num_actions=2, num_surfaces=2)
    return TwoTower(ModelConfig(**dims, online_head=True, positions="learned+time"))


def test_only_linear_weight_matrices_decay():
    """The online head's tables (recency/surface/hour/weekday/since_last) and its no-state vector used to be
    decayed because their names lack "emb"; by module type they are not, and the list is exactly this."""
    assert decayed_names(hybrid_model()) == [
        "item_tower.mlp.0.weight",
        "item_tower.mlp.2.weight",
        "user_encoder.action_proj.weight",
        "user_encoder.hist_proj.weight",
        "user_encoder.user_proj.weight",
        "user_encoder.blocks.0.qkv.weight",
        "user_encoder.blocks.0.proj.weight",
        "user_encoder.blocks.0.ffn.0.weight",
        "user_encoder.blocks.0.ffn.2.weight",
        "head.state_proj.weight",
        "head.q.weight",
        "head.kv.weight",
        "head.attn_out.weight",
        "head.mlp.0.weight",
        "head.mlp.2.weight",
        "head.subject_proj.weight",
    ]


def test_groups_cover_every_parameter_once_and_tables_go_rowwise():
    model = hybrid_model()
    names = {id(p): n for n, p in model.named_parameters()}
    cfg = small_run_config(weight_decay=0.1).train
    decay, no_decay = param_groups(model, cfg)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    got = [names[id(p)] for g in (decay, no_decay) for p in g["params"]]
    assert sorted(got) == sorted(names.values())
    assert {"head.no_state", "head.recency.weight", "head.hour.weight", "embed.item.table.weight"} <= {
        names[id(p)] for p in no_decay["params"]
    }
    cfg = small_run_config(embedding_optimizer="rowwise_adagrad").train
    groups = param_groups(model, cfg)
    rowwise = [g for g in groups if g.get("rowwise")]
    assert len(rowwise) == 1
    tables = {names[id(p)] for p in rowwise[0]["params"]}
    assert tables == {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}


def test_a_learned_temperature_gets_its_own_undecayed_group():
    model, task = hybrid_model(), torch.nn.Module()
    task.log_tau = torch.nn.Parameter(torch.tensor(-3.0))
    groups = param_groups(model, small_run_config(learn_temperature=True).train, task)
    assert groups[-1] == {"params": [task.log_tau], "weight_decay": 0.0}
    task.log_tau.requires_grad_(False)  # a fixed temperature is not optimised at all
    assert len(param_groups(model, small_run_config().train, task)) == 2


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = small_run_config(warmup_steps=4, min_lr_ratio=0.1).train
    f = lr_lambda(cfg, total_steps=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and abs(f(20) - 0.1) < 1e-12 and f(12) < f(8)
