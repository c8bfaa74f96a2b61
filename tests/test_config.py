"""Config files: wrong types and out-of-range values are ConfigErrors naming the key, the value and the fix."""

import pytest

from twotower import config as cfgmod
from twotower.data import PrepareConfig
from twotower.errors import ConfigError
from twotower.train.config import RunConfig, TrainConfig


def load_toml(tmp_path, text, cls=RunConfig):
    f = tmp_path / "c.toml"
    f.write_text(text)
    return cfgmod.load(cls, f)


@pytest.mark.parametrize(
    "toml,message",
    [
        ('[model]\ndim = "16"', r"c.toml \[model\]: dim = '16' is a string; expected an integer \(remove the quotes\)"),
        ('[train]\nbatch_tokens = "256"', r"batch_tokens = '256' is a string; expected an integer"),
        ("[train]\nepochs = 1.5", r"epochs = 1.5 is a number; expected an integer"),
        ("[model]\ndim = true", r"dim = True is a boolean; expected an integer"),
        (
            '[train]\nnegatives = "in_batch"',
            r'negatives = \'in_batch\' is a string; expected a list: negatives = \["in_batch"\]',
        ),
        ('[model]\ncausal = "false"', r"causal = 'false' is a string; expected true or false"),
        ("[train]\nlr = true", r"lr = True is a boolean; expected a number"),
        ("[train]\ndevice = 1", r"device = 1 is an integer; expected a string"),
        ('[train]\nnegatives = ["in_batch", 3]', r"negatives\[1\] = 3 is an integer; expected a string"),
        ("model = 3", r"model = 3 is an integer; expected a table"),
    ],
)
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message):
        load_toml(tmp_path, toml)


def test_list_given_as_comma_string_is_refused_with_the_list_spelled_out(tmp_path):
    with pytest.raises(
        ConfigError, match=r'actions = \'click,like\' is a string; expected a list: actions = \["click", "like"\]'
    ):
        load_toml(tmp_path, '[log]\nactions = "click,like"', PrepareConfig)


@pytest.mark.parametrize(
    "toml,message",
    [
        ("[model]\ndim = -16", r"\[model\]: dim = -16 is not allowed; it must be an integer >= 1"),
        ("[model]\nmax_len = 0", r"max_len = 0 is not allowed; it must be an integer >= 1"),
        ("[model]\ndropout = 1.5", r"dropout = 1.5 is not allowed; it must be a number in \[0, 1\)"),
        ("[model]\nnum_hashes = 0", r"num_hashes = 0 is not allowed"),
        ("[model]\ndim = 16\nnum_heads = 3", r"dim = 16 is not allowed; it must be divisible by num_heads \(3\)"),
        ("[train]\nlr = -1", r"\[train\]: lr = -1.0 is not allowed; it must be a finite number > 0"),
        ("[train]\nlr = nan", r"lr = nan is not allowed"),
        ("[train]\ntemperature = 0", r"temperature = 0.0 is not allowed; it must be a finite number > 0"),
        ('[train]\ndevice = "gpu"', r"device = 'gpu' is not allowed; use cpu, cuda, cuda:N or mps"),
        ("[train]\nepochs = 0", r"epochs = 0 is not allowed; it must be an integer >= 1"),
        ("[train]\nbatch_tokens = 0", r"batch_tokens = 0 is not allowed"),
        (
            '[train]\nnegatives = ["in_batch", "hard"]',
            r"negatives = \['in_batch', 'hard'\] is not allowed; give a non-empty",
        ),
        ("[train]\nholdout_users = 1", r"holdout_users = 1.0 is not allowed; it must be a number in \[0, 1\)"),
        ('[train]\nsplit = "random"', r"split = 'random' is not allowed; use 'loo'"),
    ],
)
def test_out_of_range_values_name_the_key_the_value_and_the_range(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message):
        load_toml(tmp_path, toml)


def test_an_int_is_a_float_and_good_values_load(tmp_path):
    cfg = load_toml(tmp_path, '[train]\nlr = 1\ntemperature = 0.1\ndevice = "cuda:1"\nnegatives = ["full"]')
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and cfg.train.negatives == ["full"]
    assert cfgmod.from_dict(RunConfig, cfgmod.to_dict(cfg)) == cfg  # the saved form loads back


def test_range_checks_also_guard_configs_built_in_code():
    with pytest.raises(ConfigError, match="epochs = 0 is not allowed"):
        TrainConfig(epochs=0)
    assert isinstance(ConfigError("x"), ValueError)  # callers catching ValueError keep working


def test_config_errors_carry_the_field_for_the_cli():
    """Range and type errors name their field in .field (the CLI turns it into its flag), files included."""
    from twotower.index import IndexConfig

    with pytest.raises(ConfigError) as e:
        cfgmod.from_dict(IndexConfig, {"hnsw_m": 0}, "flags")
    assert e.value.field == "hnsw_m" and str(e.value).startswith("flags: hnsw_m = 0 is not allowed")
    with pytest.raises(ConfigError) as e:
        cfgmod.from_dict(IndexConfig, {"ivf_nprobe": "8"}, "flags")
    assert e.value.field == "ivf_nprobe"
    with pytest.raises(ConfigError, match=r"\[model\]: dim = -16") as e:
        cfgmod.from_dict(RunConfig, {"model": {"dim": -16}}, "c.toml")
    assert e.value.field == "dim"


@pytest.mark.parametrize("value", [2.5, True, "3", None])
def test_integer_checks_refuse_what_is_not_an_integer(value):
    """check_int once let 2.5 pass as an integer >= 1 (only the range was checked)."""
    with pytest.raises(ConfigError, match="max_item_features = .* is not allowed; it must be an integer >= 0"):
        PrepareConfig(max_item_features=value)
