"""Candidate-tower throughput: items/s of the default tower (D = 64) over a 1M-item corpus, beside its FLOP bound.

The corpus is synthetic hashed items (2 item hashes, 2 author hashes, 4 feature tokens), pushed through the
real ``TwoTower.encode_items`` in batches, exactly as ``twotower export`` does. The FLOP bound is
``FLOPs per item`` (counted by torch's FlopCounterMode) divided into this machine's measured fp32 matmul
rate on the same threads. Target: >= 200k items/s on 2 cores. Usage::

    python benchmarks/export.py [--items 1000000] [--threads 2] [--out benchmarks/results/export.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from twotower.features.inputs import ItemInputs
from twotower.model import ModelConfig, TwoTower


def matmul_gflops(threads: int) -> float:
    """Best fp32 GEMM rate (GFLOP/s) on ``threads`` threads, with the candidate tower's own shapes."""
    a, b = torch.randn(65536, 320), torch.randn(320, 128)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * a.shape[0] * a.shape[1] * b.shape[1] / (time.perf_counter() - t0) / 1e9)
    return best


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/export.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(dim=64, item_buckets=1 << 20, author_buckets=1 << 16, feature_buckets=1 << 14)
    model = TwoTower(cfg).eval()
    g = torch.Generator().manual_seed(0)
    n = args.items
    items = ItemInputs(
        torch.randint(1, cfg.item_buckets, (n, 2), generator=g),
        torch.randint(1, cfg.author_buckets, (n, 2), generator=g),
        torch.randint(0, cfg.feature_buckets, (n, 4), generator=g),
    )
    with FlopCounterMode(display=False) as fc:
        model.encode_items(items[: args.batch])
    flops_per_item = fc.get_total_flops() / args.batch
    model.encode_items(items[: args.batch])  # warm-up
    t0 = time.perf_counter()
    for lo in range(0, n, args.batch):
        model.encode_items(items[lo : lo + args.batch]).numpy()
    secs = time.perf_counter() - t0
    rate = n / secs
    gemm = matmul_gflops(args.threads)
    bound = gemm * 1e9 / flops_per_item
    print(f"candidate tower D=64, {n:,} items, batches of {args.batch:,}, {args.threads} threads")
    print(f"measured      {rate:>12,.0f} items/s  ({secs:.2f} s)")
    print(f"FLOP bound    {bound:>12,.0f} items/s  ({flops_per_item / 1e3:.1f} kFLOP/item at {gemm:.1f} GFLOP/s GEMM)")
    met = "MET" if rate >= 200_000 else "NOT MET"
    print(f"measured / bound = {rate / bound:.1%}; target >= 200,000 items/s: {met}")
    out = {
        "benchmark": "export",
        "items": n,
        "threads": args.threads,
        "items_per_s": round(rate, 1),
        "flops_per_item": flops_per_item,
        "gemm_gflops": round(gemm, 2),
        "flop_bound_items_per_s": round(bound, 1),
        "target_met": rate >= 200_000,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
