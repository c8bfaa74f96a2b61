"""The online head as one TorchScript graph for serving: the math of ``TwoTower.encode_online``, less overhead.

At request time the head is a few dozen small ops on a handful of rows, so eager PyTorch spends most of its
time in Python dispatch, not arithmetic: 1.1 ms per call at batch 1 against 0.54 ms traced (2.2 against
1.1 ms at batch 16; the serve_load benchmark's model, timed in-process). The traced graph takes flat tensors and
always computes the subject-item term (multiplied by 0 where there is none, so the value is unchanged), which
makes it branch-free: one trace serves every batch size.

A trace is only trusted after it matched eager on random probes of several batch sizes; if it does not, or
tracing fails, the service runs the eager head and logs why. ``TWOTOWER_TRACE_HEAD=0`` turns tracing off.
A reload does not trace again: the new encoder reuses the graph of the one it replaces, bound to the new
model's tensors (:func:`rebind`), because every trace costs memory that TorchScript never gives back.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from ..features.inputs import Context, ItemInputs, UserInputs
from ..model import TwoTower

log = logging.getLogger(__name__)
TRACE_ATOL = 1e-5


def flatten(state: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, ...]:
    """The head's inputs as a flat tuple (the traced graph's signature); ``state`` float32 [B, T, D]."""
    ev, subj = ctx.events, ctx.subject
    h = ev.history
    return (state, h.item, h.author, h.feat, ev.actions, ev.surface, ev.gap, ev.length,
            ctx.surface, ctx.hour, ctx.weekday, ctx.since_last, subj.item, subj.author, subj.feat)  # fmt: skip


class _FlatOnline(nn.Module):
    """``encode_online`` over flat tensors, without the data-dependent subject branch."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, state, hist_item, hist_author, hist_feat, actions, ev_surface, ev_gap, length,
                surface, hour, weekday, since_last, subj_item, subj_author, subj_feat) -> torch.Tensor:  # fmt: skip
        m = self.model
        request = m.head.request(surface, hour, weekday, since_last)
        request = m.add_subject(request, ItemInputs(subj_item, subj_author, subj_feat))  # always: no branch
        events = UserInputs(
            subj_item, subj_item, ItemInputs(hist_item, hist_author, hist_feat), actions, ev_surface, ev_gap, length
        )  # fmt: skip  (user fields are unused by the head)
        return m.head(state, m.event_tokens(events), length, request)


def random_context(model: TwoTower, B: int, F: int, gen: torch.Generator) -> tuple[torch.Tensor, Context]:
    """Random but valid head inputs for ``B`` requests with ``F`` feature tokens per item (states with missing
    rows, ragged events, some subjects)."""
    cfg = model.cfg
    T, C, D, H = cfg.state_tokens, cfg.context_len, cfg.dim, cfg.num_hashes

    def ids(buckets: int, *shape: int) -> torch.Tensor:
        return torch.randint(1, buckets, shape, generator=gen)

    state = torch.randn(B, T, D, generator=gen) * (torch.rand(B, T, 1, generator=gen) > 0.3)
    length = torch.randint(0, C + 1, (B,), generator=gen)
    valid = (torch.arange(C)[None, :] < length[:, None]).long()  # [B, C]
    events = UserInputs(
        user=torch.zeros(B, H, dtype=torch.int64),
        user_feat=torch.zeros(B, H, dtype=torch.int64),
        history=ItemInputs(
            ids(cfg.item_buckets, B, C, H) * valid[..., None],
            ids(cfg.author_buckets, B, C, H) * valid[..., None],
            ids(cfg.feature_buckets, B, C, F) * valid[..., None],
        ),  # fmt: skip
        actions=(torch.rand(B, C, max(cfg.num_actions, 1), generator=gen) > 0.5).float() * valid[..., None],
        surface=torch.randint(0, cfg.num_surfaces + 1, (B, C), generator=gen) * valid,
        gap=torch.randint(0, cfg.time_buckets, (B, C), generator=gen) * valid,
        length=length,
    )
    has = (torch.rand(B, 1, generator=gen) > 0.5).long()
    ctx = Context(
        events=events,
        surface=torch.randint(0, cfg.num_surfaces + 1, (B,), generator=gen),
        hour=torch.randint(0, 24, (B,), generator=gen),
        weekday=torch.randint(0, 7, (B,), generator=gen),
        since_last=torch.randint(0, cfg.time_buckets, (B,), generator=gen),
        subject=ItemInputs(
            ids(cfg.item_buckets, B, H) * has, ids(cfg.author_buckets, B, H) * has, ids(cfg.feature_buckets, B, F) * has
        ),  # fmt: skip
    )
    return state, ctx


def rebind(graph: torch.jit.ScriptModule, flat: nn.Module) -> torch.jit.ScriptModule | None:
    """A copy of ``graph`` (a trace of another model of the same structure) that computes with ``flat``'s
    parameters and buffers (shared, not copied); None when their names differ.

    Why: every ``torch.jit.trace`` registers new TorchScript types and functions, with their optimised
    execution plans, in TorchScript's process-wide compilation unit, which never frees them: ~3 MiB per trace
    of the head, so RSS grew with every reload (issue 17). A copy keeps the template's types, so a reload
    compiles nothing. ``copy.deepcopy`` briefly duplicates the template's tensors; they are freed once rebound.
    """
    tensors = dict(flat.named_parameters())
    tensors.update(flat.named_buffers())
    names = [n for n, _ in graph.named_parameters()] + [n for n, _ in graph.named_buffers()]
    if sorted(names) != sorted(tensors):
        return None
    copied = copy.deepcopy(graph)
    for name in names:
        *path, leaf = name.split(".")
        owner = copied
        for part in path:
            owner = getattr(owner, part)
        owner._c.setattr(leaf, tensors[name])  # the slot the graph reads (prim::GetAttr), not a Python attribute
    return copied


class OnlineEncoder:
    """``encoder(state [B, T, D], ctx) -> unit user vectors [B, D]``: the traced head, or eager as a fallback.

    ``feat_width``: feature tokens per item (F of the served item table). ``traced``: whether the graph is in
    use; ``reason``: why not, when it is not.
    """

    def __init__(self, model: TwoTower, feat_width: int, trace: bool = True, like: OnlineEncoder | None = None) -> None:
        self.model, self.feat_width = model.eval(), feat_width
        self.graph: torch.jit.ScriptModule | None = None
        self.reason = "tracing is off (TWOTOWER_TRACE_HEAD=0)" if not trace else ""
        if trace:
            try:
                self.graph = self._trace(like.graph if like is not None and like.feat_width == feat_width else None)
            except Exception as exc:  # tracing is an optimisation: never a reason not to serve
                self.graph, self.reason = None, f"{type(exc).__name__}: {exc}"
            if self.graph is None:
                log.warning("serving the eager online head (slower): %s", self.reason)

    @property
    def traced(self) -> bool:
        """Whether the traced graph is in use (else the eager head; ``reason`` says why)."""
        return self.graph is not None

    def _trace(self, template: torch.jit.ScriptModule | None) -> torch.jit.ScriptModule | None:
        """The graph to serve, checked against eager: ``template`` (a graph of the encoder this one replaces)
        bound to this model's tensors when it fits, else a new trace; None when the trace disagrees."""
        gen = torch.Generator().manual_seed(0)
        flat = _FlatOnline(self.model).eval()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice; the probes below are the check
            if template is not None:
                graph = rebind(template, flat)
                if graph is not None and self._disagreement(graph, gen) is None:
                    return graph
                log.info("the previous head graph does not fit the new model; tracing it anew")
            example = flatten(*random_context(self.model, 3, self.feat_width, gen))
            graph = torch.jit.trace(flat, example, check_trace=False)
            self.reason = self._disagreement(graph, gen) or ""
        return None if self.reason else graph

    def _disagreement(self, graph, gen: torch.Generator) -> str | None:
        """Why ``graph`` cannot stand in for eager ``encode_online`` (random probes at batch 1, 2, 7), or None."""
        for B in (1, 2, 7):
            state, ctx = random_context(self.model, B, self.feat_width, gen)
            want = self.model.encode_online(state, ctx)
            got = graph(*flatten(state, ctx))
            err = float((got - want).abs().max())
            if got.shape != want.shape or not err <= TRACE_ATOL:
                return f"the traced head differs from eager by {err:.2e} at batch {B}"
        return None

    def __call__(self, state: torch.Tensor, ctx: Context) -> torch.Tensor:
        with torch.inference_mode():
            if self.graph is not None:
                return self.graph(*flatten(state, ctx))
            return self.model.encode_online(state, ctx)
