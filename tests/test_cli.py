import json

from conftest import small_run_config
from twotower import config as cfgmod
from twotower.cli import main


def test_train_then_evaluate_cli(synth_data, tmp_path, capsys):
    cfg_file = tmp_path / "cfg.json"
    cfgmod.save(small_run_config(epochs=1), cfg_file)
    run = tmp_path / "run"
    assert main(["train", "--data", str(synth_data), "--config", str(cfg_file), "--out", str(run),
                 "--no-progress"]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "popularity [filtered]" in out and "model [all]" in out
    res = json.loads((run / "eval_test.json").read_text())
    assert 0 <= res["model"]["filtered/hr@10"] <= 1 and len(res["model_version"]) == 16


def test_bad_config_key_is_a_clear_error(tmp_path, synth_data, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = 1\nlearning_rate = 0.1\n")
    assert main(["train", "--data", str(synth_data), "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['learning_rate']" in err and "'lr'" in err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "twotower prepare" in capsys.readouterr().err
