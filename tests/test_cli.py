import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import small_run_config

from twotower import config as cfgmod
from twotower.cli import COMMANDS, Command, build_parser, main


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
    assert main([*pq, "--pq-bits", "4", "--refine-factor", "8", "--recall-floor", "0", "--rows-dtype", "float16"]) == 0
    built = json.loads((root / "versions" / current_version(root) / "manifest.json").read_text())["config"]
    assert (built["pq_bits"], built["refine_factor"], built["pq_m"], built["rows_dtype"]) == (4, 8, 4, "float16")
    served = load_current(root, expect_model_version=version)  # re-scores from float16 rows, memory-mapped
    assert served.vectors.dtype == np.float16 and isinstance(served.vectors, np.memmap)
    assert main([*pq, "--rows-dtype", "int8"]) == 2 and "rows_dtype" in capsys.readouterr().err


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
    # Python's own SIGINT handler, even when the runner started us with SIGINT ignored (a shell's background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    run = tmp_path / "run"
    try:
        assert train(synth_data, run, "--config", str(trained[0])) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("interrupted; the last checkpoint (epoch 0, step 2) is ")
    assert err.endswith(f"continue with: twotower train --data {synth_data} --out {run} --resume")
    monkeypatch.setattr(Trainer, "step", real_step)
    assert train(synth_data, run, "--resume") == 0


def write_export(emb: Path, n: int = 300, d: int = 16):
    """A small embeddings export (random unit vectors) as `twotower export` writes it: (directory, vectors)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb.mkdir()
    np.save(emb / "ids.npy", np.arange(n, dtype=np.int64))
    np.save(emb / "embeddings.npy", x)
    manifest = {"model_version": "a" * 16, "dim": d, "count": n, "dtype": "float32", "created_at": "now"}
    (emb / "manifest.json").write_text(json.dumps(manifest))
    return emb, x


def test_index_build_bad_knobs_and_damaged_exports_are_one_line_errors(tmp_path, capsys):
    """--hnsw-m 0 segfaulted FAISS and a NaN vector hung HNSW; a damaged export manifest was a traceback."""
    import numpy as np

    emb, x = write_export(tmp_path / "emb")
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


# --- the command list, light start-up, one exit-code mapping ----------------------------------------------------

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli_in_child(*argv: str, cwd: Path | None = None) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run ``main(argv)`` in a fresh interpreter; return the heavy modules it loaded and the process."""
    code = (
        "import json, sys\n"
        "from twotower.cli import main\n"
        "try:\n"
        f"    status = main({list(argv)!r})\n"
        "except SystemExit as exc:\n"
        "    status = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'faiss', 'fastapi', 'uvicorn') if m in sys.modules)\n"
        "print(json.dumps({'status': status, 'heavy': heavy}), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["status"] in (0, None), proc.stderr
    return report["heavy"], proc


def test_help_lists_every_command_without_importing_torch():
    heavy, proc = run_cli_in_child("--help")
    assert heavy == []  # no torch, no faiss, no web stack: the list comes from COMMANDS alone
    for name in COMMANDS:
        assert name in proc.stdout


def test_prepare_help_does_not_import_torch():
    heavy, proc = run_cli_in_child("prepare", "--help")
    assert "torch" not in heavy and "--num-hashes" in proc.stdout


def test_synth_then_prepare_run_without_torch(tmp_path):
    heavy, _ = run_cli_in_child(
        "synth", "--users", "30", "--items", "20", "--events", "400", "--out", "log.csv", cwd=tmp_path
    )
    assert "torch" not in heavy and (tmp_path / "log.csv").is_file()
    heavy, proc = run_cli_in_child("prepare", "--log", "log.csv", "--out", "data", cwd=tmp_path)
    assert "torch" not in heavy and "written    data" in proc.stdout
    assert (tmp_path / "data" / "manifest.json").is_file()


def test_index_list_runs_without_torch(tmp_path):
    """Listing versions reads manifests only (the index layer may not import the model side)."""
    emb, _ = write_export(tmp_path / "emb")
    assert main(["index", "build", "--emb", str(emb), "--out", str(tmp_path / "idx"), "--backend", "exact"]) == 0
    heavy, proc = run_cli_in_child("index", "list", "--root", str(tmp_path / "idx"))
    assert "torch" not in heavy and "exact" in proc.stdout


def test_every_command_declares_its_arguments():
    """The full parser (every command module imported) builds; each command's --help parses."""
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name, "--help"])
        assert info.value.code == 0


def test_a_broken_command_module_is_a_traceback_not_an_invalid_choice(monkeypatch):
    """An ImportError under a command used to make it vanish ("invalid choice"); now it surfaces as itself."""
    monkeypatch.setitem(COMMANDS, "train", Command("no_such_module", "declare_train", "train"))
    with pytest.raises(ModuleNotFoundError):
        main(["train", "--help"])


def test_usage_and_config_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "d")]) == 2
    assert "prepare needs --dataset ml-1m or --log FILE" in capsys.readouterr().err
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,timestamp\nu,i,1\n")
    assert main(["prepare", "--log", str(log), "--num-hashes", "0", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error: --num-hashes: ")
    store = f"sqlite:///{tmp_path}/s.db"
    assert main(["refresh-states", "--run", str(tmp_path), "--store", store, "--as-of", "yesterday"]) == 2
    assert "--as-of: cannot read time 'yesterday'" in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()  # refused before the store was created


def test_a_refused_value_is_reported_under_its_flag():
    """By the error's ``field`` where it has one, else by checking the flags one at a time; never by message."""
    from dataclasses import dataclass

    from twotower.cli.options import replace_checked
    from twotower.errors import ConfigError

    @dataclass
    class Knobs:
        top_k: int = 1
        beam_width: int = 1

        def __post_init__(self) -> None:
            if self.beam_width < 0:
                raise ValueError("must be >= 0")  # names no field
            if self.top_k > 100:
                exc = ConfigError("too large")
                exc.field = "top_k"
                raise exc
            if self.top_k * self.beam_width > 50:
                raise ConfigError("the product must be <= 50")

    assert replace_checked(Knobs(), {"top_k": 5}) == Knobs(top_k=5)
    for values, says in [
        ({"top_k": 500, "beam_width": 2}, "--top-k: too large"),
        ({"top_k": 2, "beam_width": -1}, "--beam-width: must be >= 0"),
        ({"top_k": 10, "beam_width": 10}, "command line: the product must be <= 50"),
    ]:
        with pytest.raises(ConfigError) as info:
            replace_checked(Knobs(), values)
        assert str(info.value) == says


def test_serve_refuses_a_directory_that_is_not_an_artifact_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TWOTOWER_ADMIN_TOKEN", "a-long-enough-admin-token")
    assert main(["serve", "--artifacts", str(tmp_path)]) == 2  # was SystemExit: status 1
    assert f"{tmp_path} is not an artifact root; run `twotower serve-prepare` first" in capsys.readouterr().err


def test_exit_codes_come_from_one_mapping(monkeypatch, capsys):
    """OSError -> 2 with one line, KeyboardInterrupt -> 130, anything else is a bug and propagates."""
    import twotower.cli.data as data_cmds

    def fails(exc):
        def cmd(args):
            raise exc

        return cmd

    argv = ["synth", "--users", "1", "--items", "1", "--events", "1", "--out", "x.csv"]
    monkeypatch.setattr(data_cmds, "cmd_synth", fails(PermissionError("x.csv: permission denied")))
    assert main(argv) == 2 and capsys.readouterr().err == "error: x.csv: permission denied\n"
    monkeypatch.setattr(data_cmds, "cmd_synth", fails(KeyboardInterrupt()))
    assert main(argv) == 130 and "interrupted: synth did not finish" in capsys.readouterr().err
    monkeypatch.setattr(data_cmds, "cmd_synth", fails(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(argv)


def test_prepare_maps_a_ratings_column_to_actions_with_the_action_flag(tmp_path, capsys):
    """A first run on a ratings file: --action rules (with --action-cols) and no preprocessing."""
    log = tmp_path / "ratings.csv"
    log.write_text("user_id,item_id,timestamp,rating,click\nu1,i1,1,4.5,0\nu1,i2,2,2,1\nu2,i1,3,,1\nu2,i3,4,3.5,0\n")
    out = tmp_path / "d"
    argv = ["prepare", "--log", str(log), "--action-cols", "click", "--out", str(out)]
    assert main([*argv, "--action", "liked: rating >= 3.5", "--action", "disliked: rating <= 2"]) == 0
    assert "actions    click, liked, disliked" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["action_rules"] == {"liked": "rating >= 3.5", "disliked": "rating <= 2"}
    assert sorted(np.load(out / "event_actions.npy").tolist()) == [1, 2, 2, 5]  # the null rating: click only
    assert main([*argv, "--action", "liked: rating => 4"]) == 2
    assert capsys.readouterr().err.startswith("error: --action: action rule 'liked: rating => 4': ")
    assert main([*argv, "--action", "click: rating >= 4"]) == 2
    assert "error: --action-cols / --action: action name(s) ['click'] used twice" in capsys.readouterr().err
    assert main([*argv, "--action", "a: rating > 1", "--action", "a: rating > 2"]) == 2
    assert "action 'a' is given twice" in capsys.readouterr().err


def test_delimiter_by_name_or_escape_and_a_clear_error_otherwise(tmp_path, capsys):
    """`--delimiter '\\t'` (what a shell passes for a typed \\t) and `--delimiter tab` read a tab-separated
    file; a two-character delimiter is one error line, exit 2 (was a traceback from Arrow)."""
    log = tmp_path / "ratings.inter"  # tab-separated under a name that does not say so
    log.write_text("user_id\titem_id\ttimestamp\nu1\ti1\t1\nu1\ti2\t2\nu2\ti1\t3\nu2\ti3\t4\n")
    for i, given in enumerate(["\\t", "tab", "TAB", "\t"]):
        assert main(["prepare", "--log", str(log), "--delimiter", given, "--out", str(tmp_path / f"d{i}")]) == 0
        assert json.loads((tmp_path / f"d{i}" / "manifest.json").read_text())["num_events"] == 4
    capsys.readouterr()
    assert main(["prepare", "--log", str(log), "--delimiter", ";;", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: delimiter ';;' is not one character") and "tab" in err
    assert not (tmp_path / "bad").exists()


def test_mine_negatives_then_train_with_them_from_the_command_line(trained, synth_data, tmp_path, capsys):
    """`mine-negatives` writes a versioned directory; `train --hard-negatives --loss` trains with it (a config
    given), records the version; on --resume the flags are refused; a finished OUT is refused without
    --overwrite."""
    cfg_file, run = trained
    mined = tmp_path / "mined"
    args = ["mine-negatives", "--run", str(run), "--out", str(mined), "--from", "3", "--to", "20", "--count", "4"]
    assert main([*args, "--no-progress"]) == 0
    assert "mined" in capsys.readouterr().out
    assert main([*args, "--no-progress"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--no-progress", "--count", "40"]) == 2  # the window holds 18 ranks: a clear refusal
    assert "count" in capsys.readouterr().err
    out = tmp_path / "r"
    extra = ["--config", str(cfg_file), "--hard-negatives", str(mined), "--hard-start", "0.5", "--loss", "bpr"]
    assert train(synth_data, out, *extra) == 0
    saved = json.loads((out / "config.json").read_text())["train"]
    manifest = json.loads((mined / "manifest.json").read_text())
    assert saved["hard_negatives_model"] == manifest["model_version"] and saved["loss"] == "bpr"
    assert train(synth_data, out, "--resume", "--loss", "softmax") == 2
    assert "--resume" in capsys.readouterr().err


def test_evaluate_writes_a_report_with_plots(trained, tmp_path, capsys):
    """`evaluate --report`: HTML + Markdown + JSON + PNGs; its summary equals `evaluate`'s own metrics and the
    segments cover every evaluated user."""
    _, run = trained
    rep = tmp_path / "rep"
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "e.json"), "--report", str(rep)]) == 0
    assert "report.html" in capsys.readouterr().out
    for name in ("hr_curve.png", "training.png", "segments.png"):
        assert (rep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html_text = (rep / "report.html").read_text()
    assert '<img src="hr_curve.png"' in html_text and "<table>" in html_text and "strict" in html_text
    report = json.loads((rep / "report.json").read_text())
    plain = json.loads((tmp_path / "e.json").read_text())
    assert report["summary"]["model"]["filtered"]["hr@10"] == pytest.approx(plain["model"]["filtered/hr@10"])
    assert report["summary"]["popularity"]["filtered"]["ndcg@10"] == pytest.approx(
        plain["popularity"]["filtered/ndcg@10"]
    )
    for by in report["segments"].values():
        assert sum(r["users"] for r in by["model"]) == report["users"]
    assert report["protocol"] == "strict" and report["config"]["train"]["epochs"] == 1


def test_report_curves_and_segments_are_what_they_say():
    from twotower.evaluate.report import history_edges, hr_curve, segments

    ranks = np.array([0, 3, 9, 10, 150, 400])
    assert hr_curve(ranks, np.array([1, 10, 200])).tolist() == [1 / 6, 3 / 6, 5 / 6]
    key = np.array([1, 1, 5, 5, 9, 9])
    rows = segments(ranks, key, np.array([0, 5, 10]), ["low", "high"])
    assert [r["users"] for r in rows] == [2, 4] and rows[0]["hr@10"] == 1.0 and rows[1]["hr@10"] == 0.25
    edges, labels = history_edges(np.array([1, 2, 3, 4, 100]))
    assert edges[0] == 1 and edges[-1] == 101 and len(labels) == len(edges) - 1


def test_prepare_and_index_build_show_progress_unless_told_not_to(tmp_path, capsys):
    from twotower.data.synth import generate

    generate(50, 30, 600, tmp_path / "log.parquet", seed=3, progress=False)
    base = ["prepare", "--log", str(tmp_path / "log.parquet"), "--action-cols", "click,like"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "prepare: read log" in err and "600" in err
    assert main([*base, "--out", str(tmp_path / "b"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "prepare: read log" not in captured.err and "written" in captured.out
