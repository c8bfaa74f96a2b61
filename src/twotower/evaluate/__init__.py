"""Evaluation: pure metric functions, full-corpus evaluators, reports."""

from .evaluator import PRIMARY, evaluate_model, evaluate_popularity
from .metrics import KS, summarize, target_ranks

__all__ = ["KS", "PRIMARY", "evaluate_model", "evaluate_popularity", "summarize", "target_ranks"]
