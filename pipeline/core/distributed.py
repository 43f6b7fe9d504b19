"""One process's place in a torchrun job, and the few collectives the stages use.

Training, captioning and evaluation run as one process per GPU under `torchrun`; without torchrun
every helper here is the identity, so the same code path serves a laptop and a node.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import torch


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node N <argv>`, unless it already
    is one of torchrun's workers (or nproc is 1)."""
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv]
    os.execv(sys.executable, args)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def init(cls, device_name: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(device=resolve_device(device_name))
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = resolve_device(device_name).type == "cuda"
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def share(self, n: int, what: str) -> int:
        if n % self.world:
            raise ValueError(f"{what}: {n} does not split over {self.world} ranks")
        return n // self.world

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed.nn.functional as dnf

        return torch.cat(dnf.all_gather(x))

    def gather_objects(self, items: list) -> list:
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def gather_in_order(self, positions: torch.Tensor, rows: "torch.Tensor | list") -> "torch.Tensor | list":
        """A set split over ranks, put back together: every rank's rows, sorted by their positions in
        the whole set (`positions[i]` is where local row i belongs). Every rank gets the whole."""
        if self.world == 1:
            return rows
        is_tensor = isinstance(rows, torch.Tensor)
        parts = self.gather_objects([(positions.cpu(), rows.cpu() if is_tensor else list(rows))])
        order = torch.cat([pos for pos, _ in parts]).argsort()
        if is_tensor:
            return torch.cat([r for _, r in parts])[order].to(rows.device)
        flat = [x for _, r in parts for x in r]
        return [flat[i] for i in order.tolist()]

    def mean(self, x: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return t.item() / self.world

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
