"""Shared tiny fixtures: a hand-written log with ties, side tables, and a prepared copy of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from twotower.data import PrepareConfig, prepare_files

LOG = """user_id,item_id,timestamp,click,like,surface
u1,a,100,1,0,home
u1,b,100,1,1,home
u1,c,50,1,0,search
u1,d,300,1,1,home
u2,a,10,1,0,
u2,c,20,1,1,search
u2,e,30,1,0,home
u3,b,5,1,0,home
u3,a,6,1,1,home
u1,e,400,1,0,home
u3,e,7,1,0,search
"""
ITEMS = """item_id,author,genres,year
a,x,Comedy|Drama,1995
b,x,Drama,1996
c,y,,1995
d,z,Action|Comedy,2001
e,y,Horror,
"""
USERS = """user_id,gender,age
u1,F,25
u2,M,35
u3,F,
"""


def tiny_config() -> PrepareConfig:
    cfg = PrepareConfig()
    cfg.log.actions = ["click", "like"]
    cfg.log.surface = "surface"
    cfg.items.author_id = "author"
    cfg.items.features = ["year"]
    cfg.items.multi_valued = {"genres": "|"}
    cfg.users.features = ["gender", "age"]
    return cfg


@pytest.fixture
def tiny_files(tmp_path: Path) -> dict[str, Path]:
    files = {"log": tmp_path / "log.csv", "items": tmp_path / "items.csv", "users": tmp_path / "users.csv"}
    files["log"].write_text(LOG)
    files["items"].write_text(ITEMS)
    files["users"].write_text(USERS)
    return files


@pytest.fixture
def tiny_data(tiny_files: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "prepared"
    prepare_files(tiny_files["log"], out, tiny_config(), items_path=tiny_files["items"], users_path=tiny_files["users"])
    return out


def small_run_config(**train):
    """A tiny model and schedule that trains in seconds on the synthetic fixture."""
    from twotower.model import ModelConfig
    from twotower.train.config import RunConfig, TrainConfig

    model = ModelConfig(
        dim=16,
        num_heads=2,
        num_layers=1,
        max_len=20,
        item_buckets=1024,
        author_buckets=64,
        user_buckets=1024,
        feature_buckets=64,
        dropout=0.1,
    )
    t = dict(epochs=2, batch_tokens=512, warmup_steps=5, num_uniform=32, eval_users=100, log_every=5)
    t.update(train)
    return RunConfig(model=model, train=TrainConfig(**t))


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A prepared synthetic log with learnable topic structure (300 users, 200 items, 8000 events)."""
    from twotower.data import LogSchema
    from twotower.data.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(300, 200, 8000, root / "log.parquet", seed=1, topics=10, topic_affinity=0.9, progress=False)
    cfg = PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface"))
    prepare_files(root / "log.parquet", root / "data", cfg)
    return root / "data"
