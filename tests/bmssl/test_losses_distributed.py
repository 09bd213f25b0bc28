"""NT-Xent with negatives gathered across 2 gloo processes equals the single-process loss."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bmssl.losses import nt_xent


def _worker(
    rank: int, world: int, init_file: str, z1: torch.Tensor, z2: torch.Tensor, out: dict
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        b = z1.shape[0] // world
        a1 = z1[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        a2 = z2[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        loss = nt_xent(a1, a2, 0.5, gather=True)
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        out[rank] = (float(total) / world, a1.grad.clone(), a2.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_gathered_nt_xent_equals_full_batch(tmp_path):
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 6, dtype=torch.float64)
    full1, full2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    reference = nt_xent(full1, full2, 0.5)
    reference.backward()
    manager = mp.Manager()
    out = manager.dict()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), z1, z2, out), nprocs=2, join=True)
    for rank in range(2):
        loss, g1, g2 = out[rank]
        assert loss == pytest.approx(float(reference.detach()), rel=1e-12)
        # all_gather's backward sums the other ranks' contributions, so each rank's slice
        # gets world × its share of the mean; DDP's gradient averaging divides it back.
        torch.testing.assert_close(g1 / 2, full1.grad[rank * 4 : (rank + 1) * 4])
        torch.testing.assert_close(g2 / 2, full2.grad[rank * 4 : (rank + 1) * 4])
