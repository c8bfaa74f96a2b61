"""AdamW for the dense layers with an optional row-wise Adagrad for the embedding tables, as one optimizer.

Row-wise Adagrad (the default for large embedding tables in DLRM / TorchRec's FBGEMM kernels) keeps ONE
accumulator per table row instead of two moments per element, so optimizer memory for a ``[V, D]`` table is
``V`` floats instead of ``2·V·D``:

    s_i += mean_d(g_id²);    w_i -= lr · g_i / (sqrt(s_i) + eps)

Rows without a gradient this step are untouched. It lives inside one ``torch.optim.AdamW`` subclass so the
scheduler, gradient clipping and the checkpoint code see a single optimizer whose ``state_dict`` carries both.
"""

from __future__ import annotations

import torch


class AdamWRowWiseAdagrad(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose param groups with ``rowwise=True`` take row-wise Adagrad instead.

    A row-wise group's params must be 2-D tables ``[V, D]``; its ``lr`` follows the scheduler like any group.
    """

    def __init__(self, params, lr: float = 1e-3, eps_rowwise: float = 1e-8, **kw):
        super().__init__(params, lr=lr, **kw)
        for g in self.param_groups:
            g.setdefault("rowwise", False)
            g.setdefault("eps_rowwise", eps_rowwise)
            if g["rowwise"] and any(p.ndim != 2 for p in g["params"]):
                raise ValueError("row-wise Adagrad groups may only hold 2-D embedding tables [V, D]")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []
        for g in self.param_groups:
            if not g.get("rowwise", False):
                continue
            for p in g["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                st = self.state[p]
                if "row_sum" not in st:
                    st["row_sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                    st["step"] = torch.zeros((), dtype=torch.float32)  # AdamW's load_state_dict expects one
                st["step"] += 1
                st["row_sum"].add_(grad.float().pow(2).mean(1))
                hit = grad.abs().sum(1) > 0  # untouched rows do not move
                scale = g["lr"] / (st["row_sum"].sqrt() + g["eps_rowwise"])
                p.sub_((grad * (scale * hit)[:, None]).to(p.dtype))
                held.append((p, grad))
                p.grad = None  # hide it from the AdamW update below
        super().step()
        for p, grad in held:
            p.grad = grad
        return loss
