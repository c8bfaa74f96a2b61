"""twotower: two-tower (dual-encoder) retrieval from interaction logs to an online top-K service."""

__version__ = "0.1.0"
