import numpy as np
import pytest
import torch

from twotower.data import SequenceData
from twotower.features import Featurizer, gap_buckets
from twotower.model import ModelConfig, TwoTower


@pytest.fixture
def setup(synth_data):
    data = SequenceData.load(synth_data)
    cfg = ModelConfig(
        dim=16,
        num_heads=2,
        num_layers=2,
        max_len=12,
        item_buckets=512,
        user_buckets=512,
        author_buckets=64,
        feature_buckets=64,
        num_actions=data.num_actions,
        num_surfaces=data.num_surfaces,
        positions="learned+time",
    )
    torch.manual_seed(0)
    return data, cfg, TwoTower(cfg).eval(), Featurizer(data, cfg)


def test_shapes_and_unit_norm(setup):
    data, cfg, model, feat = setup
    items = model.encode_items(feat.items(np.arange(10)))
    assert items.shape == (10, 16)
    assert torch.allclose(items.norm(dim=-1), torch.ones(10), atol=1e-5)
    u = np.array([0, 1, 2])
    users = model.encode_user(feat.users(u, data.user_offsets[u], data.user_offsets[u] + 5))
    assert users.shape == (3, 16) and torch.allclose(users.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_causal_prefix_outputs_equal_truncated_histories(setup, pooling):
    """One causal pass gives, at every position, exactly the vector of the user tower on that prefix."""
    data, cfg, _, feat = setup
    cfg.pooling = pooling
    model = TwoTower(cfg).eval()
    u = np.array([3, 4])
    start = data.user_offsets[u]
    with torch.no_grad():
        seq = torch.nn.functional.normalize(model.user_encoder(feat.users(u, start, start + 8), model.embed)[0], dim=-1)
        for j in range(0, 9):
            alone = model.encode_user(feat.users(u, start, start + j))
            assert torch.allclose(seq[:, j], alone, atol=1e-5), j


@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_change_outputs(setup, causal):
    data, cfg, _, feat = setup
    cfg.causal = causal  # bidirectional attention relies on the key padding mask
    model = TwoTower(cfg).eval()
    u = np.array([5])
    s = data.user_offsets[u]
    with torch.no_grad():
        a = model.encode_user(feat.users(u, s, s + 4))
        b = model.encode_user(feat.users(u, s, s + 4, pad_to=12))
    assert torch.allclose(a, b, atol=1e-5)


def test_signed_actions_change_the_embedding(setup):
    data, cfg, model, feat = setup
    u = np.array([1])
    s = data.user_offsets[u]
    x = feat.users(u, s, s + 3)
    with torch.no_grad():
        a = model.encode_user(x)
        x.actions[0, 0] = 1 - x.actions[0, 0]
        b = model.encode_user(x)
    assert not torch.allclose(a, b)


def test_unseen_ids_still_embed(setup):
    from twotower.features import ItemInputs
    from twotower.hashing import multi_hash, to_buckets

    _, cfg, model, _ = setup
    h = torch.from_numpy(to_buckets(multi_hash(["never-seen-item"], 2, salt=2), cfg.item_buckets))
    v = model.encode_items(ItemInputs(h, torch.zeros_like(h), torch.zeros(1, 1, dtype=torch.long)))
    assert torch.isfinite(v).all() and abs(float(v.detach().norm()) - 1) < 1e-5


def test_gap_buckets():
    assert gap_buckets(np.array([0, 1, 3, 10**9]), 32).tolist() == [0, 1, 2, 30]
    assert gap_buckets(np.array([10**12]), 8).tolist() == [7]


def test_bidirectional_training_queries_leave_the_batch_alone(setup):
    data, cfg, _, feat = setup
    cfg.causal = False
    model = TwoTower(cfg).eval()
    u = np.array([1, 2, 3])
    x = feat.users(u, data.user_offsets[u], data.user_offsets[u] + np.array([5, 3, 4]))
    rows = torch.where(x.history.item[..., 0] > 0, torch.arange(5)[None, :], -1)
    before = [t.clone() for t in (x.history.item, x.history.feat, x.actions, x.surface, x.length)]
    with torch.no_grad():
        q, target = model.training_queries(x, rows)
    after = (x.history.item, x.history.feat, x.actions, x.surface, x.length)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the batch was once edited in place
    assert q.shape == (3, cfg.dim) and target.tolist() == [4, 2, 3]  # the last event of each window


def test_checkpoints_with_pre_split_key_names_load_with_their_version(setup, tmp_path):
    """Checkpoints saved before the model was split into parts (``item_emb.*``, ``blocks.*``, ``subject_proj.*``
    ...) load into today's model, and keep their model version (it hashes the files as they are on disk)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import save_file

    from twotower import config as cfgmod
    from twotower.model import checkpoint as ckpt
    from twotower.model.two_tower import LEGACY_PREFIXES

    _, cfg, _, _ = setup
    cfg.online_head = True
    model = TwoTower(cfg)
    new_to_old = {new: old for old, new in LEGACY_PREFIXES.items()}
    old_weights = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in new_to_old if key.startswith(p)), None)
        old_weights[new_to_old[prefix] + key[len(prefix) :] if prefix else key] = value.contiguous()
    assert "item_emb.table.weight" in old_weights and "subject_proj.weight" in old_weights
    assert "head.no_state" in old_weights and "blocks.0.qkv.weight" in old_weights
    path = tmp_path / "checkpoints" / "best"
    path.mkdir(parents=True)
    save_file(old_weights, path / "model.safetensors")
    config = {"model": cfgmod.to_dict(cfg), "train": {}}
    version = ckpt.model_version(path / "model.safetensors", config)
    (path / "config.json").write_text(json.dumps(config))
    (path / "state.json").write_text(json.dumps({"model_version": version}))
    loaded, loaded_cfg, got = ckpt.load_model(tmp_path)
    assert got == version and loaded_cfg == cfg
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the service's way in: the model without any training code
    probe = (
        "import sys; from twotower.model.checkpoint import load_model; "
        f"m, c, v = load_model({str(tmp_path)!r}); "
        "assert not [n for n in sys.modules if n.startswith(('twotower.train', 'twotower.data.prepare'))]; print(v)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == version


@pytest.mark.parametrize(
    ("similarity", "tied", "tower"), [("cosine", True, "mlp"), ("dot", False, "mlp"), ("dot", True, "linear")]
)
def test_scoring_variants_keep_prefix_equivalence(setup, similarity, tied, tower):
    """Dot scores and tied inputs: one causal pass still equals the served user vector on every prefix;
    dot vectors are raw (not unit); a tied model's user vector moves with the item tower."""
    data, cfg, _, feat = setup
    cfg.similarity, cfg.tied_input, cfg.item_tower = similarity, tied, tower
    torch.manual_seed(0)
    model = TwoTower(cfg).eval()
    u = np.array([3, 4])
    start = data.user_offsets[u]
    with torch.no_grad():
        seq = model.user_vectors(model.user_encoder(feat.users(u, start, start + 8), model.embed, model._item_vec())[0])
        for j in range(1, 9):
            assert torch.allclose(seq[:, j], model.encode_user(feat.users(u, start, start + j)), atol=1e-5), j
        items = model.encode_items(feat.items(np.arange(10)))
        unit = torch.allclose(items.norm(dim=-1), torch.ones(10), atol=1e-4)
        assert unit == (similarity == "cosine")
        before = model.encode_user(feat.users(u, start, start + 8))
        model.item_tower.mlp[0].weight.mul_(2.0)
        moved = not torch.allclose(before, model.encode_user(feat.users(u, start, start + 8)), atol=1e-6)
    assert moved == tied
