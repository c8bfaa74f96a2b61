"""``twotower evaluate --report DIR``: an evaluation report as static files (HTML, Markdown, PNG plots, JSON).

What it holds, for the model beside the popularity baseline on one split and protocol:

* **HR@K curves** (= Recall@K with one target per user) for K = 1..200, seen items removed, and ``[all]``;
* **training curves** from the run's ``metrics.csv``: the training loss by step and validation NDCG@10 / HR@10
  by epoch;
* **segments**: users by history length (quartiles of the evaluated users) and targets by the popularity
  decile of their item (training counts), HR@10 / NDCG@10 per segment for both;
* the **protocol**, the run's config, and for a published index (``--index-root``) its recall and QPS.

Matplotlib with the Agg backend, no server; the HTML only links the PNGs next to it.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np

from ..data.dataset import SequenceData
from ..features import Featurizer
from ..model import TwoTower
from .evaluator import model_ranks, popularity_ranks
from .metrics import summarize

CURVE_KS = np.unique(np.round(np.geomspace(1, 200, 40)).astype(int))


def hr_curve(ranks: np.ndarray, ks: np.ndarray = CURVE_KS) -> np.ndarray:
    """HR@K for each K of ``ks`` from 0-based ranks [U] -> float [len(ks)]."""
    r = np.asarray(ranks)
    return np.array([float(np.mean(r < k)) if len(r) else float("nan") for k in ks])


def segments(ranks: np.ndarray, key: np.ndarray, edges: np.ndarray, labels: list[str]) -> list[dict]:
    """HR@10 / NDCG@10 of the ranks [U] whose ``key`` [U] falls in each ``[edges[i], edges[i+1])``."""
    out = []
    for i, label in enumerate(labels):
        m = (key >= edges[i]) & (key < edges[i + 1])
        s = summarize(ranks[m], (10,)) if m.any() else {"hr@10": float("nan"), "ndcg@10": float("nan")}
        out.append({"segment": label, "users": int(m.sum()), "hr@10": s["hr@10"], "ndcg@10": s["ndcg@10"]})
    return out


def history_edges(lengths: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Quartile edges of history lengths [U] (deduplicated) and their labels ``"a-b events"``."""
    q = np.unique(np.percentile(lengths, [0, 25, 50, 75, 100]).astype(int)) if len(lengths) else np.array([0, 1])
    edges = np.append(q[:-1], q[-1] + 1)
    labels = [f"{edges[i]}-{edges[i + 1] - 1} events" for i in range(len(edges) - 1)]
    return edges, labels


def read_training_curves(run: Path) -> dict[str, list[tuple[float, float]]]:
    """``metrics.csv`` -> {"train/loss": [(step, value)], "valid/filtered/ndcg@10": [(epoch, value)], ...}."""
    out: dict[str, list[tuple[float, float]]] = {}
    path = run / "metrics.csv"
    if not path.is_file():
        return out
    with path.open() as f:
        for row in csv.DictReader(f):
            try:
                kind, name, value = row["kind"], row["name"], float(row["value"])
                x = float(row["step"]) if kind == "train" else float(row["epoch"])
            except (KeyError, TypeError, ValueError):
                continue  # a line cut by a kill
            out.setdefault(f"{kind}/{name}", []).append((x, value))
    return out


def _plots(out: Path, curves: dict, training: dict, seg: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, style in (("model", "-"), ("popularity", "--")):
        ax.plot(CURVE_KS, curves[name]["filtered"], style, label=f"{name} (seen removed)")
        ax.plot(CURVE_KS, curves[name]["all"], style, alpha=0.4, label=f"{name} [all]")
    ax.set(xscale="log", xlabel="K", ylabel="HR@K = Recall@K", title="Hit rate by cut-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "hr_curve.png", dpi=100)
    files.append("hr_curve.png")
    plt.close(fig)

    if training:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        if "train/loss" in training:
            x, y = zip(*training["train/loss"])
            a.plot(x, y)
        a.set(xlabel="step", ylabel="training loss", title="Training loss")
        for key in ("valid/filtered/ndcg@10", "valid/filtered/hr@10"):
            if key in training:
                x, y = zip(*training[key])
                b.plot(x, y, "o-", label=key.removeprefix("valid/"))
        b.set(xlabel="epoch", title="Validation (the checkpoint is chosen here)")
        b.legend(fontsize=8)
        for axis in (a, b):
            axis.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=100)
        files.append("training.png")
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, (title, rows) in zip(axes, seg.items()):
        labels = [r["segment"] for r in rows["model"]]
        x = np.arange(len(labels))
        axis.bar(x - 0.2, [r["hr@10"] for r in rows["model"]], 0.4, label="model")
        axis.bar(x + 0.2, [r["hr@10"] for r in rows["popularity"]], 0.4, label="popularity")
        axis.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        axis.set(ylabel="HR@10 (seen removed)", title=title)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "segments.png", dpi=100)
    files.append("segments.png")
    plt.close(fig)
    return files


def _table(rows: list[dict], keys: list[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(
    out: str | Path,
    model: TwoTower,
    feat: Featurizer,
    scheme: str,
    split: str = "test",
    protocol: str = "strict",
    run: str | Path | None = None,
    index_manifest: dict | None = None,
    model_version: str = "",
    max_users: int | None = None,
) -> dict:
    """Write ``out/report.html``, ``report.md``, ``report.json`` and the PNGs; returns the report's data."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data: SequenceData = feat.data
    users, rows, m_all, m_filt = model_ranks(model, feat, scheme, split, max_users, protocol=protocol)
    _, _, p_all, p_filt = popularity_ranks(data, scheme, split, max_users)
    summary = {
        name: {"filtered": summarize(f), "all": summarize(a)}
        for name, f, a in (("model", m_filt, m_all), ("popularity", p_filt, p_all))
    }
    curves = {
        name: {"filtered": hr_curve(f), "all": hr_curve(a)}
        for name, f, a in (("model", m_filt, m_all), ("popularity", p_filt, p_all))
    }
    hist_len = rows - data.user_offsets[users]
    h_edges, h_labels = history_edges(hist_len)
    counts = data.item_train_counts(scheme)
    target_pop = counts[data.event_item[rows]]
    deciles = np.percentile(counts, np.arange(0, 101, 10))
    d_edges = np.append(deciles[:-1], np.inf)
    d_labels = [f"decile {i + 1} (>= {int(deciles[i])})" for i in range(10)]
    seg = {
        "users by history length": {
            "model": segments(m_filt, hist_len, h_edges, h_labels),
            "popularity": segments(p_filt, hist_len, h_edges, h_labels),
        },
        "targets by item popularity": {
            "model": segments(m_filt, target_pop, d_edges, d_labels),
            "popularity": segments(p_filt, target_pop, d_edges, d_labels),
        },
    }
    training = read_training_curves(Path(run)) if run is not None else {}
    config = (
        json.loads((Path(run) / "config.json").read_text()) if run and (Path(run) / "config.json").is_file() else {}
    )
    plots = _plots(out, curves, training, seg)
    report = {
        "protocol": protocol,
        "split": split,
        "scheme": scheme,
        "users": int(len(users)),
        "items": int(data.num_items),
        "model_version": model_version,
        "summary": summary,
        "curves": {"k": CURVE_KS.tolist(), **{n: {v: c.tolist() for v, c in d.items()} for n, d in curves.items()}},
        "segments": seg,
        "index": index_manifest or None,
        "config": config,
        "plots": plots,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    md = [
        f"# Evaluation report: model {model_version}",
        "",
        f"Split `{split}` ({scheme}), protocol `{protocol}`, {len(users):,} users, every one of {data.num_items:,} "
        "items ranked; *filtered* = the user's seen items removed, *all* = nothing removed.",
        "",
    ]
    rows_md = [
        {"": f"{name} [{v}]", **{k: summary[name][v][k] for k in ("hr@10", "ndcg@10", "hr@100", "mrr")}}
        for name in ("model", "popularity")
        for v in ("filtered", "all")
    ]
    md += _table(rows_md, ["", "hr@10", "ndcg@10", "hr@100", "mrr"]) + [""]
    md += ["![HR@K](hr_curve.png)", ""]
    if "training.png" in plots:
        md += ["## Training", "", "![training](training.png)", ""]
    md += ["## Segments (HR@10 / NDCG@10, seen removed)", ""]
    for title, by in seg.items():
        merged = [
            {"segment": a["segment"], "users": a["users"], "model hr@10": a["hr@10"], "model ndcg@10": a["ndcg@10"],
             "popularity hr@10": b["hr@10"]}
            for a, b in zip(by["model"], by["popularity"])
        ]  # fmt: skip
        md += [f"### {title}", ""] + _table(merged, list(merged[0])) + [""]
    md += ["![segments](segments.png)", ""]
    if index_manifest:
        rec = index_manifest.get("recall", {})
        md += ["## Index", "", f"Backend `{index_manifest.get('config', {}).get('backend')}`, "
               f"{index_manifest.get('count', 0):,} items: recall@10 {rec.get('recall@10', float('nan')):.4f}, "
               f"recall@100 {rec.get('recall@100', float('nan')):.4f}, {rec.get('batched_qps', 0):,.0f} queries/s "
               "(batched) against exact search.", ""]  # fmt: skip
    if config:
        md += ["## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html(md))
    return report


def _html(md: list[str]) -> str:
    """The Markdown lines as a minimal HTML page (headings, tables, images, code; everything else escaped)."""
    body, in_table, in_code = [], False, False
    for line in md:
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            body.append(("<table>" if not in_table else "") + "<tr>" + "".join(
                f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")  # fmt: skip
            in_table = True
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:2px 8px;text-align:right}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>twotower report</title><style>{style}</style>" \
           f"</head><body>\n" + "\n".join(body) + "\n</body></html>\n"  # fmt: skip
