from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from twotower.data import LogSchema, PrepareConfig, SequenceData, prepare_files
from twotower.data.synth import generate
from twotower.errors import DataError


def test_synth_log_prepares_and_is_skewed(tmp_path):
    info = generate(500, 2000, 20000, tmp_path / "log.parquet", seed=3, chunk_users=128, progress=False)
    assert info["events"] == 20000
    t = pq.read_table(tmp_path / "log.parquet")
    assert t.num_rows == 20000
    cfg = PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface"))
    m = prepare_files(tmp_path / "log.parquet", tmp_path / "d", cfg)
    d = SequenceData.load(tmp_path / "d")
    counts = np.sort(np.bincount(d.event_item))[::-1]
    assert counts[:20].sum() > 0.1 * m["num_events"]  # Zipf head
    per_user = np.diff(d.user_offsets)
    assert per_user.max() > 10 * np.median(per_user)  # power-law activity
    assert (np.diff(d.event_ts)[np.diff(d.user_of_event()) == 0] >= 0).all()


def test_synth_csv_is_deterministic(tmp_path):
    generate(50, 100, 1000, tmp_path / "a.csv", seed=1, progress=False)
    generate(50, 100, 1000, tmp_path / "b.csv", seed=1, progress=False)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


@pytest.mark.parametrize(
    ("users", "items", "events", "seed"),
    [(300, 100, 1500, 37), (1000, 10, 5, 0)],  # a chunk's last user draws no events
)
def test_synth_users_without_events(tmp_path, users, items, events, seed):
    info = generate(users, items, events, tmp_path / "log.parquet", seed=seed, progress=False)
    assert info["events"] == events == pq.read_table(tmp_path / "log.parquet").num_rows
    assert info["users"] < users


@pytest.mark.parametrize("sizes", [(0, 10, 5), (10, -1, 5), (10, 10, 0)])
def test_synth_rejects_sizes_below_one(tmp_path, sizes):
    with pytest.raises(DataError, match="synth needs --users, --items and --events .*>= 1"):
        generate(*sizes, tmp_path / "log.parquet", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_synth_out_directory_is_an_error_and_leaves_nothing(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="--out .*d is a directory; give a file name ending in .parquet"):
        generate(10, 10, 50, tmp_path / "d", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and list((tmp_path / "d").iterdir()) == []


def test_synth_tsv_reads_back(tmp_path):
    generate(20, 10, 100, tmp_path / "log.tsv", progress=False)
    assert (tmp_path / "log.tsv").read_text().startswith("user_id\titem_id\ttimestamp\tclick\tlike\tsurface\n")
    cfg = PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface"))
    assert prepare_files(tmp_path / "log.tsv", tmp_path / "d", cfg)["num_events"] == 100


def test_successor_prob_gives_a_sequence_and_leaves_the_default_log_as_it_was(tmp_path):
    from twotower.data.synth import SUCCESSORS

    generate(200, 1000, 6000, tmp_path / "plain.parquet", seed=4, topics=10, progress=False)
    generate(200, 1000, 6000, tmp_path / "seq.parquet", seed=4, topics=10, successor_prob=0.7, progress=False)
    plain, seq = (pq.read_table(tmp_path / f"{n}.parquet") for n in ("plain", "seq"))
    assert plain["user_id"].equals(seq["user_id"]) and plain["timestamp"].equals(seq["timestamp"])  # items change

    def next_item_share(table) -> float:
        """How often a user's next item is one of the SUCCESSORS most frequent followers of the item before."""
        order = np.lexsort((table["timestamp"].to_numpy(), table["user_id"].to_numpy()))
        users, items = table["user_id"].to_numpy()[order], table["item_id"].to_numpy()[order]
        keep = users[:-1] == users[1:]
        pairs = list(zip(items[:-1][keep], items[1:][keep]))
        followers: dict = {}
        for pair, _ in Counter(pairs).most_common():
            top = followers.setdefault(pair[0], set())
            if len(top) < SUCCESSORS:
                top.add(pair[1])
        return float(np.mean([b in followers[a] for a, b in pairs]))

    assert next_item_share(seq) > next_item_share(plain) + 0.2
    generate(20, 30, 100, tmp_path / "again.parquet", seed=4, progress=False)  # the default path is unchanged:
    generate(20, 30, 100, tmp_path / "again2.parquet", seed=4, successor_prob=0.0, progress=False)
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(tmp_path / "again2.parquet"))
    with pytest.raises(DataError, match="successor_prob"):
        generate(20, 30, 100, tmp_path / "bad.parquet", successor_prob=1.5, progress=False)
