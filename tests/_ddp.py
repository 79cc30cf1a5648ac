"""Run a function in N ``gloo`` processes on CPU and collect what each rank returns.

Usage in a test::

    from tests._ddp import run_ddp
    results = run_ddp(_worker, world_size=2, args=(data,))   # list, one entry per rank

``_worker(rank, world_size, *args)`` must be a module-level function; the process group is
initialised before it is called and destroyed after.
"""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        # no rank tears the group down while another still talks to it (gloo aborts otherwise)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ddp(fn, world_size: int = 2, args: tuple = ()) -> list:
    """Spawn ``world_size`` gloo processes running ``fn``; return their results by rank."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _entry,
            args=(world_size, _free_port(), fn, args, out_dir),
            nprocs=world_size,
            start_method="spawn",
        )
        return [
            torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]
