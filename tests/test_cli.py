import json

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
    from twotower.train.loop import load_model

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
    # a floor the ANN cannot reach: refused, CURRENT unchanged
    assert (
        main(
            [
                "index",
                "build",
                "--emb",
                str(emb),
                "--out",
                str(root),
                "--backend",
                "ivfflat",
                "--ivf-nprobe",
                "1",
                "--ivf-nlist",
                "16",
                "--recall-floor",
                "1.01",
            ]
        )
        == 2
    )
    assert "below the floor" in capsys.readouterr().err and current_version(root) == second
    assert main(["index", "rollback", "--root", str(root)]) == 0
    assert current_version(root) == first
    assert main(["index", "list", "--root", str(root)]) == 0
    # the IVF-PQ knobs reach the published config, and a miss names them
    pq = ["index", "build", "--emb", str(emb), "--out", str(root), "--backend", "ivfpq", "--pq-m", "4"]
    assert main([*pq, "--pq-bits", "4", "--refine-factor", "1", "--ivf-nprobe", "1", "--recall-floor", "1.01"]) == 2
    assert "--refine-factor" in capsys.readouterr().err and current_version(root) == first
    assert main([*pq, "--pq-bits", "4", "--refine-factor", "8", "--recall-floor", "0"]) == 0
    built = json.loads((root / "versions" / current_version(root) / "manifest.json").read_text())["config"]
    assert (built["pq_bits"], built["refine_factor"], built["pq_m"]) == (4, 8, 4)
