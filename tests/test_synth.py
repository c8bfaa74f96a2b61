import numpy as np
import pyarrow.parquet as pq

from twotower.data import LogSchema, PrepareConfig, SequenceData, prepare_files
from twotower.data.synth import generate


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
