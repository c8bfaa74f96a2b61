"""What a stale cached user state costs, and what the online head buys back (seed 001 left it unquantified).

ML-1M in time order, leave-last-out test targets, the whole catalogue ranked with seen items removed; one
hybrid model (``configs/ml1m_hybrid.toml``), so every row has the same model size:

  (a) fresh      the offline encoder runs over the full history at request time (the fully online tower)
  (b) stale      only a cached state, snapshotted 1 day / 7 days before the request; no context
  (c) hybrid     the same stale state + the online head over the events since the snapshot (last C)
  (d) cold start users held out of training entirely: no state, the head over their last C events

plus (c) with the state stored as float16 / int8, and a daily refresh job simulated over the timeline.
Cost = CPU time per request of the user side (featurize + forward; the ANN search is the same for every
row), one thread, one request at a time. Target: (c) keeps >= 95 % of (a)'s Recall@100 at <= 10 % of its
compute. Usage::

    python benchmarks/freshness.py [--run RUN] [--data DIR] [--out benchmarks/results/freshness.json]

Without ``--run`` it trains ``configs/ml1m_hybrid.toml`` first (``--device cuda`` if you have one).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from twotower import config as cfgmod
from twotower.data import SequenceData, prepare_movielens
from twotower.evaluate.evaluator import encode_corpus, seen_mask
from twotower.evaluate.metrics import summarize, target_ranks
from twotower.features import Featurizer, gap_buckets
from twotower.jobs.refresh import refresh_states
from twotower.store import bytes_per_user, decode_states, encode_states, open_store
from twotower.train.batches import holdout_mask
from twotower.train.config import RunConfig
from twotower.train.load import load_run as load_model
from twotower.train.trainer import Trainer

DAY = 86400


def snapshot_rows(data: SequenceData, users: np.ndarray, target: np.ndarray, age_s: int) -> np.ndarray:
    """First event row of each user at or after ``ts[target] - age_s`` (the snapshot), within [offset, target]."""
    ts = data.event_ts
    owner = data.user_of_event()
    key = owner.astype(np.int64) * (1 << 34) + (ts - ts.min())  # sorted: by user, then time
    want = users.astype(np.int64) * (1 << 34) + (ts[target] - age_s - ts.min())
    return np.clip(np.searchsorted(key, want, side="left"), data.user_offsets[users], target)


def metrics(q: torch.Tensor, items: torch.Tensor, data: SequenceData, users, rows) -> dict[str, float]:
    ranks = []
    for lo in range(0, len(users), 1024):
        u, r = users[lo : lo + 1024], rows[lo : lo + 1024]
        target = torch.from_numpy(data.event_item[r].astype(np.int64))
        ranks.append(target_ranks(q[lo : lo + 1024] @ items.T, target, seen_mask(data, u, r)).numpy())
    m = summarize(np.concatenate(ranks), (10, 100))
    return {"hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"], "recall@100": m["hr@100"]}


@torch.no_grad()
def vectors(
    model, feat, users, rows, snap=None, hide_context=False, no_state=False, dtype=None, protocol="strict"
) -> torch.Tensor:
    """User vectors [U, D] for requests at ``rows``, the state snapshotted at ``snap`` (None = fresh).

    The context holds only events after the snapshot, as the service's does (it drops sent events the state
    already holds); there is no "(a+)" row of a fresh state plus those events again.
    """
    out = []
    data = feat.data
    for lo in range(0, len(users), 512):
        u, r = users[lo : lo + 512], rows[lo : lo + 512]
        s = r if snap is None else snap[lo : lo + 512]
        hist, ctx = feat.request(u, r, s, protocol=protocol)
        state = model.encode_state(hist)
        if no_state:
            state = torch.zeros_like(state)
        if dtype is not None:  # through the store's codec
            x = state.numpy()
            state = torch.from_numpy(decode_states(encode_states(x, dtype), dtype, x.shape[1], x.shape[2]))
        if hide_context:  # the server knows only the state: no events, time since the state's last event
            ctx.events.length.zero_()
            ctx.events.history.item.zero_()
            has = s > data.user_offsets[u]
            t_req = feat.request_time(u, r, protocol)  # the request's time under the protocol
            since = np.where(has, t_req - data.event_ts[np.maximum(s - 1, 0)], 0)
            ctx.since_last = torch.from_numpy(gap_buckets(since, model.cfg.time_buckets))
        out.append(model.encode_online(state, ctx))
    return torch.cat(out)


@torch.no_grad()
def cost_per_request(model, version, feat, users, rows, snap, store, user_ids, n: int = 256) -> dict[str, float]:
    """Cost per request of the user side on ONE thread: the full encoder vs a store read + the online head.

    CPU milliseconds per request one at a time (B = 1) and micro-batched (B = 64, what the service does under
    load), and model FLOPs per request (counted by torch's FlopCounterMode, batch of 64).
    """
    from torch.utils.flop_counter import FlopCounterMode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pick = np.random.default_rng(0).choice(len(users), min(n, len(users)), replace=False)
    shape = (model.cfg.state_tokens, model.cfg.dim)
    out: dict[str, float] = {}
    for B in (1, 64):
        t_fresh = t_hybrid = t_store = 0.0
        groups = [pick[i : i + B] for i in range(0, len(pick) - B + 1, B)]
        for i, g in enumerate(groups[:2] + groups):  # the first two warm up and are not counted
            w = float(i >= 2)
            u, r, s = users[g], rows[g], snap[g]
            t0 = time.thread_time()
            hist, ctx = feat.request(u, r, r)
            model.encode_online(model.encode_state(hist), ctx)
            t1 = time.thread_time()
            st = store.get_many(list(user_ids[u]), version, shape)
            t2 = time.thread_time()
            model.encode_online(torch.from_numpy(st.states), feat.context(u, s, r))
            t3 = time.thread_time()
            t_fresh, t_store, t_hybrid = t_fresh + w * (t1 - t0), t_store + w * (t2 - t1), t_hybrid + w * (t3 - t1)
        for key, t in (("fresh", t_fresh), ("hybrid", t_hybrid), ("store_read", t_store)):
            out[f"{key}_ms_b{B}"] = round(t / (len(groups) * B) * 1e3, 4)
    g = pick[:64]
    u, r, s = users[g], rows[g], snap[g]
    hist, ctx = feat.request(u, r, r)
    with FlopCounterMode(display=False) as fc:
        model.encode_online(model.encode_state(hist), ctx)
    out["fresh_mflops"] = round(fc.get_total_flops() / len(g) / 1e6, 3)
    st = torch.from_numpy(store.get_many(list(user_ids[u]), version, shape).states)
    ctx = feat.context(u, s, r)
    with FlopCounterMode(display=False) as fc:
        model.encode_online(st, ctx)
    out["hybrid_mflops"] = round(fc.get_total_flops() / len(g) / 1e6, 3)
    torch.set_num_threads(threads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="trained hybrid run (default: train configs/ml1m_hybrid.toml)")
    ap.add_argument("--config", default="configs/ml1m_hybrid.toml")
    ap.add_argument("--data", help="prepared ML-1M (default: the run's, or prepare into a temp dir)")
    ap.add_argument("--device", default="cpu", help="training device when --run is not given")
    ap.add_argument("--refresh-days", type=int, default=14, help="daily refreshes to simulate")
    ap.add_argument("--out", default="benchmarks/results/freshness.json")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    run = args.run
    data_dir = args.data or (Path(run, "data_path.txt").read_text().strip() if run else None)
    if data_dir is None:
        data_dir = f"{tmp.name}/data"
        prepare_movielens(data_dir)
    data = SequenceData.load(data_dir)
    if run is None:
        cfg = cfgmod.load(RunConfig, args.config)
        cfg.train.device = args.device
        run = f"{tmp.name}/run"
        Trainer(data, cfg, run, overwrite=True).fit(progress=True)
    model, cfg, version = load_model(run)
    feat = Featurizer(data, cfg.model)
    items = encode_corpus(model, feat)
    users, rows = data.eval_targets(cfg.train.split, "test")
    held = holdout_mask(data.num_users, cfg.train.holdout_users)[users]
    wu, wr = users[~held], rows[~held]  # warm users: trained, with a cached state
    snaps = {d: snapshot_rows(data, wu, wr, d * DAY) for d in (1, 7)}

    table: dict[str, dict] = {}

    def row(name: str, q: torch.Tensor, u, r, **extra) -> None:
        table[name] = {**metrics(q, items, data, u, r), "users": int(len(u)), **extra}
        m = table[name]
        print(f"{name:<34}{m['hr@10']:>8.4f}{m['ndcg@10']:>9.4f}{m['recall@100']:>11.4f}{m['users']:>7}", flush=True)

    print(f"model {version}; {len(wu)} warm test users, {int(held.sum())} held out (cold start)")
    print(f"{'':<34}{'HR@10':>8}{'NDCG@10':>9}{'Recall@100':>11}{'users':>7}")
    for pr in ("strict", "request_time"):  # strict: nothing of the test event; request_time: its time and surface
        tag = f"[{pr}] "
        row(tag + "(a) fresh: encoder at request", vectors(model, feat, wu, wr, protocol=pr), wu, wr)
        for d, s in snaps.items():
            has_state = float((s > data.user_offsets[wu]).mean())
            events = wr - s
            row(
                tag + f"(b) stale {d}d state only",
                vectors(model, feat, wu, wr, s, hide_context=True, protocol=pr),
                wu,
                wr,
                users_with_state=round(has_state, 4),
            )
            row(
                tag + f"(c) stale {d}d state + online head",
                vectors(model, feat, wu, wr, s, protocol=pr),
                wu,
                wr,
                users_with_state=round(has_state, 4),
                events_since_snapshot_median=float(np.median(events)),
                events_since_snapshot_p90=float(np.percentile(events, 90)),
            )
        for dt in ("float16", "int8"):
            row(
                tag + f"(c) stale 1d + head, {dt} state",
                vectors(model, feat, wu, wr, snaps[1], dtype=dt, protocol=pr),
                wu,
                wr,
                bytes_per_user=bytes_per_user(cfg.model.state_tokens, cfg.model.dim, dt),
            )
        hu, hr = users[held], rows[held]
        if len(hu):
            start = data.user_offsets[hu]
            row(
                tag + "(d) cold start: no state + head",
                vectors(model, feat, hu, hr, start, no_state=True, protocol=pr),
                hu,
                hr,
            )
            row(tag + "(d') same held-out users, fresh", vectors(model, feat, hu, hr, protocol=pr), hu, hr)

    # cost per request, with the 1-day states in a real SQLite store
    user_ids = data.user_ids().astype(str)
    with open_store(f"sqlite:///{tmp.name}/cost.db") as store:
        with torch.no_grad():
            st = model.encode_state(feat.histories_before(wu, snaps[1])).numpy()
        has = snaps[1] > data.user_offsets[wu]
        snap_ts = data.event_ts[snaps[1]]
        last = np.where(has, data.event_ts[np.maximum(snaps[1] - 1, 0)], -1)
        store.put_many(list(user_ids[wu[has]]), st[has], snap_ts[has], np.minimum(last[has], snap_ts[has] - 1), version)
        cost = cost_per_request(model, version, feat, wu, wr, snaps[1], store, user_ids)
    ratio = cost["hybrid_ms_b64"] / cost["fresh_ms_b64"]
    flop_ratio = cost["hybrid_mflops"] / cost["fresh_mflops"]
    print("\ncost per request, one thread      fresh (a)   hybrid (c)   ratio")
    for B in (1, 64):
        f, h = cost[f"fresh_ms_b{B}"], cost[f"hybrid_ms_b{B}"]
        print(
            f"  CPU ms, batch of {B:<3}        {f:>10.3f}   {h:>10.3f}   {h / f:>6.1%}"
            f"   (store read {cost[f'store_read_ms_b{B}']:.3f} ms)"
        )
    print(
        f"  model MFLOPs                 {cost['fresh_mflops']:>10.3f}   {cost['hybrid_mflops']:>10.3f}   "
        f"{flop_ratio:>6.1%}"
    )

    # a daily refresh cadence over the timeline: who needs a new state each day, and what it costs
    t_mid = int(np.median(data.event_ts)) // DAY * DAY
    days = []
    url = f"sqlite:///{tmp.name}/daily.db"
    for i in range(args.refresh_days + 1):
        r = refresh_states(run, url, as_of=t_mid + i * DAY, data_dir=data_dir, progress=False)
        days.append(
            {
                "as_of": r.as_of,
                "encoded": r.encoded,
                "seconds": round(r.seconds, 2),
                "users_with_history": r.users_with_history,
            }
        )
    daily = days[1:]
    print(
        f"daily refresh from {time.strftime('%Y-%m-%d', time.gmtime(t_mid))}: first (bulk) {days[0]['encoded']} "
        f"users in {days[0]['seconds']} s; then {np.mean([d['encoded'] for d in daily]):.0f} users/day on average "
        f"({np.mean([d['seconds'] for d in daily]):.2f} s/day)"
    )

    a, c = table["[strict] (a) fresh: encoder at request"], table["[strict] (c) stale 1d state + online head"]
    keep = c["recall@100"] / a["recall@100"]
    met = keep >= 0.95 and ratio <= 0.10
    print(
        f"(c) 1d keeps {keep:.1%} of (a)'s Recall@100 at {ratio:.1%} of its CPU time (batch of 64; "
        f"{cost['hybrid_ms_b1'] / cost['fresh_ms_b1']:.1%} one at a time) and {flop_ratio:.1%} of its FLOPs: "
        f"target {'MET' if met else 'NOT MET'} (>= 95 % at <= 10 %)"
    )
    out = {
        "benchmark": "freshness",
        "protocol": "both: rows tagged [strict] and [request_time]",
        "seeds": [cfg.train.seed],
        "model_version": version,
        "run": str(run),
        "rows": table,
        "cost_ms_per_request": cost,
        "hybrid_over_fresh_cpu_b64": round(ratio, 4),
        "hybrid_over_fresh_flops": round(flop_ratio, 4),
        "recall100_kept_1d": round(keep, 4),
        "target_met": met,
        "summary": {
            "strict_fresh_hr10": a["hr@10"],
            "strict_stale_1d_head_hr10": c["hr@10"],
            "request_time_fresh_hr10": table["[request_time] (a) fresh: encoder at request"]["hr@10"],
            "recall100_kept_1d": round(keep, 4),
            "hybrid_over_fresh_cpu_b64": round(ratio, 4),
        },
        "daily_refresh": days,
        "config": cfgmod.to_dict(cfg),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
