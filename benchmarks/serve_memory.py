"""Where a serving worker's memory goes: the resident memory (RSS, anonymous and file-backed) of one process
after each part of a served bundle is loaded, in the order ``load_bundle`` loads them (issue 22).

Parts: the published index (FAISS structure, ids, the id -> label table; its rows are a memory map, touched
later by the searches), the model, the memory-mapped dataset and the featurizer's item tables, and the item
id table (id strings and the id -> row dict). A serving worker then touches the index's rows as its searches
re-score them. Usage::

    python benchmarks/serve_memory.py --root runs/bench_serve/topics-10000000/root \
        --out benchmarks/results/serve_memory_10m.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def memory() -> dict[str, int]:
    """This process's VmRSS / RssAnon / RssFile in MiB."""
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[f"{key}_mib"] = int(value.split()[0]) // 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="an artifact root (twotower serve-prepare, or serve_load.py's)")
    ap.add_argument("--out", default="benchmarks/results/serve_memory.json")
    args = ap.parse_args()
    import faiss  # noqa: F401  (imported before the first reading: the floor includes every library)
    import numpy as np  # noqa: F401
    import torch  # noqa: F401

    from twotower.data import SequenceData
    from twotower.features import Featurizer
    from twotower.index.publish import load_current
    from twotower.model.checkpoint import load_model, served_dataset
    from twotower.serve.bundle import item_id_table

    root = Path(args.root)
    steps = [("imports", memory())]
    index = load_current(root / "index")
    steps.append(("index", memory()))
    model_dir = root / "models" / index.model_version
    model, cfg, _ = load_model(model_dir)  # every part is kept referenced until the end, as a worker keeps it
    steps.append(("model", memory()))
    data = SequenceData.load(served_dataset(root, model_dir), mmap=True)
    feat = Featurizer(data, cfg)
    steps.append(("dataset and featurizer", memory()))
    table = item_id_table(data)
    steps.append(("item id table", memory()))
    kept = (model, feat, table)
    rows = []
    for (name, now), (_, before) in zip(steps, [steps[0], *steps[:-1]]):
        delta = {k: now[k] - before[k] for k in now}
        rows.append({"part": name, **now, **{f"added_{k}": v for k, v in delta.items()}})
        print(f"{name:<24} RSS {now['VmRSS_mib']:>7,} MiB  (+{delta['VmRSS_mib']:,}: anonymous "
              f"+{delta['RssAnon_mib']:,}, file-backed +{delta['RssFile_mib']:,})")  # fmt: skip
    rows_mib = index.vectors.nbytes / 2**20
    print(f"the index's rows ({index.vectors.dtype}, memory-mapped, touched by the searches): {rows_mib:,.0f} MiB")
    del kept
    doc = {
        "benchmark": "serve_memory",
        "protocol": "n/a: memory, no quality figure",
        "seeds": [0],
        "root": str(root),
        "items": int(len(index)),
        "rows": rows,
        "summary": {
            **{f"{r['part'].replace(' ', '_')}_added_rss_mib": r["added_VmRSS_mib"] for r in rows[1:]},
            "loaded_rss_mib": steps[-1][1]["VmRSS_mib"],
            "index_rows_mib": round(rows_mib, 1),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
