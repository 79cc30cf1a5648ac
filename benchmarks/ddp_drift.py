"""Why ``fmnist_lt_ce`` under DDP (2 x 64) drifts from one process (128): issue 16 item 12.

Two measurements on the preset with ``model.dropout=0`` (dropout draws each rank's masks from
its own RNG, a difference by design), 2 epochs = 210 SGD steps (lr 0.05, momentum 0.9,
weight decay 5e-4; 13 399 training images, so the last batch of an epoch holds 87):

1. ``ddp``: rank 0 of a 2-process gloo run trains (``calibrant.engine.train_one_epoch``), in
   lockstep with two one-process copies from the same initial weights: ``single`` (the full
   batch of 128, the 1-process run) and ``halves`` (one process whose gradient is the mean of
   the gradients of the two rank halves of the same batch, ``batch[0::2]`` and ``batch[1::2]``,
   weighted by their sizes when they differ: DDP's arithmetic). Per step: the largest
   |weight difference| of each layer.
2. ``rounding``: the 1-process run against itself with every batch reversed (the same mean
   gradient summed in another order: a pure rounding perturbation), with momentum 0.9 and 0.

    CALIBRANT_DATA=... PYTHONPATH=.:src python benchmarks/ddp_drift.py [--steps 210]

It writes ``benchmarks/results/ddp_drift.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch
from torch import nn

PRESET, SHOWN = "fmnist_lt_ce", (1, 10, 50, 100, 104, 105, 106, 150, 210, 300, 420)


def _build(world: int, overrides: list[str]):
    from calibrant.config import apply_overrides, load_config
    from calibrant.experiment import build_experiment, seed_everything

    cfg = load_config(PRESET)
    cfg = apply_overrides(cfg, ["model.dropout=0", f"train.batch_size={128 // world}", *overrides])
    rank = torch.distributed.get_rank() if world > 1 else 0
    seed_everything(1, rank)
    root = os.environ.get("CALIBRANT_DATA")
    return cfg, build_experiment(cfg, data_root=root, rank=rank, world_size=world)


def _gap(a: nn.Module, b: nn.Module) -> list[float]:
    """Largest |difference| of each Linear layer's weight."""
    return [
        float((p.detach() - q.detach()).abs().max())
        for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True)
        if n.endswith("weight")
    ]


class _Done(Exception):
    pass


def _ddp_worker(rank: int, world: int, steps: int):
    from calibrant.engine import train_one_epoch
    from calibrant.experiment import build_optimizer

    _, exp = _build(world, [])
    ddp = nn.parallel.DistributedDataParallel(exp.model)
    ce, rows, count = nn.CrossEntropyLoss(), [], [0]
    if rank == 0:
        cfg, one = _build(1, [])
        single, halves = one.model, copy.deepcopy(one.model)
        opt_halves = build_optimizer(cfg["optim"], halves.parameters())

    def lockstep(step: int, totals: dict) -> None:  # after each DDP step of the engine
        count[0] += 1
        if rank == 0:
            xg, yg = next(batches)
            one.optimizer.zero_grad()
            ce(single(xg), yg).backward()
            one.optimizer.step()
            opt_halves.zero_grad()
            params = list(halves.parameters())
            g = [torch.autograd.grad(ce(halves(xg[r::2]), yg[r::2]), params) for r in (0, 1)]
            n0, n1 = len(yg[0::2]), len(yg[1::2])  # DDP weights a short batch by share
            for p, g0, g1 in zip(params, *g, strict=True):
                p.grad = (g0 + g1) / 2 if n0 == n1 else (n0 * g0 + n1 * g1) / (n0 + n1)
            opt_halves.step()
            gaps = (_gap(exp.model, single), _gap(halves, single), _gap(exp.model, halves))
            rows.append((count[0], len(yg), n0, *gaps))
        if count[0] >= steps:
            raise _Done

    for epoch in range(steps):
        exp.train_loader.sampler.set_epoch(epoch)
        if rank == 0:
            one.train_loader.sampler.set_epoch(epoch)
            batches = iter(one.train_loader)
        try:
            train_one_epoch(ddp, exp.train_loader, ce, exp.optimizer, on_step=lockstep)
        except _Done:
            return rows
    return rows


def _rounding(steps: int, momentum: float) -> list[tuple[int, list[float]]]:
    from calibrant.experiment import build_optimizer

    cfg, exp = _build(1, [f"optim.momentum={momentum}"])
    a, b = exp.model, copy.deepcopy(exp.model)
    opt_b, ce, rows, step = (
        build_optimizer(cfg["optim"], b.parameters()),
        nn.CrossEntropyLoss(),
        [],
        0,
    )
    for epoch in range(steps):
        exp.train_loader.sampler.set_epoch(epoch)
        for x, y in exp.train_loader:
            for model, opt, xx, yy in ((a, exp.optimizer, x, y), (b, opt_b, x.flip(0), y.flip(0))):
                opt.zero_grad()
                ce(model(xx), yy).backward()
                opt.step()
            step += 1
            rows.append((step, _gap(a, b)))
            if step >= steps:
                return rows
    return rows


def _fmt(v: list[float]) -> str:
    return " / ".join(f"{x:.1e}" for x in v)


def main() -> None:
    from tests._ddp import run_ddp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=210)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ddp = run_ddp(_ddp_worker, world_size=2, args=(args.steps,))[0]
    lines = [
        f"# DDP drift of `{PRESET}` (issue 16 item 12)",
        "",
        f"`PYTHONPATH=.:src python benchmarks/ddp_drift.py --steps {args.steps}`; "
        f"torch {torch.__version__}, CPU, 1 thread per process. Largest |weight difference| of "
        "the three Linear layers (first / second / head).",
        "",
        "| step | batch (1 proc / per rank) | DDP vs 1 process | halves vs 1 process | "
        "DDP vs halves |",
        "|---|---|---|---|---|",
    ]
    for step, b1, b2, d_single, h_single, d_halves in ddp:
        if step in SHOWN or step == args.steps:
            lines.append(
                f"| {step} | {b1} / {b2} | {_fmt(d_single)} | {_fmt(h_single)} | {_fmt(d_halves)} |"
            )
    first = next((s for s, *_, d in ddp if max(d) > 0), None)
    lines += ["", f"First step where DDP and halves differ at all: {first}.", ""]
    lines += ["| step | reversed batches, momentum 0.9 | reversed batches, momentum 0 |"]
    lines += ["|---|---|---|"]
    with_m, without = _rounding(2 * args.steps, 0.9), dict(_rounding(2 * args.steps, 0.0))
    for step, gap in with_m:
        if step in SHOWN or step == 2 * args.steps:
            lines.append(f"| {step} | {_fmt(gap)} | {_fmt(without[step])} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).resolve().parent / "results" / "ddp_drift.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
