"""twotower: two-tower (dual-encoder) retrieval from interaction logs to an online top-K service.

The Python API (:mod:`twotower.api`) is imported on first use, so ``import twotower`` (and the CLI's
``--help``) stays free of torch::

    import twotower
    data = twotower.prepare(events_df, out="data/")
    run = twotower.train(data, out="runs/r1", time_budget=300)
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = ("prepare", "train", "Run", "Retriever", "Recommendation")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'twotower' has no attribute {name!r}")
