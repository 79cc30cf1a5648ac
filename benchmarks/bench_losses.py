"""Forward+backward time and peak memory of the calibration losses vs plain CE and MONAI NACL.

Each (loss, shape) runs in a fresh subprocess: peak memory is the growth of the process's
maximum RSS during one forward+backward (inputs already allocated, so it counts only what the
loss itself allocates), then the time is the median of ``--repeats`` timed runs after warm-up.

``--clock cpu`` times with the thread's CPU time (``time.thread_time``) instead of the wall
clock: on a machine shared with other jobs it leaves out the time spent waiting for a core (it
still includes cache and memory-bandwidth contention), so it is the steadier figure under load.

Usage:
    PYTHONPATH=src python benchmarks/bench_losses.py --repeats 11 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

SHAPES = {"2d": (8, 4, 192, 192), "3d": (2, 14, 96, 96, 96)}
LOSSES = [
    "plain_ce",  # F.cross_entropy, the reference
    "ce",  # calibrant CE (validates inputs)
    "mbls",  # full loss: CE + 0.1 * margin penalty
    "mbls_term",  # the margin penalty alone
    "svls",  # SVLS is a CE replacement: the full loss is the penalty
    "nacl",
    "nacl_term",
    "monai_nacl",  # peer: MONAI NACLLoss (CE + term)
    "crac",  # LOSSES "crac": CE + the CRaC ALM penalty (λ, ρ random per slot)
    "crac_term",  # the ALMPenalty alone
]


def _build(name: str, shape: tuple[int, ...]):
    import torch
    import torch.nn.functional as F

    from calibrant.registry import LOSSES
    from calibrant.registry import LOSSES as REG

    if name == "plain_ce":
        return F.cross_entropy
    if name == "monai_nacl":
        from monai.losses import NACLLoss

        return NACLLoss(classes=shape[1], dim=len(shape) - 2)
    if name.startswith("crac"):
        full = LOSSES.build("crac", num_classes=shape[1])
        alm = full.parts["alm"]
        g = torch.Generator().manual_seed(0)  # non-uniform multipliers, as after some epochs
        alm.lam.copy_(torch.rand(alm.lam.shape, generator=g, dtype=alm.lam.dtype))
        alm.rho.copy_(torch.rand(alm.rho.shape, generator=g, dtype=alm.rho.dtype) + 0.1)
        return alm if name == "crac_term" else full
    if name.endswith("_term"):
        full = REG.build(name[: -len("_term")])
        return full.parts["margin" if name.startswith("mbls") else "nacl"]
    return REG.build(name)


def child(
    name: str, shape_key: str, repeats: int, threads: int, clock: str = "wall", inner: int = 1
) -> dict:
    """Peak RSS of the first forward+backward, then timing interleaved with plain CE."""
    import resource
    import statistics

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = SHAPES[shape_key]
    loss = _build(name, shape)
    logits = torch.randn(shape, requires_grad=True)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]))

    def step():
        logits.grad = None
        loss(logits, target).backward()

    def base():
        logits.grad = None
        F.cross_entropy(logits, target).backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    step()
    base()
    times, base_times = [], []
    now = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(repeats):  # alternate, so that load drift hits both alike
        for fn, out in ((base, base_times), (step, times)):
            t0 = now()
            for _ in range(inner):  # several calls per sample average out timer and cache noise
                fn()
            out.append((now() - t0) / inner)
    return {
        "name": name,
        "shape": shape_key,
        "median_s": statistics.median(times),
        "base_median_s": statistics.median(base_times),
        "ratio": statistics.median(times) / statistics.median(base_times),
        "ratio_of_min": min(times) / min(base_times),
        "peak_mib": peak_kib / 1024,
        "logits_mib": logits.numel() * 4 / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/losses.md")
    ap.add_argument("--shapes", default="2d,3d")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--inner", type=int, default=1, help="calls per timed sample")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        result = child(
            args.child[0], args.child[1], args.repeats, args.threads, args.clock, args.inner
        )
        print(json.dumps(result))
        return
    rows = []
    for shape_key in args.shapes.split(","):
        for name in args.losses.split(","):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    shape_key,
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                    "--clock",
                    args.clock,
                    "--inner",
                    str(args.inner),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=os.environ,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    lines = [
        "| shape | loss | median fwd+bwd (ms) | plain CE median, same process (ms) "
        "| × plain CE (medians) | × plain CE (minima) | peak extra RSS (MiB) | × plain CE peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape_key in args.shapes.split(","):
        base = next(r for r in rows if r["shape"] == shape_key and r["name"] == "plain_ce")
        for r in rows:
            if r["shape"] != shape_key:
                continue
            lines.append(
                f"| {shape_key} | {r['name']} | {1e3 * r['median_s']:.1f} | "
                f"{1e3 * r['base_median_s']:.1f} | {r['ratio']:.2f} | {r['ratio_of_min']:.2f} | "
                f"{r['peak_mib']:.0f} | {r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f} |"
            )
    import torch

    header = (
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats}, "
        f"clock {args.clock}, {args.inner} calls per sample, "
        f"load average at the end {os.getloadavg()[0]:.1f}.\n"
    )
    print(header + "\n".join(lines))
    if args.out:
        with open(args.out + ".table", "w") as f:  # the .md wraps this table with the caveats
            f.write(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
