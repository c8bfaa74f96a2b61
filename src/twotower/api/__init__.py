"""The Python API: the whole pipeline from DataFrames, in the calls a notebook or a batch job makes.

    import twotower
    data = twotower.prepare(events_df, items=items_df, out="data/")          # pandas, polars, pyarrow or paths
    run = twotower.train(data, out="runs/r1", time_budget=300)               # no config: defaults from the data
    run.evaluate(protocol="strict")["primary"]                               # validation-chosen, test scored
    rec = twotower.Retriever.from_run(run, "artifacts/")                     # export, states, index, published
    rec.recommend("42", recent_events=[...], k=10)                           # the service's own code path
    ids, vectors = rec.encode_items(["Toy Story (1995)"])

The CLI is a thin layer over the same library calls; :class:`Retriever` runs a request through exactly what
``POST /v1/retrieve`` runs (validation, parsing, store lookup, the encoder, the index), so a test holds its
answer equal to the HTTP one.
"""

from __future__ import annotations

from .data import prepare
from .retriever import Recommendation, Retriever
from .run import Run, train

__all__ = ["Recommendation", "Retriever", "Run", "prepare", "train"]
