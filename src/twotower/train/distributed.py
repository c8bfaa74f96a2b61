"""Data-parallel training under ``torchrun``: process group, batch sharding and the collectives the loop needs.

``torchrun --nproc_per_node N -m twotower train ...`` (or ``twotower train --nproc N``, which calls it) starts N
processes with ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set; :func:`from_env` joins the process group (gloo
on CPU, NCCL on CUDA). What each part of training does with it:

* **batches**: every rank plans the same epoch (``plan_epoch`` is seeded), and global step ``g`` is batches
  ``g*N .. g*N+N-1``, one per rank (:meth:`Dist.shard`); the epoch's last ``len % N`` batches are dropped so
  every rank runs the same number of steps;
* **gradients**: the model and the task train inside ``DistributedDataParallel`` (gradients averaged in
  buckets, overlapped with the backward pass); each mean in a rank's loss is scaled by its targets' share of
  the global batch (:meth:`Dist.share`; the hybrid's head and encoder losses each by their own), so the
  averaged gradient is the gradient of the global batch's loss;
* **in-batch negatives across ranks**: the positives' ids are gathered from every rank (:meth:`Dist.gather_ids`)
  and every rank scores its queries against all of them (plus the shared uniform draws, the same on every rank:
  one seed); each rank runs the candidate tower over the gathered ids itself, so the gradient through every
  candidate reaches the towers on every rank: the candidate tower is an embedding lookup and an MLP, and
  re-encoding a few thousand ids costs less than gathering their vectors and gradients. Accidental hits are
  removed over the gathered set, and the logQ estimators observe the gathered positives (they stay equal);
* **decisions** (time budget, early stopping, the best checkpoint) are taken on rank 0 or from a MAX over
  ranks and shared, so no rank waits on a collective another has left; rank 0 alone writes checkpoints,
  metrics and the run directory, and a checkpoint resumes under any world size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Dist:
    """This process's place in the process group."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batches: list, first: int) -> list:
        """This rank's batches of an epoch from global batch ``first`` on: ``first + rank``, every ``world``-th,
        as many on every rank (the remainder of ``len - first`` is dropped)."""
        steps = (len(batches) - first) // self.world
        return batches[first + self.rank : first + steps * self.world : self.world]

    def gather_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """int64 [n_r] on each rank -> the concatenation over ranks, rank order (sizes may differ)."""
        n = torch.tensor([len(ids)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        most = int(max(s.item() for s in sizes))
        padded = torch.full((most,), -1, dtype=torch.int64)
        padded[: len(ids)] = ids.cpu()
        parts = [torch.empty(most, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])

    def total(self, value: float) -> float:
        """The sum of ``value`` over ranks."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def most(self, value: float) -> float:
        """The largest ``value`` over ranks (the time budget: every rank stops at the same step)."""
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def share(self, local: float) -> float:
        """The factor for this rank's mean loss: ``world * local / total``, so that averaging the ranks'
        gradients (what DDP does) gives the gradient of the global batch's mean loss."""
        return self.world * local / max(self.total(local), 1e-12)

    def broadcast(self, obj: dict) -> dict:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()


class LossModule(nn.Module):
    """The model and the task as one module whose forward is a training step's loss: what
    DistributedDataParallel wraps (it averages the gradients of every parameter either holds)."""

    def __init__(self, model: nn.Module, task: nn.Module, loss, group: Dist):
        super().__init__()
        self.model, self.task = model, task
        # loss(inputs, rows, pseudo, share) -> (TaskOutput, Targets, loss to minimise): Trainer.loss
        self.step_loss, self.group = loss, group

    def forward(self, inputs, rows: torch.Tensor, pseudo):
        """(this rank's loss, each mean in it scaled by its targets' share of the global batch, the
        TaskOutput, the Targets)."""
        out, targets, loss = self.step_loss(inputs, rows, pseudo, self.share)
        return loss, out, targets

    def share(self, targets) -> float:
        """The factor for this rank's mean loss over ``targets`` (:meth:`Dist.share` of their weight: a
        weighted mean divides by it); one collective, so every rank asks for the same sets in one order."""
        local = float(targets.weight.sum()) if targets.weight is not None else float(len(targets.items))
        return self.group.share(local)


def from_env(device: str) -> Dist | None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), else None (one process).

    gloo on CPU, NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``). On CPU each rank takes an equal share of the
    machine's cores, so N ranks do not oversubscribe them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    log.info("rank %d of %d (%s)", rank, world, "nccl" if cuda else "gloo")
    return Dist(rank, world, local)


def shutdown() -> None:
    """Leave the process group once every rank is done (a rank that tears its side down while another still
    talks to it makes gloo abort that one)."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
