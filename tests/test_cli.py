import json
import os
import shutil
import signal

import pytest
from conftest import small_run_config

from twotower import config as cfgmod
from twotower.cli import main


def test_train_then_evaluate_cli(synth_data, tmp_path, capsys):
    cfg_file = tmp_path / "cfg.json"
    cfgmod.save(small_run_config(epochs=1), cfg_file)
    run = tmp_path / "run"
    assert (
        main(["train", "--data", str(synth_data), "--config", str(cfg_file), "--out", str(run), "--no-progress"]) == 0
    )
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


def test_export_index_build_rollback(synth_data, tmp_path, capsys):
    import numpy as np

    from twotower.index.publish import current_version, history, load_current
    from twotower.train.load import load_run as load_model

    cfg_file = tmp_path / "cfg.json"
    cfgmod.save(small_run_config(epochs=1), cfg_file)
    run, emb, root = tmp_path / "run", tmp_path / "emb", tmp_path / "idx"
    assert (
        main(["train", "--data", str(synth_data), "--config", str(cfg_file), "--out", str(run), "--no-progress"]) == 0
    )
    assert main(["export", "--run", str(run), "--out", str(emb), "--no-progress"]) == 0
    m = json.loads((emb / "manifest.json").read_text())
    _, _, version = load_model(run)
    assert m["model_version"] == version and m["count"] == 200 and m["normalized"]
    vec = np.load(emb / "embeddings.npy")
    assert np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-4)
    assert main(["index", "build", "--emb", str(emb), "--out", str(root), "--backend", "exact"]) == 0
    first = current_version(root)
    assert main(["index", "build", "--emb", str(emb), "--out", str(root), "--backend", "hnsw"]) == 0
    second = current_version(root)
    assert second != first and history(root) == [first, second]
    manifest = json.loads((root / "versions" / second / "manifest.json").read_text())
    assert manifest["recall"]["recall@100"] >= 0.95 and manifest["model_version"] == version
    assert load_current(root, expect_model_version=version).config.backend == "hnsw"
    # a floor the ANN cannot reach (4-bit PQ codes, no re-ranking): refused naming its knob, CURRENT unchanged
    pq = ["index", "build", "--emb", str(emb), "--out", str(root), "--backend", "ivfpq", "--pq-m", "4"]
    assert main([*pq, "--pq-bits", "4", "--refine-factor", "1", "--recall-floor", "1.0"]) == 2
    err = capsys.readouterr().err
    assert "below the floor" in err and "--refine-factor" in err
    assert current_version(root) == second
    assert main(["index", "rollback", "--root", str(root)]) == 0
    assert current_version(root) == first
    assert main(["index", "list", "--root", str(root)]) == 0
    # the IVF-PQ knobs reach the published config
    assert main([*pq, "--pq-bits", "4", "--refine-factor", "8", "--recall-floor", "0"]) == 0
    built = json.loads((root / "versions" / current_version(root) / "manifest.json").read_text())["config"]
    assert (built["pq_bits"], built["refine_factor"], built["pq_m"]) == (4, 8, 4)


# --- refusals and errors: one line on stderr, exit 2, nothing lost ---------------------------------------------


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    """A finished 1-epoch run (config file, run directory) to copy from."""
    root = tmp_path_factory.mktemp("trained")
    cfgmod.save(small_run_config(epochs=1, eval_users=50, checkpoint_every=2), root / "cfg.json")
    args = ["train", "--data", str(synth_data), "--config", str(root / "cfg.json"), "--out", str(root / "run")]
    assert main([*args, "--no-progress"]) == 0
    return root / "cfg.json", root / "run"


def copy_run(trained, tmp_path):
    shutil.copytree(trained[1], tmp_path / "run")
    return tmp_path / "run"


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), "--no-progress", *extra])


def test_export_replaces_only_an_earlier_export(trained, synth_data, tmp_path, capsys):
    run = trained[1]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["export", "--run", str(run), "--out", str(mine), "--no-progress"]) == 2
    assert "is not an earlier export" in capsys.readouterr().err and (mine / "thesis.tex").is_file()
    assert main(["export", "--run", str(run), "--out", str(synth_data), "--no-progress"]) == 2  # a dataset: refused
    assert (synth_data / "manifest.json").is_file()
    emb = tmp_path / "emb"
    emb.mkdir()  # empty: fine
    assert main(["export", "--run", str(run), "--out", str(emb), "--no-progress"]) == 0
    assert main(["export", "--run", str(run), "--out", str(emb), "--no-progress"]) == 0  # an earlier export: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "mine"]  # no temporary leftovers


def test_train_refuses_a_run_directory_unless_resume_or_overwrite(trained, synth_data, tmp_path, capsys):
    cfg_file, run = trained[0], copy_run(trained, tmp_path)
    before = (run / "metrics.csv").read_text()
    assert train(synth_data, run, "--config", str(cfg_file)) == 2
    assert "already holds a run; continue it with --resume, discard it with --overwrite" in capsys.readouterr().err
    assert (run / "metrics.csv").read_text() == before
    assert train(synth_data, run, "--config", str(cfg_file), "--overwrite", "--epochs", "1") == 0
    rows = (run / "metrics.csv").read_text().splitlines()
    assert sum(r.startswith("time,") for r in rows) == 1  # one run's metrics, not two appended


def test_resume_takes_the_saved_config_and_refuses_a_different_one(trained, synth_data, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    assert train(synth_data, run, "--resume", "--epochs", "2") == 0  # no --config: the run's own (dim 16)
    assert json.loads((run / "train_summary.json").read_text())["epoch"] == 2
    dim32 = json.loads(trained[0].read_text())
    dim32["model"]["dim"] = 32
    (tmp_path / "dim32.json").write_text(json.dumps(dim32))
    assert train(synth_data, run, "--resume", "--config", str(tmp_path / "dim32.json")) == 2
    err = capsys.readouterr().err
    assert "changes model.dim (16 -> 32); a resume" in err and "Drop --config to resume with the saved one" in err
    (tmp_path / "defaults.toml").write_text("[model]\ndim = 32\n")  # every default differs: the first 8 shown
    assert train(synth_data, run, "--resume", "--config", str(tmp_path / "defaults.toml")) == 2
    assert "more; a resume continues the saved run" in capsys.readouterr().err


def test_train_out_that_is_a_file_is_a_clear_error(synth_data, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert train(synth_data, f) == 2
    assert f"run directory {f} is a file; choose another --out" in capsys.readouterr().err
    assert train(synth_data, f / "run") == 2
    assert f"cannot be created: {f} is a file" in capsys.readouterr().err


def test_damaged_checkpoints_are_clear_errors(trained, synth_data, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    (run / "checkpoints" / "last" / "optim.safetensors").unlink()
    assert train(synth_data, run, "--resume", "--epochs", "2") == 2
    assert "cannot be resumed: it lacks ['extra.torch_rng'" in capsys.readouterr().err
    state = run / "checkpoints" / "best" / "state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "model_version"}))
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "is incomplete" in capsys.readouterr().err


def test_weights_swapped_after_the_save_do_not_pass_as_the_saved_version(trained, tmp_path, capsys):
    """The model version names the weights + config; another run's weights under this state.json were loaded
    as the claimed version (and so served beside that version's index). Now refused, naming both ids."""
    from safetensors.torch import load_file, save_file

    run = copy_run(trained, tmp_path)
    best = run / "checkpoints" / "best"
    claimed = json.loads((best / "state.json").read_text())["model_version"]
    weights = load_file(best / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01  # a valid file of other weights
    save_file(weights, best / "model.safetensors")
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "emb")]) == 2
    err = capsys.readouterr().err
    assert claimed in err and "changed after the save" in err


def test_corrupt_dataset_manifest_is_a_clear_error(trained, synth_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    (data / "manifest.json").write_text('{"format_version": 1,')
    assert train(data, tmp_path / "r") == 2
    assert f"dataset {data} is unreadable" in capsys.readouterr().err
    for cmd in (
        ["evaluate", "--run", str(trained[1])],
        ["export", "--run", str(trained[1]), "--out", str(tmp_path / "e")],
    ):
        assert main([*cmd, "--data", str(data)]) == 2
        assert f"dataset {data} is unreadable" in capsys.readouterr().err


def test_messages_name_the_missing_run_or_checkpoint(synth_data, tmp_path, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert f"no such run directory {tmp_path / 'nope'}" in capsys.readouterr().err
    (tmp_path / "fresh").mkdir()
    assert train(synth_data, tmp_path / "fresh", "--resume") == 2
    assert "has no checkpoint yet (no checkpoints/last); train it without --resume" in capsys.readouterr().err


def test_ctrl_c_during_training_says_how_to_resume(trained, synth_data, tmp_path, capsys, monkeypatch):
    """A real SIGINT in the third step: exit 130, one line naming the last checkpoint and the resume command."""
    from twotower.train.trainer import Trainer

    real_step, calls = Trainer.step, []

    def step(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *a, **k)

    monkeypatch.setattr(Trainer, "step", step)
    run = tmp_path / "run"
    assert train(synth_data, run, "--config", str(trained[0])) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("interrupted; the last checkpoint (epoch 0, step 2) is ")
    assert err.endswith(f"continue with: twotower train --data {synth_data} --out {run} --resume")
    monkeypatch.setattr(Trainer, "step", real_step)
    assert train(synth_data, run, "--resume") == 0


def test_index_build_bad_knobs_and_damaged_exports_are_one_line_errors(tmp_path, capsys):
    """--hnsw-m 0 segfaulted FAISS and a NaN vector hung HNSW; a damaged export manifest was a traceback."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = tmp_path / "emb"
    emb.mkdir()
    np.save(emb / "ids.npy", np.arange(300, dtype=np.int64))
    np.save(emb / "embeddings.npy", x)
    manifest = {"model_version": "a" * 16, "dim": 16, "count": 300, "dtype": "float32", "created_at": "now"}
    (emb / "manifest.json").write_text(json.dumps(manifest))
    build = ["index", "build", "--emb", str(emb), "--out", str(tmp_path / "idx")]
    for flags, says in [
        (["--hnsw-m", "0"], "--hnsw-m"),
        (["--backend", "ivfpq", "--pq-bits", "0"], "--pq-bits"),
        (["--backend", "ivfflat", "--ivf-nprobe", "-5"], "--ivf-nprobe"),
        (["--recall-floor", "1.5"], "recall floor"),
    ]:
        assert main([*build, *flags]) == 2
        assert says in capsys.readouterr().err
    x[7, 0] = np.nan
    np.save(emb / "embeddings.npy", x)
    assert main(build) == 2
    assert "ids [7]" in capsys.readouterr().err
    (emb / "manifest.json").write_text('{"model_version": ')
    assert main(build) == 2
    assert "manifest.json is damaged" in capsys.readouterr().err
    assert not (tmp_path / "idx" / "CURRENT").exists()  # nothing was published
